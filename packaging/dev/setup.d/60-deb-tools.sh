#!/usr/bin/env bash
# The Debian tools `python3 packaging/build deb [--install-check]` needs (docs/install.md):
# debhelper and python3-venv build the packages, lintian checks them, debootstrap makes the
# clean chroot they are installed in. Installed once; nothing here builds a package.
set -euo pipefail
PACKAGES=(debhelper lintian python3-venv debootstrap)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
