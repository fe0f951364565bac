"""Federated learning on serverd: robust aggregation (``aggregate``) and the round state
machine (``rounds``), both pure code; see docs/federated.md."""
