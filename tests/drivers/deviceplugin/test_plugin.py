"""The device plugin against a kubelet stand-in serving the real Registration API: as a
process, or in a thread when the test holds its driver (a side-car to kill, a vendor driver
that breaks the contract)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from drivers import registry
from drivers.deviceplugin.stubs import Api
from drivers.fake_npu import write_state
from drivers.sidecar.driver import SidecarDriver
from edgefed.testing.kubelet import WAIT_S, KubeletStandIn
from edgefed.testing.wait import wait_until
from tests.drivers.untranslated import untranslated_npu
from tests.support.paths import REPO

from .conftest import POLL_S, PluginProcess, PluginThread, plugin_command

RESOURCE = "edgefed.io/npu-fake-x220"
ENDPOINT = "edgefed.io_npu-fake-x220.sock"
ALL_HEALTHY = {"npu0": "Healthy", "npu1": "Healthy"}
ALL_UNHEALTHY = {"npu0": "Unhealthy", "npu1": "Unhealthy"}


def plugin_stub(api: Api, socket_dir: Path, endpoint: str = ENDPOINT) -> Any:
    channel = grpc.insecure_channel(f"unix:{socket_dir / endpoint}")
    return api.grpc.DevicePluginStub(channel)


def test_registers_with_the_kubelet(
    api: Api, kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    request = kubelet.next_registration()
    assert request.version == "v1beta1"
    assert request.resource_name == RESOURCE
    assert request.endpoint == ENDPOINT
    assert (socket_dir / ENDPOINT).is_socket()
    assert request.options.get_preferred_allocation_available is True
    assert request.options.pre_start_required is False


def test_list_and_watch_streams_health_changes(
    kubelet: KubeletStandIn, plugin: PluginProcess
) -> None:
    kubelet.next_registration()
    assert kubelet.next_devices() == ALL_HEALTHY
    (plugin.state_dir / "npu1").write_text("fault ecc error\n", encoding="utf-8")
    assert kubelet.next_devices() == {"npu0": "Healthy", "npu1": "Unhealthy"}
    (plugin.state_dir / "npu1").write_text("ok\n", encoding="utf-8")
    assert kubelet.next_devices() == ALL_HEALTHY
    (plugin.state_dir / "npu0").unlink()  # hot-unplug: the device disappears from the list
    assert kubelet.next_devices() == {"npu1": "Healthy"}
    assert "npu1=Unhealthy (fault: ecc error)" in plugin.output()


def test_a_driver_that_cannot_list_reports_its_devices_unhealthy(
    kubelet: KubeletStandIn, plugin: PluginProcess
) -> None:
    kubelet.next_registration()
    assert kubelet.next_devices() == ALL_HEALTHY
    shutil.rmtree(plugin.state_dir)  # the vendor's sysfs is gone: devices() raises
    assert kubelet.next_devices() == ALL_UNHEALTHY
    assert "fake-npu: listing devices failed: fake-npu: cannot list" in plugin.output()
    assert plugin.proc.poll() is None  # contained: the plugin keeps serving


def test_a_driver_raising_what_the_contract_does_not_allow_is_one_outage(
    kubelet: KubeletStandIn,
    serve: Callable[[Any], PluginThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = serve(untranslated_npu(tmp_path / "npu", devices=2))
    kubelet.next_registration()
    assert kubelet.next_devices() == ALL_HEALTHY
    shutil.rmtree(tmp_path / "npu")  # its devices() raises RuntimeError
    assert kubelet.next_devices() == ALL_UNHEALTHY
    time.sleep(10 * POLL_S)  # polls that fail the same way
    back = tmp_path / "npu.new"
    back.mkdir()
    for device in ALL_HEALTHY:
        write_state(back / device, "ok")
    back.rename(tmp_path / "npu")
    assert kubelet.next_devices() == ALL_HEALTHY
    assert plugin.running
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged.getMessage().startswith(
        "untranslated-npu: listing devices failed: NPU SDK: fake-npu: cannot list "
    )


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarDriver]:
    """The two-device fake NPU in a side-car that may restart often (state in tmp_path/npu)."""
    hosted = {"type": "fake-npu", "devices": 2, "state_dir": str(tmp_path / "npu")}
    config = {"type": "sidecar", "driver": hosted, "max_restarts": 100}
    driver = registry.create(registry.parse_config(config))
    assert isinstance(driver, SidecarDriver)
    yield driver
    driver.close()


def test_a_side_car_that_cannot_come_back_is_unhealthy_until_it_can(
    kubelet: KubeletStandIn,
    serve: Callable[[Any], PluginThread],
    sidecar: SidecarDriver,
    tmp_path: Path,
) -> None:
    plugin = serve(sidecar)
    kubelet.next_registration()
    assert kubelet.next_devices() == ALL_HEALTHY
    state_dir, away = tmp_path / "npu", tmp_path / "npu.away"
    state_dir.rename(away)  # the hosted driver can no longer start (nor list its devices)
    state_dir.write_text("not a directory\n", encoding="utf-8")
    os.kill(sidecar.status()["pid"], signal.SIGKILL)
    assert kubelet.devices_until(ALL_UNHEALTHY) == ALL_UNHEALTHY
    # the polls start it again, in vain: its devices stay unhealthy, with the reason
    wait_until("a failed restart", lambda: "start failed" in sidecar.status()["last_failure"])
    assert kubelet.device_lists.empty()
    assert all("cannot prepare state dir" in d.detail for d in sidecar.devices())
    state_dir.unlink()
    away.rename(state_dir)
    assert kubelet.devices_until(ALL_HEALTHY) == ALL_HEALTHY  # a poll started it again
    assert sidecar.status()["state"] == "running"
    write_state(state_dir / "npu0", "fault ecc")  # seen through the new side-car
    assert kubelet.next_devices() == {"npu0": "Unhealthy", "npu1": "Healthy"}
    assert plugin.running


def test_allocate_returns_env_devices_mounts_and_annotations(
    api: Api, kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    kubelet.next_registration()
    kubelet.next_devices()
    stub = plugin_stub(api, socket_dir)
    pb = api.pb
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["npu1", "npu0"])]
    )
    (container,) = stub.Allocate(request, timeout=WAIT_S).container_responses
    assert dict(container.envs) == {
        "EDGEFED_NPU_DEVICES": "npu0,npu1",
        "EDGEFED_NPU_RESOURCE": RESOURCE,
    }
    assert [(d.host_path, d.container_path, d.permissions) for d in container.devices] == [
        ("/dev/fake-npu0", "/dev/fake-npu0", "rw"),
        ("/dev/fake-npu1", "/dev/fake-npu1", "rw"),
    ]
    assert [(m.host_path, m.container_path, m.read_only) for m in container.mounts] == [
        (str(plugin.state_dir), "/run/fake-npu", True)
    ]
    assert dict(container.annotations) == {"edgefed.io/npu-devices": "npu0,npu1"}


def test_allocate_refuses_unknown_and_faulted_devices(
    api: Api, kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    kubelet.next_registration()
    kubelet.next_devices()
    stub = plugin_stub(api, socket_dir)
    pb = api.pb

    def allocate(*ids: str) -> Any:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Allocate(request, timeout=WAIT_S)
        return caught.value

    error = allocate("npu7")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown device 'npu7'" in error.details()
    (plugin.state_dir / "npu0").write_text("fault thermal trip\n", encoding="utf-8")
    kubelet.devices_until({"npu0": "Unhealthy", "npu1": "Healthy"})
    assert "thermal trip" in allocate("npu0").details()


def test_options_and_preferred_allocation(
    api: Api, kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    kubelet.next_registration()
    stub = plugin_stub(api, socket_dir)
    pb = api.pb
    options = stub.GetDevicePluginOptions(pb.Empty(), timeout=WAIT_S)
    assert options.get_preferred_allocation_available
    request = pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=["npu1", "npu0"], must_include_deviceIDs=[], allocation_size=1
            ),
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=["npu0", "npu1"],
                must_include_deviceIDs=["npu1"],
                allocation_size=1,
            ),
        ]
    )
    response = stub.GetPreferredAllocation(request, timeout=WAIT_S)
    assert [list(c.deviceIDs) for c in response.container_responses] == [["npu0"], ["npu1"]]
    assert (
        stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=["npu0"]), timeout=WAIT_S)
        == pb.PreStartContainerResponse()
    )


AIX = "skt.com/aix_v1"
AIX_ENDPOINT = "skt.com_aix_v1.sock"


@pytest.mark.parametrize("plugin", [("--resource", f"{AIX}=fake-x220")], indirect=True)
def test_a_resource_named_in_config_is_registered_listed_and_allocated(
    api: Api, kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    request = kubelet.next_registration()
    assert (request.resource_name, request.endpoint) == (AIX, AIX_ENDPOINT)
    assert not (socket_dir / ENDPOINT).exists()  # no derived name besides the named one
    assert kubelet.next_devices() == ALL_HEALTHY
    (plugin.state_dir / "npu0").write_text("fault ecc\n", encoding="utf-8")
    assert kubelet.next_devices() == {"npu0": "Unhealthy", "npu1": "Healthy"}
    stub = plugin_stub(api, socket_dir, AIX_ENDPOINT)
    pb = api.pb
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["npu1"])]
    )
    (container,) = stub.Allocate(request, timeout=WAIT_S).container_responses
    assert dict(container.envs) == {"EDGEFED_NPU_DEVICES": "npu1", "EDGEFED_NPU_RESOURCE": AIX}
    refused = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["npu0"])]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Allocate(refused, timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{AIX}: device npu0 is unhealthy" in caught.value.details()


@pytest.mark.parametrize(
    ("option", "cause"),
    [
        ("aix_v1=fake-x220", "must be <domain>/<name>"),
        ("SKT.com/aix_v1=fake-x220", "lowercase DNS-1123 subdomain"),
        ("skt.com/aix v1=fake-x220", "1-63 characters"),
        ("skt.com/aix_v1_=fake-x220", "1-63 characters"),
        ("example.kubernetes.io/npu=fake-x220", "native resources"),
        ("skt.com/aix_v1", "not RESOURCE=MODEL"),
    ],
)
def test_a_bad_resource_name_is_a_one_line_config_error(
    tmp_path: Path, socket_dir: Path, option: str, cause: str
) -> None:
    config = tmp_path / "driver.yaml"
    config.write_text("type: fake-npu\n", encoding="utf-8")
    proc = subprocess.run(
        plugin_command(config, socket_dir, "--resource", option),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "invalid configuration" in line and cause in line, line
    assert not list(socket_dir.iterdir())  # nothing served


def test_registers_again_after_the_kubelet_restarts(
    kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    first = kubelet.next_registration()
    assert kubelet.next_devices() == ALL_HEALTHY
    kubelet.restart()  # kubelet.sock recreated, the plugin's socket wiped
    again = kubelet.next_registration()
    assert (again.resource_name, again.endpoint) == (first.resource_name, first.endpoint)
    assert (socket_dir / ENDPOINT).is_socket()
    assert kubelet.devices_until(ALL_HEALTHY) == ALL_HEALTHY  # served from the new socket
    (plugin.state_dir / "npu0").write_text("fault\n", encoding="utf-8")
    assert kubelet.devices_until({"npu0": "Unhealthy", "npu1": "Healthy"})


def test_waits_for_a_kubelet_that_starts_later(
    api: Api, socket_dir: Path, plugin: PluginProcess
) -> None:
    deadline = time.monotonic() + WAIT_S
    # serving, and said it found no kubelet to register with (its socket comes first)
    while not (socket_dir / ENDPOINT).is_socket() or "waiting for the kubelet" not in (
        plugin.output()
    ):
        assert time.monotonic() < deadline, plugin.output()
        time.sleep(0.05)
    kubelet = KubeletStandIn(api, socket_dir)
    try:
        kubelet.start()
        assert kubelet.next_registration().resource_name == RESOURCE
        assert kubelet.next_devices() == ALL_HEALTHY
    finally:
        kubelet.stop()


def test_sigterm_stops_cleanly_and_removes_its_socket(
    kubelet: KubeletStandIn, plugin: PluginProcess, socket_dir: Path
) -> None:
    kubelet.next_registration()
    assert plugin.stop() == 0
    assert not (socket_dir / ENDPOINT).exists()
    assert "device plugin stopped" in plugin.output()


def test_bad_driver_config_is_a_one_line_config_error(tmp_path: Path, socket_dir: Path) -> None:
    config = tmp_path / "driver.yaml"
    config.write_text("type: fake-npu\ndevices: 0\n", encoding="utf-8")
    proc = subprocess.run(
        plugin_command(config, socket_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "invalid configuration" in line and "devices" in line


def test_unknown_driver_type_is_refused(tmp_path: Path, socket_dir: Path) -> None:
    config = tmp_path / "driver.yaml"
    config.write_text("type: no-such-npu\n", encoding="utf-8")
    proc = subprocess.run(
        plugin_command(config, socket_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown driver 'no-such-npu'" in proc.stderr
