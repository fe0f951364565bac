"""packaging/kubeedge: every manifest parses and agrees with the code it deploys."""

from __future__ import annotations

import typing
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from drivers import registry
from drivers.deviceplugin import cli
from edged.config import parse_config
from edged.eventbus import DEFAULT_PREFIX, event_topics
from edged.settings import RuntimeSettings
from edged.twin.kubeedge import KEY_RE, VALUE_RE
from serverd.triton import access
from tests.support.kube import secret_of, triton_entry_point
from tests.support.paths import REPO

KUBEEDGE = REPO / "packaging" / "kubeedge"
KUBERNETES = REPO / "packaging" / "kubernetes"  # serverd replicas, using the same Triton
NOT_MANIFESTS = {"kustomization.yaml"}
TWIN_TABLE = files("edged.twin") / "properties.yaml"  # the source of truth, package data
NAMESPACE = "edgefed"
API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "DaemonSet": "apps/v1",
    "Deployment": "apps/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "DeviceModel": "devices.kubeedge.io/v1beta1",
    "Device": "devices.kubeedge.io/v1beta1",
    "Rule": "rules.kubeedge.io/v1",
    "RuleEndpoint": "rules.kubeedge.io/v1",
}
# created from site keys (docs/kubeedge.md)
OPERATOR_PROVIDED = {"edgefed-trust", "edgefed-mqtt-tls", "edgefed-triton-key"}
RULE_PAIRS = {("rest", "eventbus"), ("rest", "servicebus"), ("eventbus", "rest")}


class TwinProperty(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["INT", "FLOAT", "STRING", "BOOLEAN"]
    access_mode: Literal["ReadWrite", "ReadOnly"]
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    allowed: list[str] | None = None
    list_separator: str | None = None
    unit: str | None = None
    description: str


class TwinTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1]
    properties: list[TwinProperty]


TABLE = TwinTable.model_validate(yaml.safe_load(TWIN_TABLE.read_text()))
WRITABLE = [p for p in TABLE.properties if p.access_mode == "ReadWrite"]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBEEDGE.glob("*.yaml") if p.name not in NOT_MANIFESTS)


DOCS = [d for f in manifest_files() for d in yaml.safe_load_all(f.read_text()) if d is not None]


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in DOCS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def all_of(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def config_file(configmap: str, key: str) -> Any:
    return yaml.safe_load(the("ConfigMap", configmap)["data"][key])


def number(value: float | None) -> str | None:
    """As the manifests write a bound: whole numbers in full (100000000, not 1e+08)."""
    if value is None:
        return None
    return str(int(value)) if value == int(value) else f"{value:g}"


def test_every_manifest_has_a_known_kind_api_version_and_namespace() -> None:
    assert DOCS
    for doc in DOCS:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["metadata"]
        assert doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edgefed"
    names = [(d["kind"], d["metadata"]["name"]) for d in DOCS]
    assert len(names) == len(set(names))


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBEEDGE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())


def test_twin_table_is_consistent() -> None:
    names = [p.name for p in TABLE.properties]
    assert len(names) == len(set(names))
    for p in TABLE.properties:
        assert KEY_RE.match(p.name), p.name
        if p.minimum is not None and p.maximum is not None:
            assert p.minimum < p.maximum, p.name
        assert p.type in ("INT", "FLOAT") or (p.minimum, p.maximum) == (None, None), p.name
        assert all(VALUE_RE.match(v) for v in p.allowed or []), p.name
    assert {p.name for p in TABLE.properties if p.access_mode == "ReadOnly"} >= {
        "fps",
        "gated_ratio",
        "outbox_depth",
    }


def test_device_model_properties_are_exactly_the_table() -> None:
    model = the("DeviceModel")
    expected = [
        {
            key: value
            for key, value in {
                "name": p.name,
                "description": p.description,
                "type": p.type,
                "accessMode": p.access_mode,
                "minimum": number(p.minimum),
                "maximum": number(p.maximum),
                "unit": p.unit,
            }.items()
            if value is not None
        }
        for p in TABLE.properties
    ]
    assert model["spec"]["properties"] == expected


