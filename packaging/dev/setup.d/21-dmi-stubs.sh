#!/usr/bin/env bash
# Generate the KubeEdge DMI gRPC stubs from edgefed/dmi/api.proto.
set -euo pipefail
cd "$ROOT"
.venv/bin/python -m edgefed.dmi.gen >/dev/null
