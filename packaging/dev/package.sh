#!/usr/bin/env bash
# The packaging check CI runs after the tests (.ci/run; timings in docs/install.md): the .deb
# packages built, lintian-clean, installed, used and purged in a clean chroot; then the OCI
# images named in the arguments (default: edgefed-edged, the one that runs on the sample
# video) built, exported, inspected offline and run. `python -m bench oci` builds all three.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
images=("$@")
((${#images[@]})) || images=(edgefed-edged)
echo "== packaging/build deb --install-check"
.venv/bin/python packaging/build deb --install-check
echo "== packaging/build oci --images ${images[*]}"
.venv/bin/python packaging/build oci --images "${images[@]}"
