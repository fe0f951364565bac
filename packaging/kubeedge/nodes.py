"""Per-node objects for a fleet of edge nodes: one command instead of editing by hand.

    .venv/bin/python packaging/kubeedge/nodes.py --out site/ --broker mqtt.example.com:8883 \\
        [--tls /etc/edgefed/tls] node-a node-b ...
    kubectl apply -k site/

writes ``site/``, a kustomize overlay of this directory (docs/kubeedge.md):

- ``nodes.yaml``: per node, the Device and the three Rules of ``device.yaml`` and
  ``rules.yaml``, their example node ``edge-node-1`` replaced by the node's name (the
  desired values as the base sets them);
- ``kustomization.yaml``: the base, ``nodes.yaml``, the base's example node removed
  (unless it is one of the nodes) and the cluster broker's ACL replaced by
  ``broker-acl.yaml``;
- ``broker-acl.yaml``: the ACL with each node's bridge block (``edgefed-bridge-<node>``
  may carry device ``edgefed/<node>`` only: ``edgefed.mqtt.acl.render_acl``);
- ``bridges/<node>.conf``: ``packaging/mosquitto/edgefed-bridge.conf`` for the node's own
  broker, pointed at ``--broker`` with the node's client id and certificate.

With ``--tls`` (the directory of ``edged certs init``) each node's bridge certificate
``edgefed-bridge-<node>.pem`` is issued there unless it exists. Re-run it when nodes come
or go: the output is rewritten whole from the base, so edit the base, not the output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from edgefed import certs
from edgefed.errors import ConfigError
from edgefed.mqtt.acl import render_acl

BASE = Path(__file__).resolve().parent
BRIDGE_TEMPLATE = BASE.parent / "mosquitto" / "edgefed-bridge.conf"
EXAMPLE_NODE = "edge-node-1"  # the node the base's Device and Rules are written for
NAMESPACE = "edgefed"  # the manifests' namespace: edged's device id is edgefed/<node>
BROKER_CONFIG = "edgefed-mqtt-config"  # the cluster broker's ConfigMap (serverd.yaml)
# A Kubernetes node name (DNS-1123 subdomain) that also fits the device id and the
# bridge's identity, whose segments are at most 63 characters (edgefed.wire).
NODE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_NODE = 63 - len("edgefed-bridge-")
TLS_DIR = "/etc/edgefed/tls"  # where a node's bridge reads its certificate


def bridge_identity(node: str) -> str:
    return f"edgefed-bridge-{node}"


def check_node(node: str) -> str:
    if not NODE.match(node) or len(node) > MAX_NODE:
        raise ConfigError(
            f"node {node!r}: a node name here is lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {MAX_NODE} characters "
            "(its bridge identity edgefed-bridge-<node> must fit a device id segment)"
        )
    return node


def check_broker(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--broker {address!r}: expected HOST:PORT (the edgefed-mqtt-edge address)"
        )
    return address


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _renamed(value: Any, node: str) -> Any:
    """``value`` with every ``EXAMPLE_NODE`` in its strings replaced by ``node``."""
    if isinstance(value, str):
        return value.replace(EXAMPLE_NODE, node)
    if isinstance(value, dict):
        return {k: _renamed(v, node) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, node) for v in value]
    return value


def example_objects() -> list[dict[str, Any]]:
    """The base's objects of its example node: the Device and its Rules."""
    devices = [d for d in _docs(BASE / "device.yaml") if d["kind"] == "Device"]
    rules = [
        d
        for d in _docs(BASE / "rules.yaml")
        if d["kind"] == "Rule" and d["metadata"]["labels"].get("edgefed.io/node") == EXAMPLE_NODE
    ]
    assert [d["metadata"]["name"] for d in devices] == [EXAMPLE_NODE], "device.yaml changed"
    return devices + rules


def _literal(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _literal)


def dump(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)


def kustomization(base: str, nodes: list[str], removed: list[dict[str, Any]]) -> dict[str, Any]:
    deletions = [
        {
            "patch": dump(
                [
                    {
                        "$patch": "delete",
                        "apiVersion": d["apiVersion"],
                        "kind": d["kind"],
                        "metadata": {
                            "name": d["metadata"]["name"],
                            "namespace": d["metadata"]["namespace"],
                        },
                    }
                ]
            )
        }
        for d in removed
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base, "nodes.yaml"],
        "patches": [*deletions, {"path": "broker-acl.yaml"}],
    }


