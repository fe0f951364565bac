"""NPU driver layer shared by edged and serverd (see docs/drivers.md)."""
