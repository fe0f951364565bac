#!/usr/bin/env bash
# The test command: set up what is missing, then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
echo "== ruff"; .venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"
