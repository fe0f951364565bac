#!/usr/bin/env bash
# promtool (Debian 12's prometheus package, 2.42), for the alerting rules' checks and unit
# tests (tests/packaging/test_alerts.py runs `promtool check rules` and `promtool test
# rules`), and the prometheus binary, which tests/edged/api/test_grafana.py runs on a free
# port of its own. The package enables and starts a Prometheus server on a systemd host:
# that system service is not wanted here, so it is stopped and disabled again.
set -euo pipefail
if ! command -v promtool >/dev/null; then
    echo "setup: installing Debian package: prometheus (for promtool)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi
