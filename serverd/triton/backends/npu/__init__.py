"""The python-based Triton backend "npu" (model.py)."""
