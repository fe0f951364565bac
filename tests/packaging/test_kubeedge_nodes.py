"""packaging/kubeedge/nodes.py: the per-node objects of a fleet from one command.

The overlay it writes (``site/generated``) holds, per node, the Device and Rules the base
holds for its example node (valid against the KubeEdge CRD schemas, routing the topics that
node's edged publishes), the broker's ACL with every node's bridge, each node's bridge
config and its certificate; ``kubectl kustomize`` (where kubectl is installed) builds the
site into the base's objects without the example node. The site's own kustomization is
written once and kept; nothing outside the script's own output is ever replaced. The ACL
and bridge configs on real brokers: tests/packaging/test_mosquitto_bridge.py.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from edged.eventbus import DEFAULT_PREFIX, event_topics
from edgefed import certs
from edgefed.mqtt.acl import render_acl
from edgefed.testing.broker import make_tls_files
from tests.packaging.test_kubeedge_manifests import DOCS, NAMESPACE, all_of, the
from tests.packaging.test_kubeedge_schemas import crd_errors
from tests.support.paths import REPO

SCRIPT = REPO / "packaging" / "kubeedge" / "nodes.py"
EXAMPLE = "edge-node-1"
NODES = ["cam-north", "cam-south.site-2"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def generated(site: Path, name: str) -> Path:
    return site / "generated" / name


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("nodes")
    make_tls_files(tmp / "tls")
    out = tmp / "site"
    done = run(f"--out={out}", "--broker=mqtt.example.com:8883", f"--tls={tmp / 'tls'}", *NODES)
    assert done.returncode == 0, done.stderr
    return out


def test_each_node_gets_the_example_s_device_and_rules(site: Path) -> None:
    docs = load(generated(site, "nodes.yaml"))
    assert [e for d in docs for e in crd_errors(d)] == []
    example = the("Device", EXAMPLE)
    for node in NODES:
        (device,) = [d for d in docs if d["kind"] == "Device" and d["metadata"]["name"] == node]
        assert device["spec"]["nodeName"] == node
        assert device["spec"]["properties"] == example["spec"]["properties"]
        topics = event_topics(DEFAULT_PREFIX, f"{NAMESPACE}/{node}")
        rules = [
            d
            for d in docs
            if d["kind"] == "Rule" and d["spec"]["sourceResource"]["node_name"] == node
        ]
        routed = {
            f"{r['metadata']['namespace']}/{r['spec']['sourceResource']['topic']}" for r in rules
        }
        assert routed == {topics.frame, topics.stats, topics.twin}
        assert all(r["metadata"]["labels"]["edgefed.io/node"] == node for r in rules)
        for rule in rules:  # the same endpoints and targets as the example's
            example_rule = the("Rule", rule["metadata"]["name"].replace(node, EXAMPLE))
            assert rule["spec"]["targetResource"] == example_rule["spec"]["targetResource"]
            assert (rule["spec"]["source"], rule["spec"]["target"]) == (
                example_rule["spec"]["source"],
                example_rule["spec"]["target"],
            )
    assert len(docs) == len(NODES) * (1 + len(all_of("Rule")))
    assert all(EXAMPLE not in yaml.safe_dump(d) for d in docs)


def test_the_broker_acl_has_every_node_s_bridge_and_each_bridge_its_node(site: Path) -> None:
    (patch,) = load(generated(site, "broker-acl.yaml"))
    bridges = {f"edgefed-bridge-{n}": f"edgefed/{n}" for n in NODES}
    assert patch["data"] == {"edgefed.acl": render_acl(servers=(), bridges=bridges)}
    for node in NODES:
        conf = generated(site, f"bridges/{node}.conf").read_text()
        lines = set(conf.splitlines())
        assert "address mqtt.example.com:8883" in lines
        assert f"remote_clientid edgefed-bridge-{node}" in lines
        assert f"bridge_certfile /etc/edgefed/tls/edgefed-bridge-{node}.pem" in lines
        assert f"bridge_keyfile /etc/edgefed/tls/edgefed-bridge-{node}.key" in lines
        assert "bridge_cafile /etc/edgefed/tls/ca.pem" in lines


def test_each_node_s_certificates_are_issued_once(site: Path) -> None:
    """Its bridge's, its edged's (common name its device id) and its own broker's (for
    127.0.0.1, where edged and EdgeCore connect), and EdgeCore's once for all."""
    tls = site.parent / "tls"
    names = {"edgecore.pem": "edgecore"}
    for node in NODES:
        names |= {
            f"edgefed-bridge-{node}.pem": f"edgefed-bridge-{node}",
            f"edgefed_{node}.pem": f"edgefed/{node}",
            f"node-broker-{node}.pem": f"node-broker-{node}",
        }
    for file, name in names.items():
        assert certs.common_name(tls / file) == name
        assert (tls / file).with_suffix(".key").stat().st_mode & 0o777 == 0o600
    broker = x509.load_pem_x509_certificate((tls / f"node-broker-{NODES[0]}.pem").read_bytes())
    hosts = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in hosts.get_values_for_type(x509.IPAddress)
    before = {file: (tls / file).read_bytes() for file in names}
    again = run(f"--out={site}", "--broker=mqtt.example.com:8883", f"--tls={tls}", *NODES)
    assert again.returncode == 0, again.stderr
    assert f"kept {tls}/edgefed-bridge-{NODES[0]}.pem" in again.stdout
    assert {file: (tls / file).read_bytes() for file in names} == before


