"""The sans-io decisions of the device plugin and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.deviceplugin import core
from drivers.deviceplugin.config import (
    DevicePluginConfig,
    MountSpec,
    check_resource_name,
    parse_resources,
)
from edgefed.driver import DeviceInfo
from edgefed.errors import DriverError

CONFIG = DevicePluginConfig(device_nodes=("/dev/x220_{id}",))
LONGEST_DOMAIN = ".".join(["d" * 60] * 3 + ["d" * 61])  # 244: the kubelet adds "requests."


def dev(device_id: str, model: str = "x220", healthy: bool = True, detail: str = "") -> DeviceInfo:
    return DeviceInfo(device_id, model, healthy, detail)


def test_resource_names_are_valid_extended_resource_names() -> None:
    assert core.resource_name("edgefed.io", "npu", "fake-x220") == "edgefed.io/npu-fake-x220"
    assert core.resource_name("edgefed.io", "npu", "X220 Pro/2") == "edgefed.io/npu-x220-pro-2"
    long = core.resource_name("edgefed.io", "npu", "m" * 100)
    assert len(long.split("/")[1]) == 63
    assert core.endpoint_name("edgefed.io/npu-x220") == "edgefed.io_npu-x220.sock"


def test_devices_are_grouped_by_model_in_natural_order() -> None:
    grouping = core.group(
        [dev("npu10"), dev("npu2"), dev("cpu", model="cpu"), dev("npu1", healthy=False)], CONFIG
    )
    assert list(grouping.resources) == ["edgefed.io/npu-cpu", "edgefed.io/npu-x220"]
    assert [d.id for d in grouping.resources["edgefed.io/npu-x220"]] == ["npu1", "npu2", "npu10"]
    assert grouping.rejected == []


def test_a_resource_named_in_config_replaces_the_derived_name() -> None:
    config = CONFIG.model_copy(
        update={"resources": {"x220": "skt.com/aix_v1", "x230": "skt.com/aix_v1"}}
    )
    grouping = core.group([dev("npu1"), dev("npu0", model="x230"), dev("cpu", model="cpu")], config)
    assert {name: [d.id for d in devs] for name, devs in grouping.resources.items()} == {
        "edgefed.io/npu-cpu": ["cpu"],  # not named: derived as before
        "skt.com/aix_v1": ["npu0", "npu1"],  # two models, one resource
    }
    assert core.endpoint_name("skt.com/aix_v1") == "skt.com_aix_v1.sock"


@pytest.mark.parametrize(
    "name",
    [
        "skt.com/aix_v1",
        "edgefed.io/npu-x220",
        "a.b/C.d-e_f",
        "x/" + "n" * 63,
        LONGEST_DOMAIN + "/n",
    ],
)
def test_the_kubelet_accepts_these_resource_names(name: str) -> None:
    assert check_resource_name(name) == name


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("aix_v1", "must be <domain>/<name>"),
        ("/aix_v1", "DNS-1123 subdomain"),
        ("skt_com/aix_v1", "DNS-1123 subdomain"),
        ("Skt.com/aix_v1", "DNS-1123 subdomain"),
        ("-skt.com/aix_v1", "DNS-1123 subdomain"),
        (LONGEST_DOMAIN + "d/n", "at most 244"),
        ("skt.com/", "1-63 characters"),
        ("skt.com/_aix", "1-63 characters"),
        ("skt.com/aix/v1", "1-63 characters"),
        ("skt.com/" + "n" * 64, "1-63 characters"),
        ("skt.com/aix_v1\n", "1-63 characters"),
        ("skt.com\n/aix_v1", "DNS-1123 subdomain"),
        ("kubernetes.io/npu", "native resources"),
        ("npu.kubernetes.io/aix", "native resources"),
        ("requests.skt.com/aix", "resource-quota prefix"),
    ],
)
def test_resource_names_the_kubelet_refuses_are_refused_with_why(name: str, cause: str) -> None:
    with pytest.raises(ValueError, match=cause):
        check_resource_name(name)
    with pytest.raises(ValidationError, match=cause):
        DevicePluginConfig(resources={"x220": name})


def test_resource_options_parse_to_a_model_map() -> None:
    assert parse_resources(["skt.com/aix_v1=x220", "skt.com/aix_v1=x230"]) == {
        "x220": "skt.com/aix_v1",
        "x230": "skt.com/aix_v1",
    }
    for bad, cause in (("skt.com/aix_v1", "RESOURCE=MODEL"), ("=x220", "RESOURCE=MODEL")):
        with pytest.raises(ValueError, match=cause):
            parse_resources([bad])
    with pytest.raises(ValueError, match="given two resources"):
        parse_resources(["skt.com/aix_v1=x220", "skt.com/aix_v2=x220"])


def test_invalid_device_ids_are_rejected_with_a_reason() -> None:
    grouping = core.group([dev("ok0"), dev("bad id"), dev("x" * 64)], CONFIG)
    assert [d.id for d in grouping.resources["edgefed.io/npu-x220"]] == ["ok0"]
    assert len(grouping.rejected) == 2
    assert "'bad id'" in grouping.rejected[0]


def test_health_snapshot_ignores_detail_but_not_health() -> None:
    a = [dev("npu0", healthy=False, detail="fault: a")]
    b = [dev("npu0", healthy=False, detail="fault: b")]
    assert core.health_snapshot(a) == core.health_snapshot(b)
    assert core.health_snapshot(a) != core.health_snapshot([dev("npu0")])
    assert core.describe(a) == "npu0=Unhealthy (fault: a)"
    assert core.describe([]) == "no devices"


def test_preferred_allocation() -> None:
    assert core.preferred(["npu3", "npu10", "npu2"], [], 2) == ["npu2", "npu3"]
    assert core.preferred(["npu0", "npu1", "npu2"], ["npu2"], 2) == ["npu2", "npu0"]
    assert core.preferred(["npu0", "npu1"], ["npu1", "npu0"], 1) == ["npu1", "npu0"]


def test_allocate_builds_env_nodes_mounts_and_annotations() -> None:
    mount = MountSpec(host_path=Path("/opt/x220/lib"), container_path=Path("/opt/x220/lib"))
    config = CONFIG.model_copy(update={"mounts": (mount,)})
    known = {d.id: d for d in [dev("npu0"), dev("npu1")]}
    a = core.allocate("edgefed.io/npu-x220", ["npu1", "npu0"], known, config)
    assert a.envs == {
        "EDGEFED_NPU_DEVICES": "npu0,npu1",
        "EDGEFED_NPU_RESOURCE": "edgefed.io/npu-x220",
    }
    assert [n.host_path for n in a.devices] == ["/dev/x220_npu0", "/dev/x220_npu1"]
    assert a.mounts == (mount,)
    assert a.annotations == {"edgefed.io/npu-devices": "npu0,npu1"}


@pytest.mark.parametrize(
    ("ids", "cause"),
    [([], "names no device"), (["npu9"], "unknown device 'npu9'"), (["npu1"], "unhealthy: ecc")],
)
def test_allocate_refuses(ids: list[str], cause: str) -> None:
    known = {d.id: d for d in [dev("npu0"), dev("npu1", healthy=False, detail="ecc")]}
    with pytest.raises(DriverError, match=cause):
        core.allocate("edgefed.io/npu-x220", ids, known, CONFIG)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resource_domain", "Not_A_Domain"),
        ("resource_prefix", "-npu"),
        ("device_nodes", ("dev/x220",)),
        ("device_nodes", ("/dev/x220_{index}",)),
        ("env_name", "lower"),
        ("poll_interval_s", 0),
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        DevicePluginConfig.model_validate({field: value})


@pytest.mark.parametrize(
    ("text", "cause"),
    [("/a", "not HOST:CONTAINER"), ("/a:/b:rx", "not HOST:CONTAINER"), ("a:/b", "absolute")],
)
def test_bad_mounts_are_refused(text: str, cause: str) -> None:
    with pytest.raises(ValueError, match=cause):
        MountSpec.parse(text)


def test_mount_parsing() -> None:
    assert MountSpec.parse("/a:/b") == MountSpec(host_path=Path("/a"), container_path=Path("/b"))
    assert MountSpec.parse("/a:/b:rw").read_only is False
