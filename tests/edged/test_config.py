from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from edged import wiring
from edged.config import dump_config, load_config, parse_config
from edged.netloop import NetLoop
from edgefed.errors import ConfigError
from edgefed.mqtt import MqttClient
from tests.support.configs import demo_config, write_config


def test_demo_config_resolves_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)), env={})
    assert [m.name for m in cfg.models] == ["person", "pose", "face", "scene"]
    assert cfg.models[1].cascade_on == "person"
    assert cfg.motion.threshold == 25
    assert {d.type for d in cfg.drivers} == {"onnxruntime", "litert"}
    assert cfg.driver_config("litert").type == "litert"


def test_environment_overrides_nested_and_indexed_fields(tmp_path: Path) -> None:
    env = {
        "EDGED__MOTION__THRESHOLD": "40",
        "EDGED__CAMERAS__0__LOOP": "false",
        "EDGED__MODELS__3__EVERY_N": "7",
        "UNRELATED": "x",
    }
    cfg = parse_config(demo_config(tmp_path), env=env)
    assert cfg.motion.threshold == 40
    assert cfg.cameras[0].loop is False
    assert cfg.models[3].every_n == 7


def test_every_error_is_reported_with_its_field_path(tmp_path: Path) -> None:
    raw = demo_config(tmp_path, motion={"threshold": 300})
    raw["models"][0]["regions"] = "everywhere"
    del raw["models"][2]["image"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    lines = str(info.value).splitlines()
    assert any(line.startswith("motion.threshold:") for line in lines)
    assert any(line.startswith("models.0.regions:") for line in lines)
    assert any(line.startswith("models.2.image:") for line in lines)


def test_values_that_would_break_a_timer_or_the_wire_are_refused_at_load(
    tmp_path: Path,
) -> None:
    """Each was accepted before and broke later: an infinite deadline or retry wait made
    every offload fail (int(inf)), a huge one overflowed the outbox's SQLite column, a
    stream timeout past int32 milliseconds made OpenCV refuse to open the camera with an
    error about sequence items, and a remote model name the wire refuses made every
    n-th frame fail to offload."""
    path = write_config(tmp_path, demo_config(tmp_path))
    text = path.read_text() + "offload:\n  ttl_s: .inf\n  outbox: {retry_cap_s: .nan}\n"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EDGED__CAMERAS__0__RECONNECT_MAX_S": "-.inf"})
    assert str(info.value).splitlines() == [
        "cameras.0.reconnect_max_s: must be a finite number, not -inf",
        "offload.ttl_s: must be a finite number, not inf",
        "offload.outbox.retry_cap_s: must be a finite number, not nan",
    ]
    raw = demo_config(tmp_path)
    raw["cameras"][0]["io_timeout_s"] = 2_200_000
    raw["offload"] = {
        "outbox": {"result_timeout_s": 1e13},
        "remote_models": [{"name": "face recog"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "cameras.0.io_timeout_s",
        "offload.remote_models.0.name",
        "offload.outbox.result_timeout_s",
    ]
    assert "less than or equal to 2592000" in lines[2]


def test_unknown_keys_drivers_and_cascades_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="motoin"):
        parse_config({**demo_config(tmp_path), "motoin": {}}, env={})
    with pytest.raises(ConfigError, match="unknown driver 'npu9000'"):
        parse_config(demo_config(tmp_path, drivers=[{"type": "npu9000"}]), env={})
    raw = demo_config(tmp_path)
    raw["models"][1]["cascade_on"] = "nobody"
    with pytest.raises(ConfigError, match="unknown model 'nobody'"):
        parse_config(raw, env={})


def test_object_masks_need_the_planned_detector(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["cameras"][0]["object_masks"] = [[[0, 0.8], [0.3, 0.8], [0.3, 1]]]
    planned = [m for m in raw["models"] if m.get("regions") == "planned"]
    assert planned, "the demo's person detector plans its regions"
    assert parse_config(raw, env={}).cameras[0].object_masks
    planned[0]["regions"] = "motion"
    with pytest.raises(ConfigError, match="apply to the detector with regions: planned"):
        parse_config(raw, env={})


def test_bad_driver_option_names_the_driver(tmp_path: Path) -> None:
    raw = demo_config(tmp_path, drivers=[{"type": "litert", "num_threads": "many"}])
    with pytest.raises(ConfigError, match="litert"):
        parse_config(raw, env={})


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("cameras: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, env={})


def test_dmi_and_mqtt_twin_cannot_both_take_desired_values(tmp_path: Path) -> None:
    mqtt = {"host": "127.0.0.1", "port": 1883, "client_id": "edged-1"}
    with pytest.raises(ConfigError, match=r"KubeEdge 1\.15"):
        parse_config(demo_config(tmp_path, mqtt=mqtt, dmi={"enabled": True}), env={})
    cfg = parse_config(
        demo_config(tmp_path, mqtt=mqtt, dmi={"enabled": True}, twin={"enabled": False}), env={}
    )
    assert cfg.dmi.protocol == "edgefed"
    assert str(cfg.dmi.edgecore_socket) == "/etc/kubeedge/dmi.sock"
    with pytest.raises(ConfigError, match=r"dmi\.socket: .*absolute"):
        parse_config(demo_config(tmp_path, dmi={"socket": "edgefed.sock"}), env={})


def test_fallback_chains_are_checked(tmp_path: Path) -> None:
    scene = {"name": "scene", "image": "efficientnet_lite0"}
    chain = ["openvino:NPU", "onnxruntime:cpu"]
    cfg = parse_config(demo_config(tmp_path, models=[{**scene, "fallback": chain}]), env={})
    assert cfg.models[0].fallback == chain
    assert (cfg.models[0].fallback_after, cfg.models[0].fallback_probe_s) == (3, 30)
    both = {**scene, "fallback": chain, "device": "cpu"}
    with pytest.raises(ConfigError, match="give fallback or driver/device, not both"):
        parse_config(demo_config(tmp_path, models=[both]), env={})
    with pytest.raises(ConfigError, match="'openvino' is not <driver>:<device>"):
        parse_config(demo_config(tmp_path, models=[{**scene, "fallback": ["openvino"]}]), env={})


def test_a_side_car_config_round_trips_with_its_hosted_driver(tmp_path: Path) -> None:
    hosted = {"type": "openvino", "devices": ["NPU", "CPU"]}
    raw = demo_config(tmp_path, drivers=[{"type": "sidecar", "driver": hosted}])
    cfg = parse_config(raw, env={})
    dumped = parse_config(yaml.safe_load(dump_config(cfg)), env={})
    assert dumped.driver_config("sidecar") == cfg.driver_config("sidecar")
    assert yaml.safe_load(dump_config(cfg))["drivers"][0]["driver"]["devices"] == ["NPU", "CPU"]


def test_a_file_that_is_not_utf8_and_bad_yaml_in_a_variable_are_config_errors(
    tmp_path: Path,
) -> None:
    """Both ended in a Python traceback on main."""
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("device_id: caméra\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(latin, env={})
    path = write_config(tmp_path, demo_config(tmp_path))
    with pytest.raises(ConfigError, match="EDGED__MOTION__THRESHOLD: not a valid YAML value"):
        load_config(path, env={"EDGED__MOTION__THRESHOLD": "[1, 2"})


def test_state_dir_holds_the_outbox_and_results_unless_they_are_set(tmp_path: Path) -> None:
    """A site moving ``state_dir`` to a bigger disk still had the outbox (up to 256 MB)
    and the results file written to the fixed state root."""
    raw = demo_config(tmp_path)
    del raw["output"]["results"]
    cfg = parse_config(raw, env={})
    assert cfg.offload.outbox.path == tmp_path / "state" / "outbox.sqlite"
    assert cfg.output.results == tmp_path / "state" / "results.jsonl"
    raw["offload"] = {"outbox": {"path": str(tmp_path / "fast" / "outbox.sqlite")}}
    raw["output"]["results"] = None
    cfg = parse_config(raw, env={})
    assert cfg.offload.outbox.path == tmp_path / "fast" / "outbox.sqlite"
    assert cfg.output.results is None
    assert parse_config(yaml.safe_load(dump_config(cfg)), env={}) == cfg


def test_an_outbox_left_at_the_old_place_is_said_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A site that had set ``state_dir`` before it held the outbox: the new outbox starts
    empty under it, and the jobs at the old default place would be forgotten unsaid."""
    monkeypatch.setenv("EDGEFED_STATE_DIR", str(tmp_path / "root"))
    old = tmp_path / "root" / "edged" / "outbox.sqlite"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    raw = demo_config(tmp_path, offload={"enabled": True})
    raw["mqtt"] = {"host": "127.0.0.1", "port": 1, "client_id": "edge-01"}
    cfg = parse_config(raw, env={})
    assert cfg.mqtt is not None
    net = NetLoop(MqttClient(cfg.mqtt))  # never started: nothing is sent here
    offload = wiring.offload(cfg, net, lambda model: 0, lambda outcome: None)
    assert offload is not None
    offload.outbox.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(old) in line and "move it" in line for line in said), said
