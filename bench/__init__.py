"""Benchmarks: ``python -m bench NAME`` prints one JSON object on its last line."""