def broker_acl(nodes: list[str]) -> dict[str, Any]:
    bridges = {bridge_identity(n): f"{NAMESPACE}/{n}" for n in nodes}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": BROKER_CONFIG, "namespace": NAMESPACE},
        "data": {"edgefed.acl": render_acl(server=None, bridges=bridges)},
    }


def bridge_config(node: str, broker: str, tls_dir: str) -> str:
    """The shipped bridge config for ``node``: its server, client id and certificate."""
    identity = bridge_identity(node)
    text = BRIDGE_TEMPLATE.read_text()
    for pattern, line in (
        (r"^address .*$", f"address {broker}"),
        (r"^remote_clientid .*$", f"remote_clientid {identity}"),
        (r"^#bridge_cafile .*$", f"bridge_cafile {tls_dir}/ca.pem"),
        (r"^#bridge_certfile .*$", f"bridge_certfile {tls_dir}/{identity}.pem"),
        (r"^#bridge_keyfile .*$", f"bridge_keyfile {tls_dir}/{identity}.key"),
        (r"^#bridge_tls_version .*$", "bridge_tls_version tlsv1.2"),
    ):
        text, n = re.subn(pattern, line, text, flags=re.M)
        if n != 1:
            raise ConfigError(f"{BRIDGE_TEMPLATE}: {pattern!r} not found once ({n})")
    header = (
        f"# Generated by packaging/kubeedge/nodes.py for node {node}: install as\n"
        f"# /etc/mosquitto/conf.d/edgefed-bridge.conf on it, with ca.pem, {identity}.pem\n"
        f"# and {identity}.key in {tls_dir}.\n"
    )
    return header + text


def write(out: Path, nodes: list[str], broker: str, tls_dir: str) -> list[Path]:
    """The overlay in ``out`` (its earlier output replaced); the files written."""
    examples = example_objects()
    per_node = [_renamed(d, n) for n in nodes for d in examples if n != EXAMPLE_NODE]
    removed = [] if EXAMPLE_NODE in nodes else examples
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "bridges", ignore_errors=True)
    (out / "bridges").mkdir()
    base = os.path.relpath(BASE, out.resolve())
    head = (
        f"# Generated by packaging/kubeedge/nodes.py for {len(nodes)} node(s): "
        f"{', '.join(nodes)}.\n# Re-run it when nodes come or go; edit the base, not this.\n"
    )
    files = {
        out / "kustomization.yaml": head + dump([kustomization(base, nodes, removed)]),
        out / "nodes.yaml": head + dump(per_node) if per_node else head,
        out / "broker-acl.yaml": head + dump([broker_acl(nodes)]),
    }
    for node in nodes:
        files[out / "bridges" / f"{node}.conf"] = bridge_config(node, broker, tls_dir)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="packaging/kubeedge/nodes.py",
        description="Write a kustomize overlay with the per-node objects of EdgeFed edge nodes",
    )
    parser.add_argument("nodes", nargs="+", help="edge node names (as kubectl get nodes says)")
    parser.add_argument("--out", type=Path, required=True, help="the overlay's directory")
    parser.add_argument(
        "--broker",
        required=True,
        help="HOST:PORT of the cluster broker's edge listener (the edgefed-mqtt-edge address)",
    )
    parser.add_argument(
        "--tls", type=Path, help="the 'edged certs init' directory: issue missing bridge certs"
    )
    parser.add_argument(
        "--tls-dir",
        default=TLS_DIR,
        help=f"where each node's bridge reads its certificate (default {TLS_DIR})",
    )
    args = parser.parse_args(argv)
    try:
        nodes = [check_node(n) for n in args.nodes]
        if len(set(nodes)) != len(nodes):
            raise ConfigError("a node is named twice")
        broker = check_broker(args.broker)
        if args.out.resolve() == BASE:
            raise ConfigError("--out is the base itself: choose a directory of its own")
        for path in write(args.out, nodes, broker, args.tls_dir):
            print(f"wrote {path}")
        for node in nodes if args.tls is not None else []:
            identity = bridge_identity(node)
            if (args.tls / f"{identity}.pem").exists():
                print(f"kept {args.tls / identity}.pem")
                continue
            issued = certs.issue(args.tls, identity)
            print(f"issued {issued.cert} {issued.key}")
    except (ConfigError, OSError) as exc:
        print(f"nodes.py: {exc}", file=sys.stderr)
        return 2
    print(
        f"next: kubectl apply -k {args.out} && "
        "kubectl -n edgefed rollout restart deployment/edgefed-mqtt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
