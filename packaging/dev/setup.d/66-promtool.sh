#!/usr/bin/env bash
# promtool (Debian 12's prometheus package, 2.42), for the alerting rules' checks and unit
# tests (tests/packaging/test_alerts.py runs `promtool check rules` and `promtool test
# rules`). The package's own Prometheus service is not started by this script.
set -euo pipefail
if ! command -v promtool >/dev/null; then
    echo "setup: installing Debian package: prometheus (for promtool)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
