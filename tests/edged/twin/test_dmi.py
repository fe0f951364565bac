"""DmiMapper driven through the fake EdgeCore DMI side: real gRPC on unix sockets.

Desired values pushed the KubeEdge 1.15+ way (MapperRegister's device list,
RegisterDevice, UpdateDevice) must change what the daemon does (the real three-frame
gate on the same frames), be refused with a reason when invalid (the old value stays
and is reported), and the values edged runs with must reach ReportDeviceStatus.
"""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edged.twin.dmi import DmiMapper
from edged.twin.dmi_config import DmiConfig
from edged.twin.properties import load_property_table
from edged.twin.service import TwinOutcome
from edgefed.testing.dmi import FakeEdgeCoreDmi
from edgefed.testing.wait import wait_until
from tests.edged.twin.daemon import Daemon, gated

NS, NAME = "demo", "edge-01"
READINGS = {"fps": 9.5, "gated_ratio": 0.25, "outbox_depth": 3}


@pytest.fixture
def sockets(dmi_stubs: None) -> Iterator[Path]:
    """A short directory for the sockets (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dmi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Rig:
    def __init__(self, sockets: Path, state: Path, device_id: str = f"{NS}/{NAME}") -> None:
        self.daemon = Daemon(state)
        self.runtime = self.daemon.runtime()
        self.outcomes: list[TwinOutcome] = []
        self.config = DmiConfig(
            enabled=True,
            socket=sockets / "edgefed.sock",
            edgecore_socket=sockets / "dmi.sock",
            report_interval_s=0.5,
            retry_max_s=0.2,
            call_timeout_s=2,
        )
        self.mapper = DmiMapper(
            self.config,
            device_id,
            self.runtime,
            load_property_table(),
            on_outcome=self.outcomes.append,
            readings=lambda: READINGS,
        )


@pytest.fixture
def rig(sockets: Path, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(sockets, tmp_path / "state" / "runtime.json")
    yield rig
    rig.mapper.stop()


def started(rig: Rig) -> FakeEdgeCoreDmi:
    edgecore = FakeEdgeCoreDmi(rig.config.edgecore_socket)
    rig.mapper.start()
    # the mapper's own word: EdgeCore has the call before the mapper has its answer
    wait_until("MapperRegister answered", lambda: rig.mapper.status()["registered"])
    assert edgecore.mappers
    return edgecore


def device(edgecore: FakeEdgeCoreDmi, **desired: str) -> Any:
    return edgecore.device(NAME, NS, "edgefed", "edgefed-camera", desired)


def test_register_and_update_change_the_running_gate(rig: Rig, frames: list[np.ndarray]) -> None:
    edgecore = started(rig)
    before = gated(rig.daemon.gate, frames)
    info = edgecore.mappers[0]
    assert (info.protocol, info.api_version, info.state) == ("edgefed", "v1beta1", "ok")
    assert info.address.decode() == str(rig.config.socket)

    response = edgecore.register_device(device(edgecore, motion_threshold="200"))
    assert (response.deviceName, response.deviceNamespace) == (NAME, NS)
    assert rig.daemon.gate.config.threshold == 200
    after_register = gated(rig.daemon.gate, frames)
    assert after_register < before
    twins = edgecore.wait_reported(NS, NAME, "motion_threshold", "200", observed="200")
    assert twins["motion_min_pixels"] == ("5", "")  # no desired value: empty observedDesired
    assert twins["enabled_models"] == ("person,pose", "")
    assert json.loads(rig.daemon.state.read_text())["motion_threshold"] == 200
    assert rig.outcomes[-1].source == "register_device"
    assert rig.outcomes[-1].applied == {"motion_threshold": "200"}
    assert rig.outcomes[-1].device_id == f"{NS}/{NAME}"

    edgecore.update_device(device(edgecore, motion_threshold="25", motion_min_pixels="100000"))
    assert rig.daemon.gate.config.threshold == 25
    assert rig.daemon.gate.config.min_pixels == 100000
    assert gated(rig.daemon.gate, frames) < before  # same threshold, far more pixels needed
    edgecore.wait_reported(NS, NAME, "motion_min_pixels", "100000", observed="100000")
    assert rig.outcomes[-1].source == "update_device"
    assert edgecore.calls[:2] == ["MapperRegister", "RegisterDevice"]
    assert "ReportDeviceStatus" in edgecore.calls[2:]


def test_out_of_range_value_is_refused_kept_and_reported(rig: Rig) -> None:
    edgecore = started(rig)
    edgecore.register_device(device(edgecore, motion_threshold="60"))
    edgecore.update_device(device(edgecore, motion_threshold="300", log_level="WARNING"))
    assert rig.daemon.gate.config.threshold == 60  # the old value stays
    assert rig.daemon.applied["log_level"] == "WARNING"  # the valid one is applied
    # reported stays 60 while observedDesired shows the refused 300: the Device's status
    # then shows reported != desired
    edgecore.wait_reported(NS, NAME, "motion_threshold", "60", observed="300")
    outcome = rig.outcomes[-1]
    assert outcome.applied == {"log_level": "WARNING"}
    assert "out of range" in outcome.rejected["motion_threshold"].reason
    assert outcome.rejected["motion_threshold"].value == "300"
    status = rig.mapper.status()
    assert "motion_threshold" in status["rejections"]
    assert status["counters"]["rejected"] == 1
    assert json.loads(rig.daemon.state.read_text())["motion_threshold"] == 60

    edgecore.update_device(device(edgecore, fps="3", motion_threshold="abc"))
    outcome = rig.outcomes[-1]
    assert "read-only" in outcome.rejected["fps"].reason
    assert "not an integer" in outcome.rejected["motion_threshold"].reason
    assert rig.daemon.gate.config.threshold == 60


def test_devices_given_at_registration_are_applied_and_readings_reported(rig: Rig) -> None:
    edgecore = FakeEdgeCoreDmi(rig.config.edgecore_socket)
    edgecore.devices[(NS, NAME)] = device(edgecore, motion_threshold="77")
    other = edgecore.device("other", NS, "modbus", "plc", {"motion_threshold": "9"})
    edgecore.devices[(NS, "other")] = other
    rig.mapper.start()
    twins = edgecore.wait_reported(NS, NAME, "motion_threshold", "77", observed="77")
    assert rig.daemon.gate.config.threshold == 77
    assert twins["fps"] == ("9.5", "")
    assert twins["gated_ratio"] == ("0.25", "")
    assert twins["outbox_depth"] == ("3", "")
    assert edgecore.calls[0] == "MapperRegister"
    assert all(r.name == NAME for r in edgecore.reports)  # the modbus device was not ours
    got = edgecore.get_device(NS, NAME)
    assert {t.propertyName: t.reported.value for t in got.status.twins}["motion_threshold"] == "77"


def test_registration_waits_for_edgecore_and_socket_is_private(rig: Rig) -> None:
    rig.mapper.start()  # EdgeCore is not up yet: the mapper keeps trying
    wait_until("a failed MapperRegister", lambda: rig.mapper.counters.register_failures >= 1)
    assert "MapperRegister" in rig.mapper.status()["last_error"]
    mode = stat.S_IMODE(rig.config.socket.stat().st_mode)
    assert mode == 0o600
    edgecore = FakeEdgeCoreDmi(rig.config.edgecore_socket)
    wait_until("MapperRegister answered", lambda: rig.mapper.status()["registered"] is True)
    assert edgecore.mappers


def test_a_device_of_another_edged_is_refused(rig: Rig) -> None:
    edgecore = started(rig)
    with pytest.raises(grpc.RpcError) as info:
        edgecore.register_device(edgecore.device("cam-2", NS, "edgefed", "m", {}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        edgecore.register_device(edgecore.device(NAME, "other-ns", "edgefed", "m", {}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rig.mapper.counters.foreign_devices == 2
    assert rig.daemon.gate.config.threshold == 25


def test_changes_from_another_path_are_reported(rig: Rig) -> None:
    edgecore = started(rig)
    edgecore.register_device(device(edgecore))
    edgecore.wait_reported(NS, NAME, "motion_threshold", "25")
    rig.runtime.apply({"motion_threshold": 42})  # e.g. PUT /api/v1/config
    edgecore.wait_reported(NS, NAME, "motion_threshold", "42")


def test_remove_device_forgets_it_and_keeps_the_settings(rig: Rig) -> None:
    edgecore = started(rig)
    edgecore.register_device(device(edgecore, motion_threshold="90"))
    edgecore.wait_reported(NS, NAME, "motion_threshold", "90")
    model = edgecore.api.pb.DeviceModel(name="edgefed-camera", namespace=NS)
    response = edgecore.create_device_model(model)
    assert (response.deviceModelName, response.deviceModelNamespace) == ("edgefed-camera", NS)
    assert rig.mapper.status()["models"] == [f"{NS}/edgefed-camera"]
    edgecore.remove_device(NS, NAME)
    assert rig.mapper.status()["device"] is None
    assert rig.daemon.gate.config.threshold == 90  # applied settings stay
    with pytest.raises(grpc.RpcError) as info:
        edgecore.get_device(NS, NAME)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_edgecore_restart_makes_the_mapper_register_again(rig: Rig) -> None:
    edgecore = started(rig)
    edgecore.register_device(device(edgecore, motion_threshold="90"))
    edgecore.wait_reported(NS, NAME, "motion_threshold", "90")
    edgecore.close()  # EdgeCore down: the next report fails and the mapper registers again
    wait_until("a failed report", lambda: rig.mapper.counters.report_failures >= 1)
    # serving with the device from its first answer on (a MapperRegister in between
    # would list none)
    restarted = FakeEdgeCoreDmi(
        rig.config.edgecore_socket, devices=[device(edgecore, motion_threshold="91")]
    )
    wait_until("a second registration", lambda: restarted.mappers)
    restarted.wait_reported(NS, NAME, "motion_threshold", "91", observed="91")
    assert rig.mapper.counters.registrations == 2
