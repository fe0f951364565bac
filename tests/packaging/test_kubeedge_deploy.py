"""packaging/kubeedge deploys and runs: configs pass check-config, pods mount what they use.

Every daemon config in a ConfigMap is extracted and checked by the daemon's own
``check-config`` command (a real subprocess); the edged DaemonSet mounts its state, the
DMI sockets at their node paths and probes the API the config serves; the pods that need
an NPU request ``skt.com/aix_v1``, the resource the shipped device plugin advertises.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers import registry
from drivers.deviceplugin import cli, core
from edged.config import EdgedConfig, parse_config
from edgefed import certs
from serverd.api.devices import EVENT_KINDS
from serverd.config import ServerdConfig
from tests.packaging.test_kubeedge_manifests import (
    DOCS,
    NAMESPACE,
    device_plugin_args,
    pod_spec,
    the,
)

DAEMON_CONFIGS = {
    ("edged-config", "edged.yaml"): "edged",
    ("serverd-config", "serverd.yaml"): "serverd",
}
"""ConfigMap entries a daemon reads, and the daemon whose check-config validates them."""
DRIVER_CONFIGS = {("npu-driver", "npu-driver.yaml")}
"""Driver configs, read by the device plugin and parsed by the driver registry."""
BROKER_CONFIGS = {("edgefed-mqtt-config", "mosquitto.conf"), ("edgefed-mqtt-config", "edgefed.acl")}
"""mosquitto's own config and ACL (not a daemon of ours): listed so that nothing goes
unchecked (both are run on a real mosquitto by tests/packaging/test_mosquitto_bridge.py)."""
NODE_TLS = "/etc/edgefed/tls/edged/"
"""Where the edge node keeps edged's broker certificate (a hostPath of the edged DaemonSet)."""
CLOUDCORE_NAMESPACE = {"kubernetes.io/metadata.name": "kubeedge"}
"""CloudCore's namespace: keadm's default."""
NPU = "skt.com/aix_v1"
"""The NPU resource of the original project, which the manifests keep."""
NPU_USERS = {("DaemonSet", "edged"), ("Deployment", "triton")}
"""The workloads that run models on the NPU."""


def entries() -> list[tuple[str, str]]:
    return sorted(
        (d["metadata"]["name"], key) for d in DOCS if d["kind"] == "ConfigMap" for key in d["data"]
    )


def test_every_configmap_entry_is_known() -> None:
    assert set(entries()) == set(DAEMON_CONFIGS) | DRIVER_CONFIGS | BROKER_CONFIGS


