#!/usr/bin/env bash
# Build (or confirm up to date) the signed demo model images from pinned registry wheels.
set -euo pipefail
cd "$ROOT"
.venv/bin/python -m edgefed.images build --all --out firmware-images/build
