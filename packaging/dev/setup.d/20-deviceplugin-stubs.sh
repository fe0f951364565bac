#!/usr/bin/env bash
# Generate the kubelet device-plugin gRPC stubs from drivers/deviceplugin/api.proto.
set -euo pipefail
cd "$ROOT"
.venv/bin/python -m drivers.deviceplugin.gen >/dev/null