@pytest.mark.parametrize(("entry", "daemon"), DAEMON_CONFIGS.items(), ids=lambda v: str(v))
def test_daemon_configmaps_pass_check_config(
    entry: tuple[str, str], daemon: str, tmp_path: Path
) -> None:
    name, key = entry
    path = tmp_path / key
    path.write_text(_with_node_tls(the("ConfigMap", name)["data"][key], tmp_path / "tls"))
    run = subprocess.run(
        [sys.executable, "-m", daemon, "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def _with_node_tls(text: str, directory: Path) -> str:
    """``text`` with the node's TLS files (NODE_TLS) made real in ``directory`` as step 3.1
    of docs/kubeedge.md installs them: check-config reads them."""
    if NODE_TLS not in text:
        return text
    certs.make_ca(directory, "edgefed test CA", days=1)
    issued = certs.issue(directory, f"{NAMESPACE}/{the('Device')['metadata']['name']}", days=1)
    issued.cert.rename(directory / "edged.pem")
    issued.key.rename(directory / "edged.key")
    return text.replace(NODE_TLS, f"{directory}/")


@pytest.mark.parametrize("entry", sorted(DRIVER_CONFIGS), ids=str)
def test_driver_configmaps_parse(entry: tuple[str, str]) -> None:
    name, key = entry
    registry.parse_config(yaml.safe_load(the("ConfigMap", name)["data"][key]))


def edged_config() -> EdgedConfig:
    raw = yaml.safe_load(the("ConfigMap", "edged-config")["data"]["edged.yaml"])
    node = the("Device")["metadata"]["name"]
    return parse_config(raw, env={"EDGED__DEVICE_ID": f"{NAMESPACE}/{node}"})


def edged_container() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = pod_spec(the("DaemonSet", "edged"))
    (container,) = pod["containers"]
    return pod, container


def host_path_at(pod: dict[str, Any], container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The hostPath volume mounted at ``path`` (or a parent of it) in ``container``."""
    mounts = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
    holder = next((p for p in (path, *path.parents) if p in mounts), None)
    assert holder is not None, f"{path} is not on a volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[holder])
    assert "hostPath" in volume, f"{path} is not on a hostPath volume"
    host_path: dict[str, Any] = volume["hostPath"]
    assert host_path["path"] == str(holder)  # the same path on the node and in the pod
    return host_path


def test_edged_state_is_absolute_and_on_the_node() -> None:
    config = edged_config()
    pod, container = edged_container()
    for path in (config.state_dir, config.offload.outbox.path):
        assert path.is_absolute(), path
        host_path_at(pod, container, path)
    assert config.offload.outbox.path.parent == config.state_dir
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_edged_is_the_dmi_mapper_with_both_sockets_mounted() -> None:
    config = edged_config()
    assert config.mqtt is not None  # reports, events and stats on the node's broker
    assert (config.dmi.enabled, config.twin.enabled) == (True, False)  # KubeEdge 1.23
    assert config.dmi.protocol == the("Device")["spec"]["protocol"]["protocolName"]
    pod, container = edged_container()
    # the socket's directory, not the socket: EdgeCore unlinks and recreates dmi.sock at
    # every start, and a mount of the old socket file would refuse every connection after
    edgecore = host_path_at(pod, container, config.dmi.edgecore_socket)
    assert edgecore == {"path": str(config.dmi.edgecore_socket.parent), "type": "Directory"}
    # a directory of its own (deviceTwin.dmiSockPath): /etc/kubeedge holds the node's keys
    assert config.dmi.edgecore_socket == Path("/var/lib/kubeedge/dmi/dmi.sock")
    mapper = host_path_at(pod, container, config.dmi.socket)
    assert mapper["type"] == "DirectoryOrCreate"
    # EdgeCore's socket admits only uid 0; the container keeps no capability
    security = container["securityContext"]
    assert security["runAsUser"] == 0
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security["allowPrivilegeEscalation"] is False


def test_edged_probes_hit_the_api_it_serves() -> None:
    config = edged_config()
    assert config.api.enabled
    _, container = edged_container()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] == config.api.port
        assert get["host"] == config.api.host == "127.0.0.1"  # hostNetwork: node loopback


def test_serverd_api_is_what_the_rules_probes_and_service_use() -> None:
    raw = yaml.safe_load(the("ConfigMap", "serverd-config")["data"]["serverd.yaml"])
    config = ServerdConfig.model_validate(raw)
    (serverd,) = pod_spec(the("Deployment", "serverd"))["containers"]
    ports = {p["name"]: p["containerPort"] for p in serverd["ports"]}
    assert ports["http"] == config.api.port == 8080
    assert config.api.host == "0.0.0.0"  # reached from CloudCore and the kubelet
    assert serverd["livenessProbe"]["httpGet"] == {"port": "http", "path": "/healthz"}
    assert serverd["readinessProbe"]["httpGet"] == {"port": "http", "path": "/readyz"}
    service = {p["name"]: p for p in the("Service", "serverd")["spec"]["ports"]}
    assert service["http"]["port"] == 8080 and service["http"]["targetPort"] == "http"
    for rule in (d for d in DOCS if d["kind"] == "Rule"):
        path = rule["spec"]["targetResource"]["resource"].split(":8080", 1)[1]
        assert path.rsplit("/", 1)[0] == "/api/v1/edge-events"
        assert path.rsplit("/", 1)[1] in EVENT_KINDS
    # events come without a token, so only CloudCore may reach the port: its namespace's
    # pods, and with hostNetwork (keadm's default) its node's address, which the site sets
    # in place of a documentation address that admits nothing (docs/kubeedge.md, step 6)
    assert config.api.open_edge_events is True
    policy = the("NetworkPolicy", "serverd-api-from-cloudcore")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "serverd"}
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    namespace, node = ingress["from"]
    assert namespace == {"namespaceSelector": {"matchLabels": CLOUDCORE_NAMESPACE}}
    placeholder = ipaddress.IPv4Network(node["ipBlock"]["cidr"])
    assert placeholder.subnet_of(ipaddress.IPv4Network("192.0.2.0/24"))  # RFC 5737


def test_the_device_plugin_advertises_the_shipped_npu_as_skt_aix_v1(tmp_path: Path) -> None:
    """The plugin's own CLI and grouping, on the devices of the shipped driver config."""
    plugin = cli.build_config(cli.parser().parse_args(device_plugin_args()[1:]))
    raw = yaml.safe_load(the("ConfigMap", "npu-driver")["data"]["npu-driver.yaml"])
    driver = registry.create(registry.parse_config({**raw, "state_dir": str(tmp_path)}))
    try:
        devices = driver.devices()
    finally:
        driver.close()
    grouping = core.group(devices, plugin)
    assert list(grouping.resources) == [NPU]
    assert [d.id for d in grouping.resources[NPU]] == ["npu0", "npu1"]


def test_npu_workloads_request_skt_aix_v1_and_nothing_else_extended() -> None:
    for workload in (d for d in DOCS if d["kind"] in ("Deployment", "DaemonSet")):
        where = (workload["kind"], workload["metadata"]["name"])
        for container in pod_spec(workload)["containers"]:
            resources = container["resources"]
            extended = {k: v for k, v in resources["limits"].items() if "/" in k}
            expected = {NPU: 1} if where in NPU_USERS else {}
            assert extended == expected, where
            # an extended resource is not overcommitted: a request, if any, equals the limit
            assert {k: v for k, v in resources["requests"].items() if "/" in k} in ({}, expected)
