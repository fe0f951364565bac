"""Python-based Triton backends; Triton loads each model.py from a copy (see install.py)."""
