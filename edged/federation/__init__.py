"""Federated learning on the edge: the bounded sample store (``samples``) and the local
trainer of a model's trainable head (``trainer``); see docs/federated.md."""