def test_nodes_that_go_leave_no_bridge_behind(tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert run(f"--out={out}", "--broker=h:8883", "a", "b").returncode == 0
    assert run(f"--out={out}", "--broker=h:8883", "a").returncode == 0
    assert sorted(p.name for p in generated(out, "bridges").iterdir()) == ["a.conf"]
    assert "edgefed-bridge-b" not in generated(out, "broker-acl.yaml").read_text()
    devices = load(generated(out, "nodes.yaml"))
    assert [d["metadata"]["name"] for d in devices if d["kind"] == "Device"] == ["a"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--broker=h:8883", "Node_1"], "node 'Node_1'"),
        (["--broker=h:8883", "n" * 49], "at most 48 characters"),
        (["--broker=h:8883", "a", "a"], "named twice"),
        (["--broker=h", "a"], "expected HOST:PORT"),
        (["--broker=h:99999", "a"], "expected HOST:PORT"),
        (["--broker=a b:8883", "a"], "expected HOST:PORT"),
        (["--broker=h:8883", "--tls-dir=etc/tls", "a"], "an absolute path"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, args: list[str], said: str
) -> None:
    done = run(f"--out={tmp_path / 'site'}", *args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert said in line
    assert not (tmp_path / "site").exists()


def test_the_site_s_own_kustomization_is_kept_and_nothing_else_replaced(tmp_path: Path) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: [generated, camera-patch.yaml]\n")
    (out / "notes.txt").write_text("mine")
    done = run(f"--out={out}", "--broker=h:8883", "a")
    assert done.returncode == 0, done.stderr
    assert (out / "kustomization.yaml").read_text() == "resources: [generated, camera-patch.yaml]\n"
    assert (out / "notes.txt").read_text() == "mine"
    # a generated/ the script did not write is never replaced
    other = tmp_path / "other"
    (other / "generated").mkdir(parents=True)
    (other / "generated" / "kustomization.yaml").write_text("resources: [x]\n")
    refused = run(f"--out={other}", "--broker=h:8883", "a")
    assert refused.returncode == 2 and "not this script's output" in refused.stderr
    assert (other / "generated" / "kustomization.yaml").read_text() == "resources: [x]\n"


def test_an_overlay_inside_the_base_is_refused(tmp_path: Path) -> None:
    """On a copy of the script and its templates: were the guard broken, the checkout's
    own manifests (which other tests read meanwhile) would be written."""
    copy = tmp_path / "packaging"
    shutil.copytree(SCRIPT.parent, copy / "kubeedge")
    shutil.copytree(SCRIPT.parents[1] / "mosquitto", copy / "mosquitto")
    before = {p.name: p.read_bytes() for p in (copy / "kubeedge").iterdir() if p.is_file()}
    for out in (copy / "kubeedge", copy / "kubeedge" / "site"):
        done = subprocess.run(
            [
                sys.executable,
                str(copy / "kubeedge" / "nodes.py"),
                f"--out={out}",
                "--broker=h:1",
                "a",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "is in the base" in done.stderr
    after = {p.name: p.read_bytes() for p in (copy / "kubeedge").iterdir() if p.is_file()}
    assert after == before and not (copy / "kubeedge" / "site").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_base_with_the_fleet_s_nodes(site: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(site)], capture_output=True, text=True, timeout=60, check=True
    )
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in objects}
    example = {(d["kind"], d["metadata"]["name"]) for d in DOCS if EXAMPLE in d["metadata"]["name"]}
    per_node = {(d["kind"], d["metadata"]["name"]) for d in load(generated(site, "nodes.yaml"))}
    base = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    assert names == (base - example) | per_node
    assert all(
        d["metadata"]["labels"]["edgefed.io/node"] in NODES
        for d in objects
        if d["kind"] in ("Device", "Rule")
    )
    config = next(d for d in objects if d["metadata"]["name"] == "edgefed-mqtt-config")
    assert (
        config["data"]["mosquitto.conf"]
        == the("ConfigMap", "edgefed-mqtt-config")["data"]["mosquitto.conf"]
    )
    assert "user edgefed-bridge-cam-north" in config["data"]["edgefed.acl"]


def test_an_overlay_that_keeps_the_example_node_builds_too(tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert run(f"--out={out}", "--broker=h:8883", EXAMPLE, "b").returncode == 0
    kustomization = load(generated(out, "kustomization.yaml"))[0]
    assert [p for p in kustomization["patches"] if "patch" in p] == []  # nothing removed
    nodes = load(generated(out, "nodes.yaml"))
    devices = [d["metadata"]["name"] for d in nodes if d["kind"] == "Device"]
    assert devices == ["b"]  # the base's own Device is edge-node-1's


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_docs_per_node_patch_in_the_site_s_kustomization_applies(tmp_path: Path) -> None:
    """docs/kubeedge.md's example: another target_fps on edge-node-2, in the site's own
    kustomization, which re-runs of the command keep."""
    docs = (REPO / "docs" / "kubeedge.md").read_text()
    start = docs.index("```yaml\npatches:", docs.index("### 5. Per-node objects"))
    example = docs[start + len("```yaml\n") : docs.index("```", start + 3)]
    out = tmp_path / "site"
    assert run(f"--out={out}", "--broker=h:8883", EXAMPLE, "edge-node-2").returncode == 0
    with (out / "kustomization.yaml").open("a") as site:
        site.write(example)
    assert run(f"--out={out}", "--broker=h:8883", EXAMPLE, "edge-node-2").returncode == 0
    built = subprocess.run(
        ["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60, check=True
    )
    fps = {
        d["metadata"]["name"]: next(
            p["desired"]["value"] for p in d["spec"]["properties"] if p["name"] == "target_fps"
        )
        for d in yaml.safe_load_all(built.stdout)
        if d and d["kind"] == "Device"
    }
    assert fps == {EXAMPLE: "10", "edge-node-2": "5"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_docs_patch_admits_cloudcore_s_nodes_to_serverd_s_api(tmp_path: Path) -> None:
    """docs/kubeedge.md, step 6: the addresses of CloudCore's nodes (hostNetwork) replace
    the NetworkPolicy's placeholder; CloudCore's namespace stays admitted."""
    docs = (REPO / "docs" / "kubeedge.md").read_text()
    start = docs.index("```yaml\npatches:", docs.index("### 6. Apply"))
    example = docs[start + len("```yaml\n") : docs.index("```", start + 3)]
    out = tmp_path / "site"
    assert run(f"--out={out}", "--broker=h:8883", EXAMPLE).returncode == 0
    with (out / "kustomization.yaml").open("a") as site:
        site.write(example)
    built = subprocess.run(
        ["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60, check=True
    )
    (policy,) = [
        d
        for d in yaml.safe_load_all(built.stdout)
        if d and d["metadata"]["name"] == "serverd-api-from-cloudcore"
    ]
    (ingress,) = policy["spec"]["ingress"]
    peers = ingress["from"]
    shipped = the("NetworkPolicy", "serverd-api-from-cloudcore")["spec"]["ingress"][0]["from"]
    assert peers[0] == shipped[0]  # the namespace
    assert [p["ipBlock"]["cidr"] for p in peers[1:]] == ["10.0.0.11/32", "10.0.0.12/32"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
