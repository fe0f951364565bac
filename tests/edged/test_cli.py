"""The edged command line as an operator uses it: real process, real signals."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.app import LoadedModels
from edgefed.errors import (
    EXIT_CONFIG,
    EXIT_IMAGE,
    EXIT_OK,
    EXIT_RUNTIME,
    DriverError,
    ImageError,
)
from tests.support.configs import demo_config, write_config
from tests.support.paths import IMAGES_DIR, VTEST

EDGED = [sys.executable, "-m", "edged"]


def edged(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGED, *args], capture_output=True, text=True, timeout=timeout)


def test_check_config_prints_resolved_config(tmp_path: Path) -> None:
    proc = edged("check-config", str(write_config(tmp_path, demo_config(tmp_path))))
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "threshold: 25" in proc.stdout and "name: person" in proc.stdout


def test_check_config_lists_each_error_with_its_path(tmp_path: Path) -> None:
    raw = demo_config(tmp_path, motion={"threshold": 0, "downscale_width": -5})
    proc = edged("check-config", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_CONFIG
    assert "motion.threshold:" in proc.stderr and "motion.downscale_width:" in proc.stderr


def test_check_config_finds_the_tls_files_a_start_would_stop_at(tmp_path: Path) -> None:
    """The config is valid as YAML and as settings, but the client key it names is not
    there: ``run`` stops with exit 2, so ``check-config`` says so too (it said OK)."""
    tls = {"ca": str(VTEST), "cert": str(VTEST), "key": str(tmp_path / "edge.key")}
    raw = demo_config(tmp_path) | {"mqtt": {"client_id": "edge-1", "tls": tls}}
    proc = edged("check-config", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_CONFIG
    assert f"mqtt tls: key {tmp_path / 'edge.key'} is not a file" in proc.stderr


def running(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """``edged run`` on the demo's config, once its first results are written."""
    cfg = write_config(tmp_path, demo_config(tmp_path))
    proc = subprocess.Popen(
        [*EDGED, "run", "-c", str(cfg), "--compact"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (results.exists() and results.stat().st_size):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    return proc, results


def test_run_stops_cleanly_on_sigterm_within_five_seconds(tmp_path: Path) -> None:
    proc, _ = running(tmp_path)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5.0, "edged took more than 5 s to stop"
    assert proc.returncode == EXIT_OK, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames_completed"] >= 1
    assert "received SIGTERM" in err


def test_sighup_is_logged_and_edged_runs_on(tmp_path: Path) -> None:
    """SIGHUP's default action killed edged, and systemd takes a death by SIGHUP for a
    clean stop: a log-rotation script left the device without edged. It is now logged
    and edged runs on, and stops cleanly on SIGTERM as before (a second stop signal is
    ``tests/edgefed/test_signals.py``'s)."""
    proc, results = running(tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        size = results.stat().st_size
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and results.stat().st_size == size:
            time.sleep(0.2)
        assert proc.poll() is None and results.stat().st_size > size  # still at work
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_OK, err
    assert "received SIGHUP: edged does not reload its configuration" in err


def test_missing_video_is_one_clear_line(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["cameras"][0]["source"] = str(tmp_path / "nope.avi")
    proc = edged("run", "-c", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_RUNTIME
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edged: camera error:") and "nope.avi" in last


def test_corrupt_video_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 100)
    raw = demo_config(tmp_path)
    raw["cameras"][0]["source"] = str(bad)
    proc = edged("run", "-c", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_RUNTIME
    assert "corrupt.avi" in proc.stderr.strip().splitlines()[-1]


def test_a_video_with_corrupt_chunks_does_not_flood_stderr(tmp_path: Path) -> None:
    """On main FFmpeg wrote a line per damaged macroblock row (28 MB in 50 s)."""
    data = bytearray(VTEST.read_bytes())
    rng = random.Random(1)
    for _ in range(300):
        start = rng.randrange(100_000, len(data) - 1000)
        data[start : start + 64] = rng.randbytes(64)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    raw = demo_config(tmp_path, output={"max_results": 60})
    raw["cameras"][0]["source"] = str(damaged)
    raw["cameras"][0]["pace"] = "fast"
    proc = edged("run", "-c", str(write_config(tmp_path, raw)), "--compact", timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert "msmpeg4 @" not in proc.stderr and len(proc.stderr) < 20_000, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["frames_completed"] >= 60


def last_line_of_a_failed_start(raw: dict[str, object], tmp_path: Path) -> str:
    """Run edged on ``raw``; it must exit 5 with no traceback. Its last stderr line."""
    proc = edged("run", "-c", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_RUNTIME, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


def test_a_results_file_edged_cannot_open_is_one_clear_line(tmp_path: Path) -> None:
    """On main a results file edged may not write ended in a traceback and exit 1
    (restarted every 5 s for ever). A directory in its place fails the open for root too."""
    results = tmp_path / "results.jsonl"
    results.mkdir()
    last = last_line_of_a_failed_start(demo_config(tmp_path), tmp_path)
    assert last == f"edged: cannot start: results file {results}: Is a directory"


# A state_dir edged may not search (its mode, as user nobody) fails the stat of every path
# in it; root may search them all, but a name longer than NAME_MAX fails that stat too.
LOOKS_INTO_STATE = {
    "the outbox": (
        {"mqtt": {"host": "127.0.0.1", "port": 1, "client_id": "t"}, "offload": {"enabled": True}},
        "edged: outbox {state}/outbox.sqlite: File name too long",
    ),
    "the runtime settings": ({}, "edged: cannot start: state_dir {state}: File name too long"),
}


@pytest.mark.parametrize("first_look", LOOKS_INTO_STATE)
def test_a_state_dir_edged_cannot_look_into_is_one_clear_line(
    tmp_path: Path, first_look: str
) -> None:
    """On main the outbox's look for an older outbox, and the runtime settings' look
    for saved values, ended in a traceback and exit 1."""
    sections, expected = LOOKS_INTO_STATE[first_look]
    state = tmp_path / ("s" * 300)
    raw = demo_config(tmp_path, **sections)
    raw["state_dir"] = str(state)
    assert last_line_of_a_failed_start(raw, tmp_path) == expected.format(state=state)


def test_unknown_driver_is_a_config_error(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["models"][0]["driver"] = "warp-drive"
    raw["drivers"].append({"type": "warp-drive"})
    proc = edged("run", "-c", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_CONFIG
    assert "unknown driver 'warp-drive'" in proc.stderr


def test_tampered_model_is_refused_and_the_other_models_still_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(IMAGES_DIR, images)
    model = images / "face_detector" / "face_detection_short_range.tflite"
    if not model.exists():
        model = next(p for p in (images / "face_detector").iterdir() if p.suffix == ".tflite")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    raw = demo_config(tmp_path, output={"max_results": 5})
    raw["images"]["dir"] = str(images)
    raw["cameras"][0]["pace"] = "fast"
    proc = edged("run", "-c", str(write_config(tmp_path, raw)), "--compact", timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "sha256 mismatch" in summary["model_failures"]["face"]
    assert summary["frames_completed"] >= 5 and "face" not in summary["models"]


def test_no_loadable_model_because_images_failed_exits_with_the_image_code(
    tmp_path: Path,
) -> None:
    """On main this exited 4 (driver error) although no driver was at fault."""
    raw = demo_config(tmp_path)
    raw["models"] = [{"name": "ghost", "image": str(tmp_path / "no-such-image")}]
    proc = edged("run", "-c", str(write_config(tmp_path, raw)))
    assert proc.returncode == EXIT_IMAGE
    assert "no model could be loaded" in proc.stderr and "ghost" in proc.stderr


def test_the_fatal_error_is_a_driver_error_unless_every_image_failed() -> None:
    images_only = LoadedModels(failures={"a": "bad image"}, image_failures={"a"})
    assert isinstance(images_only.fatal(), ImageError)
    mixed = LoadedModels(failures={"a": "bad image", "b": "no NPU"}, image_failures={"a"})
    assert isinstance(mixed.fatal(), DriverError) and "no NPU" in str(mixed.fatal())


def test_profile_measures_each_image_on_each_driver_that_loads_it(tmp_path: Path) -> None:
    trust = str(IMAGES_DIR / "keys" / "dev-signing.pub")
    images = [str(IMAGES_DIR / "face_detector"), str(IMAGES_DIR / "efficientnet_lite0")]
    proc = edged("profile", *images, "--trust", trust, "--iterations", "5", "--json", timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    rows = {(r["image"], r["driver"]): r for r in json.loads(proc.stdout)}
    assert set(rows) == {
        ("face_detector", "litert"),
        ("efficientnet_lite0", "onnxruntime"),
        ("efficientnet_lite0", "openvino"),
    }
    for row in rows.values():
        assert row["ok"], row
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["throughput_per_s"] > 0 and row["peak_rss_mb"] > 0