def _constraints(field: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in field.metadata:
        for cls, key in ((annotated_types.Ge, "ge"), (annotated_types.Le, "le")):
            if isinstance(item, cls):
                out[key] = float(getattr(item, key))
        if isinstance(item, annotated_types.Gt):
            out["gt"] = float(typing.cast(float, item.gt))
    return out


def test_table_is_what_the_runtime_settings_code_accepts() -> None:
    fields = RuntimeSettings.model_fields
    assert [p.name for p in WRITABLE] == list(fields)
    for p in WRITABLE:
        expected: dict[str, float] = {}
        if p.minimum is not None:
            expected["gt" if p.exclusive_minimum else "ge"] = p.minimum
        if p.maximum is not None:
            expected["le"] = p.maximum
        assert _constraints(fields[p.name]) == expected, p.name
        if p.allowed is not None:
            assert list(typing.get_args(fields[p.name].annotation)) == p.allowed, p.name
        assert (p.list_separator is not None) == (
            typing.get_origin(fields[p.name].annotation) is list
        ), p.name


def test_device_desired_values_are_accepted_by_the_code() -> None:
    device = the("Device")
    spec = device["spec"]
    assert spec["deviceModelRef"]["name"] == the("DeviceModel")["metadata"]["name"]
    assert spec["nodeName"] == device["metadata"]["name"]  # device id <namespace>/<node>
    assert [p["name"] for p in spec["properties"]] == [p.name for p in TABLE.properties]
    desired = {p["name"]: p["desired"]["value"] for p in spec["properties"] if "desired" in p}
    assert list(desired) == [p.name for p in WRITABLE]
    assert all(isinstance(v, str) and VALUE_RE.match(v) for v in desired.values())
    settings = RuntimeSettings.model_validate(desired)
    edged_models = {m["name"] for m in config_file("edged-config", "edged.yaml")["models"]}
    assert set(settings.enabled_models) <= edged_models


def test_edged_daemonset_runs_on_edge_nodes_with_an_npu() -> None:
    ds = the("DaemonSet", "edged")
    pod = pod_spec(ds)
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/edge": ""}
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (edged,) = pod["containers"]
    # uid 0 only for EdgeCore's DMI socket, without capabilities (test_kubeedge_deploy.py);
    # its NPU request: test_kubeedge_deploy.py
    assert edged["securityContext"]["runAsUser"] == 0
    env = {e["name"]: e for e in edged["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["EDGED__DEVICE_ID"]["value"] == f"{NAMESPACE}/$(NODE_NAME)"
    node = the("Device")["metadata"]["name"]
    config = parse_config(
        config_file("edged-config", "edged.yaml"), env={"EDGED__DEVICE_ID": f"{NAMESPACE}/{node}"}
    )
    mounts = {m["mountPath"]: m for m in edged["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for path in (config.state_dir, config.images.dir):
        assert host_paths[mounts[str(path)]["name"]] == str(path)
    assert mounts[str(config.images.dir)]["readOnly"] is True
    assert str(config.images.trusted_keys[0].parent) in mounts
    assert "fake-npu" in {d.type for d in config.drivers}


def device_plugin_args() -> list[str]:
    (container,) = pod_spec(the("DaemonSet", "edgefed-device-plugin"))["containers"]
    return [*container["command"][2:], *container["args"]]


def test_device_plugin_daemonset_matches_the_cli_and_the_kubelet_dir() -> None:
    ds = the("DaemonSet", "edgefed-device-plugin")
    pod = pod_spec(ds)
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python3", "-m", "drivers.deviceplugin"]
    args = cli.parser().parse_args(device_plugin_args()[1:])
    plugin = cli.build_config(args)
    driver = registry.parse_config(config_file("npu-driver", "npu-driver.yaml"))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    kubelet_dir = volumes[mounts[str(plugin.socket_dir)]]["hostPath"]
    assert kubelet_dir == {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}
    assert mounts[str(args.driver_config)] == "driver-config"
    (mount,) = plugin.mounts
    assert mount.host_path == driver.state_dir == Path(volumes["fake-npu"]["hostPath"]["path"])  # type: ignore[attr-defined]


def test_services_select_pods_and_ports_that_exist() -> None:
    workloads = all_of("Deployment") + all_of("DaemonSet")
    for svc in all_of("Service"):
        selector = svc["spec"]["selector"]
        (target,) = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in pod_spec(target)["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (svc["metadata"]["name"], port)


def test_serverd_talks_to_triton_grpc_on_8001() -> None:
    config = config_file("serverd-config", "serverd.yaml")
    assert config["triton"]["instances"] == 0  # no Triton of its own: the Deployment's
    endpoints = [e["url"] for e in config["endpoints"]]
    assert endpoints == [f"triton.{NAMESPACE}.svc.cluster.local:8001"]
    grpc_port = {p["name"]: p["port"] for p in the("Service", "triton")["spec"]["ports"]}["grpc"]
    assert grpc_port == 8001
    (triton,) = pod_spec(the("Deployment", "triton"))["containers"]
    assert "--grpc-port=8001" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector selects ``labels``."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not held[operator]:
            return False
    return True


def serverd_endpoints(workload: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """The Triton URLs of the serverd config a workload mounts (none: not a serverd)."""
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    urls: list[str] = []
    for volume in pod_spec(workload).get("volumes", []):
        configmap = maps.get(volume.get("configMap", {}).get("name"))
        if configmap is not None and "serverd.yaml" in configmap["data"]:
            config = yaml.safe_load(configmap["data"]["serverd.yaml"])
            urls += [e["url"] for e in config.get("endpoints", [])]
    return urls


def test_only_serverds_pods_reach_triton_and_only_its_grpc_port() -> None:
    """Triton listened on every address of its pod with no NetworkPolicy: any pod of the
    cluster could call every API of it. Now only the pods of serverd (and of the serverd
    replicas of packaging/kubernetes) reach its gRPC port, which is all they call."""
    triton = the("Deployment", "triton")
    labels = triton["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in all_of("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    service = {p["name"]: p for p in the("Service", "triton")["spec"]["ports"]}
    (container,) = pod_spec(triton)["containers"]
    grpc = {p["name"]: p["containerPort"] for p in container["ports"]}[
        service["grpc"]["targetPort"]
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": grpc}]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])  # no namespace, no IP
    others = [
        d
        for f in sorted(KUBERNETES.glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d is not None
    ]
    docs = DOCS + others
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    users = {
        w["metadata"]["name"]
        for w in workloads
        if f"triton.{NAMESPACE}.svc.cluster.local:{service['grpc']['port']}"
        in serverd_endpoints(w, docs)
    }
    assert users == {"serverd", "serverd-replicas"}
    admitted = {
        w["metadata"]["name"]
        for w in workloads
        if any(
            selects(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"])
            for peer in rule["from"]
        )
    }
    assert admitted == users


def test_triton_needs_the_key_of_a_secret_that_serverd_sends() -> None:
    """The Triton Deployment runs the image's entry point with ``--key-file`` from the
    edgefed-triton-key Secret (every API group but health then needs the key; run for
    real: tests/serverd/test_triton_access.py); serverd's endpoint sends the same
    Secret's key (``key_file``), mounted whole so that a new key reaches it."""
    triton = pod_spec(the("Deployment", "triton"))
    (container,) = triton["containers"]
    assert "command" not in container  # the image's ENTRYPOINT: serverd tritonserver
    assert triton_entry_point()[2:4] == ["serverd", "tritonserver"]
    (key_file,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--key-file=")]
    assert secret_of(triton, container, key_file) == "edgefed-triton-key"
    assert not any("restricted" in arg for arg in container["args"])
    assert "--model-control-mode=poll" in container["args"]  # no load/unload through the API
    serverd = pod_spec(the("Deployment", "serverd"))
    (endpoint,) = config_file("serverd-config", "serverd.yaml")["endpoints"]
    assert endpoint["key_file"] == key_file
    assert secret_of(serverd, serverd["containers"][0], key_file) == "edgefed-triton-key"
    assert triton["securityContext"]["fsGroup"] == serverd["securityContext"]["fsGroup"]
    assert "health" in access.OPEN  # the kubelet's probes carry no key
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/v2/health/")


def test_workloads_are_bounded_and_unprivileged() -> None:
    claims = {d["metadata"]["name"] for d in all_of("PersistentVolumeClaim")}
    configmaps = {d["metadata"]["name"] for d in all_of("ConfigMap")} | OPERATOR_PROVIDED
    for workload in all_of("Deployment") + all_of("DaemonSet"):
        pod = pod_spec(workload)
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = (workload["metadata"]["name"], container["name"])
            assert container["image"], where
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in OPERATOR_PROVIDED


@pytest.mark.parametrize("rule", all_of("Rule"), ids=lambda r: r["metadata"]["name"])
def test_rules_connect_existing_endpoints(rule: dict[str, Any]) -> None:
    endpoints = {d["metadata"]["name"]: d for d in all_of("RuleEndpoint")}
    spec = rule["spec"]
    source, target = endpoints[spec["source"]], endpoints[spec["target"]]
    assert source["metadata"]["namespace"] == target["metadata"]["namespace"] == NAMESPACE
    pair = (source["spec"]["ruleEndpointType"], target["spec"]["ruleEndpointType"])
    assert pair == ("eventbus", "rest") and pair in RULE_PAIRS
    assert {"topic", "node_name"} <= spec["sourceResource"].keys()
    host = spec["targetResource"]["resource"].split("//")[1].split("/")[0]
    assert host == f"serverd.{NAMESPACE}.svc.cluster.local:8080"


def test_rules_route_exactly_the_topics_edged_publishes() -> None:
    node = the("Device")["metadata"]["name"]
    topics = event_topics(DEFAULT_PREFIX, f"{NAMESPACE}/{node}")
    published = {topics.frame, topics.stats, topics.twin}
    routed = {
        f"{r['metadata']['namespace']}/{r['spec']['sourceResource']['topic']}"
        for r in all_of("Rule")
        if r["spec"]["sourceResource"]["node_name"] == node
    }
    assert routed == published
