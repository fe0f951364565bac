"""The offload path of edged: policy, persistent outbox and the MQTT client that drains it."""
