#!/usr/bin/env bash
# The packaging check CI runs after the tests (.ci/run; timings in docs/install.md): the .deb
# packages built, lintian-clean, installed, used and purged in a clean chroot; and the OCI
# images named in the arguments (default: edgefed-edged, the one that runs on the sample
# video) built, exported, inspected offline and run. `python -m bench oci` builds all three.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/setup.sh
images=("$@")
((${#images[@]})) || images=(edgefed-edged)
# The two builds share nothing but the checkout they read (each stages its own copy, wheels
# and chroot under artifacts/deb or artifacts/oci): run side by side, each one's output is
# printed whole when it ends, and the check fails if either does.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
.venv/bin/python packaging/build deb --install-check > "$logs/deb" 2>&1 &
deb=$!
.venv/bin/python packaging/build oci --images "${images[@]}" > "$logs/oci" 2>&1 &
oci=$!
failed=0
wait "$deb" || failed=1
echo "== packaging/build deb --install-check"
cat "$logs/deb"
wait "$oci" || failed=1
echo "== packaging/build oci --images ${images[*]}"
cat "$logs/oci"
exit "$failed"
