"""packaging/kubernetes: serverd replicas and their autoscaler agree with serverd's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from serverd.api.metrics import ServerdMetrics
from serverd.config import parse_config
from tests.support.kube import secret_of
from tests.support.paths import REPO

KUBERNETES = REPO / "packaging" / "kubernetes"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path):
            assert doc["metadata"]["namespace"] == "edgefed", path
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_the_kustomization_lists_every_manifest() -> None:
    [kustomization] = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


def test_each_replica_config_is_valid_with_its_own_id_and_a_shared_subscription() -> None:
    docs = by_kind()
    config = docs[("ConfigMap", "serverd-replicas-config")]["data"]["serverd.yaml"]
    pod = docs[("Deployment", "serverd-replicas")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "SERVERD__SERVER_ID": "metadata.name",
        "SERVERD__MQTT__CLIENT_ID": "metadata.name",
    }
    pod_name = {"SERVERD__SERVER_ID": "serverd-replicas-7d9f-abcde"}
    pod_name["SERVERD__MQTT__CLIENT_ID"] = pod_name["SERVERD__SERVER_ID"]
    parsed = parse_config(yaml.safe_load(config), pod_name)
    assert parsed.share_group == "serverd"
    assert parsed.mqtt.client_id == parsed.server_id == "serverd-replicas-7d9f-abcde"
    assert parsed.overload.max_wait_ms < 80  # under the round-trip target
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(parsed.state_dir) in mounts


def test_the_autoscaler_scales_the_replicas_on_a_queue_metric_serverd_exports() -> None:
    docs = by_kind()
    hpa = docs[("HorizontalPodAutoscaler", "serverd-replicas")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "serverd-replicas")
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    status = {"queued": 7, "counters": {}, "instances": {}}
    exported = {
        f.name
        for f in text_string_to_metric_families(ServerdMetrics(lambda: status).own().decode())
    }
    assert name in exported
    rules = yaml.safe_load(docs[("ConfigMap", "serverd-adapter-rules")]["data"]["config.yaml"])
    assert [r["name"]["as"] for r in rules["rules"]] == [name]


def test_the_replicas_may_reach_the_broker() -> None:
    policy = by_kind()[("NetworkPolicy", "edgefed-mqtt-plain-serverd-replicas")]
    [rule] = policy["spec"]["ingress"]
    labels = rule["from"][0]["podSelector"]["matchLabels"]
    pod_labels = by_kind()[("Deployment", "serverd-replicas")]["spec"]["template"]["metadata"]
    assert labels.items() <= pod_labels["labels"].items()


def test_the_replicas_send_the_key_of_the_tritons_secret() -> None:
    """The replicas call the same Triton as the single serverd: with the key of its
    Secret (packaging/kubeedge: tests/packaging/test_kubeedge_manifests.py)."""
    docs = by_kind()
    config = yaml.safe_load(docs[("ConfigMap", "serverd-replicas-config")]["data"]["serverd.yaml"])
    (endpoint,) = config["endpoints"]
    pod = docs[("Deployment", "serverd-replicas")]["spec"]["template"]["spec"]
    assert secret_of(pod, pod["containers"][0], endpoint["key_file"]) == "edgefed-triton-key"
