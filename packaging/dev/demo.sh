#!/usr/bin/env bash
# The demo command: set up what is missing, then broker + serverd (Triton) + edged on vtest.avi.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
exec .venv/bin/python packaging/dev/demo.py "$@"
