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
# kept in artifacts/<name>-check.log and printed whole when it ends, and the check fails if
# either does. Each runs in a process group of its own (setsid), so that stopped early
# (Ctrl-C, a CI timeout) this stops both builds with every tool they started.
mkdir -p artifacts
deb="" oci=""
trap 'for group in $deb $oci; do kill -- "-$group" 2>/dev/null || true; done' EXIT
setsid --wait .venv/bin/python packaging/build deb --install-check > artifacts/deb-check.log 2>&1 &
deb=$!
setsid --wait .venv/bin/python packaging/build oci --images "${images[@]}" \
    > artifacts/oci-check.log 2>&1 &
oci=$!
failed=0
wait "$deb" || failed=1
deb=""
echo "== packaging/build deb --install-check"
cat artifacts/deb-check.log
wait "$oci" || failed=1
oci=""
echo "== packaging/build oci --images ${images[*]}"
cat artifacts/oci-check.log
exit "$failed"
