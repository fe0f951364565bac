#!/usr/bin/env bash
# One-time (and idempotent) set-up of a development/CI machine of this kind:
# Debian packages, the .venv, generated gRPC stubs, Triton's own venv, and the model images.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

# python3-opencv: OpenCV 4 for the HOG people reference of `python -m bench perception`
# (OpenCV 5, the project's own, no longer ships HOGDescriptor)
# systemd: systemd-analyze verifies the shipped units (tests/packaging/test_systemd_units.py)
# python3-venv: `python3 -m venv .venv` below (a fresh Debian 12 has python3 without it)
APT_PACKAGES=(opencv-doc mosquitto chromium python3-opencv systemd python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.edgefed-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setup: installing edgefed and its pinned dependencies into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c "import edgefed, edged, serverd, drivers" # fail loudly if the install did not work
    echo "$want" > "$stamp"
fi

for step in packaging/dev/setup.d/*.sh; do
    [[ -e $step ]] || continue
    echo "setup: $(basename "$step")"
    ROOT=$ROOT bash "$step"
done
echo "setup: done"
