#!/usr/bin/env bash
# Triton's own environment (.venv-triton, numpy < 2) for serverd's NPU backend.
set -euo pipefail
bash "$ROOT/serverd/triton/setup_env.sh"
