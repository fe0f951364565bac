"""KubeEdge device twin: the message codec, the property table and the TwinService."""
