"""serverd: the EdgeFed server daemon (Triton host, offload scheduler)."""

__version__ = "0.1.0"
