#!/usr/bin/env bash
# nats-server (Debian 12: 2.9.10), for the clustered-broker test (tests/serverd/test_cluster.py
# starts three nodes of its own on free loopback ports; the machine's own NATS service, if
# any, is left alone). docs/scaling.md says why NATS and not RabbitMQ.
set -euo pipefail
if ! dpkg-query -W -f='${Status}' nats-server 2>/dev/null | grep -q "install ok installed"; then
    echo "setup: installing Debian package: nats-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >/dev/null
fi
