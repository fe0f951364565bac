#!/usr/bin/env bash
# The test command: set up what is missing, then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
echo "== ruff"; .venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
# one worker per CPU the system shows (logical: a 2-vCPU machine gets 2), at most 4; a
# module's tests stay on one worker, so its fixtures are made once (-n 0: one process)
echo "== pytest"; .venv/bin/pytest -q -n logical --maxprocesses 4 --dist loadscope "$@"
