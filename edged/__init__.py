"""edged: the EdgeFed edge appliance daemon."""

__version__ = "0.1.0"
