"""The python-based Triton backend "echo" (model.py)."""
