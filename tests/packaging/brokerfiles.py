"""serverd's example config (the .deb's /etc/edgefed/serverd.yaml) names the broker
certificates a site makes in /etc/edgefed/tls with ``edged certs`` (docs/security.md):
``with_broker_files`` copies a config to name the same files made in a directory of the
test's, for commands that must pass ``check-config`` on it."""

from __future__ import annotations

from pathlib import Path

from edgefed import certs

TLS_DIR = "/etc/edgefed/tls"


def with_broker_files(config: Path, out: Path) -> Path:
    """``config`` in ``out``, its /etc/edgefed/tls files made in ``out``/tls: the CA and
    serverd's client certificate, as ``edged certs init`` and ``issue serverd`` make them."""
    tls = out / "tls"
    certs.make_ca(tls)
    certs.issue(tls, "serverd", days=1)
    copy = out / config.name
    copy.write_text(config.read_text(encoding="utf-8").replace(f"{TLS_DIR}/", f"{tls}/"))
    return copy
