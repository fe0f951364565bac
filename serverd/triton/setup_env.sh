#!/usr/bin/env bash
# Create (or confirm up to date) .venv-triton: the environment of Triton's python backend.
#
# Triton 24.10's python backend stub needs numpy < 2, while the main .venv has numpy 2 and
# OpenCV 5; so Triton gets its own venv with the locked requirements.txt beside this script
# and this project installed editable without dependencies (drivers/, edgefed.models and
# edgefed.images import there). Idempotent: a stamp makes a second run take well under a second.
#
# Installed from a wheel (no pyproject.toml two levels up), the script is package data of
# serverd.triton: the venv then gets the installed edgefed, drivers and serverd packages
# through a .pth file instead of an editable install, and defaults to
# ${EDGEFED_STATE_DIR:-/var/lib/edgefed}/venv-triton (serverd's default triton.venv).
#
# Usage: bash serverd/triton/setup_env.sh [VENV_DIR]   (default: <repo>/.venv-triton)
# Environment: EDGEFED_TRITON_PYTHON picks the interpreter (default python3.11, else python3).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [[ -f $ROOT/pyproject.toml ]]; then
    VENV=${1:-$ROOT/.venv-triton}
    PROJECT_FILE=$ROOT/pyproject.toml
else
    VENV=${1:-${EDGEFED_STATE_DIR:-/var/lib/edgefed}/venv-triton}
    PROJECT_FILE=$ROOT/edgefed/__init__.py
fi
LOCK=$HERE/requirements.txt

PY=${EDGEFED_TRITON_PYTHON:-}
if [[ -z $PY ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi

if [[ ! -x $VENV/bin/python ]]; then
    echo "triton env: creating $VENV with $($PY -V 2>&1)"
    "$PY" -m venv "$VENV"
fi

stamp=$VENV/.edgefed-installed
want=$(cat "$LOCK" "$HERE/setup_env.sh" "$PROJECT_FILE" <(echo "$ROOT") | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "triton env: installing the locked requirements into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$LOCK" 2>&1 | grep -v '^WARNING: Location' || true
    if [[ -f $ROOT/pyproject.toml ]]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT" 2>&1 | grep -v '^WARNING: Location' || true
    else
        # only our packages, not the main environment's numpy 2: links in a directory of their own
        links=$VENV/edgefed-packages
        mkdir -p "$links"
        for pkg in edgefed drivers serverd; do ln -sfn "$ROOT/$pkg" "$links/$pkg"; done
        purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$links" > "$purelib/edgefed-packages.pth"
    fi
    rm -f "$stamp"
fi

# Trap 1 of REFERENCE.md: the stub of the venv's Python version must sit next to libtriton_python.so.
server_dir=$("$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("pytriton")
assert spec is not None and spec.submodule_search_locations, "nvidia-pytriton is not installed"
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "tritonserver")
EOF
)
py_version=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
stub_src=$server_dir/python_backend_stubs/$py_version/triton_python_backend_stub
stub_dst=$server_dir/backends/python/triton_python_backend_stub
if [[ ! -f $stub_src ]]; then
    echo "triton env: no python backend stub for Python $py_version in $server_dir" >&2
    exit 1
fi
cmp -s "$stub_src" "$stub_dst" || install -m 0755 "$stub_src" "$stub_dst"

if [[ ! -f $stamp ]]; then
    # Fail loudly if the environment cannot run the NPU backend's imports.
    "$VENV/bin/python" -c '
import numpy, cv2, onnxruntime, ai_edge_litert.interpreter, yaml, pydantic
import drivers.registry, edgefed.models.runner, edgefed.images.verify, serverd.triton.npu
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__} breaks the stub"
'
    echo "$want" > "$stamp"
    echo "triton env: ready ($VENV, Python $py_version, $("$VENV/bin/python" -c 'import numpy; print("numpy", numpy.__version__)'))"
fi
