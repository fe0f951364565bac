#!/usr/bin/env bash
# The tools `python3 packaging/build oci` needs (docs/install.md#oci-images), no Docker
# engine: buildah builds (chroot isolation), podman imports the debootstrapped base image,
# skopeo exports and inspects OCI layouts, umoci unpacks one into a runtime bundle, runc
# runs it (crun fails on these machines' hybrid cgroups). debootstrap is 60-deb-tools.sh's.
set -euo pipefail
PACKAGES=(buildah podman skopeo umoci runc)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
