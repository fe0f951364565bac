"""serverd's HTTP API: health, readiness, status, edge events from KubeEdge Rules, metrics."""
