"""The pipeline on the real video with the real demo models."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.app import EdgedApp
from edged.config import parse_config
from edged.perception import CameraPerception
from edgefed.models.types import Box, Result
from edgefed.testing.wait import wait_until
from tests.support.configs import demo_config
from tests.support.mjpeg import MjpegCamera
from tests.support.paths import VTEST


def run_app(tmp_path: Path, app: EdgedApp) -> list[dict[str, Any]]:
    app.run(threading.Event())
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # frames still in flight when the run stops are written with the models that dropped them
    return [r for r in records if not r["dropped"]]


def fast_config(tmp_path: Path, frames: int, **sections: Any) -> dict[str, Any]:
    raw = demo_config(tmp_path, output={"max_results": frames}, pipeline={"lossless": True})
    raw["cameras"][0] |= {"pace": "fast", "loop": False}
    raw["models"][3]["every_n"] = 1
    raw.update(sections)
    return raw


def test_each_record_carries_the_people_tracked_between_detections(tmp_path: Path) -> None:
    raw = fast_config(tmp_path, 60)
    raw["models"] = raw["models"][:1]  # the planned, tracked person detector
    records = run_app(tmp_path, EdgedApp(parse_config(raw, env={})))
    assert len(records) >= 60
    carried = 0
    for r in records:
        detected = {d["track_id"]: d["box"] for d in r["models"]["person"] if d.get("track_id")}
        assert set(detected) <= {o["track_id"] for o in r["objects"]}
        for o in r["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert "trail" not in o and x1 < x2 and y1 < y2
            if o["track_id"] in detected:  # detected on this frame: the detection's box
                assert o["since_detected_s"] == 0.0
                assert o["box"] == pytest.approx(detected[o["track_id"]], abs=0.11)
            else:
                assert o["since_detected_s"] > 0
                carried += o["confirmed"]
    # vtest's walkers are not all detected on every frame: the tracker carries them
    assert carried >= 10


def test_a_frame_the_person_model_dropped_still_carries_the_tracked_people(
    tmp_path: Path,
) -> None:
    raw = fast_config(tmp_path, 80, pipeline={"lossless": False})  # the queue drops the oldest
    raw["models"] = [raw["models"][0] | {"queue_size": 1}]  # the planned person detector
    app = EdgedApp(parse_config(raw, env={}))
    app.run(threading.Event())
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    dropped = [r for r in records if r["dropped"] == ["person"] and r["objects"]]
    assert dropped, "capture at full speed outruns 5 detector runs a frame: frames are dropped"
    assert all(o["since_detected_s"] > 0 for r in dropped for o in r["objects"])


def test_four_models_run_concurrently_on_the_same_frames(tmp_path: Path) -> None:
    app = EdgedApp(parse_config(fast_config(tmp_path, 24), env={}))
    spans: list[dict[str, tuple[float, float]]] = []
    app.pipeline.add_sink(lambda job: spans.append(dict(job.spans)))
    records = run_app(tmp_path, app)
    assert len(records) >= 24
    with_all = [r for r in records if {"person", "face", "scene"} <= set(r["models"])]
    assert len(with_all) >= 20, "every gated frame goes to every frame model"
    # people walk through vtest: the detector finds them and the cascade gives landmarks
    assert sum(len(r["models"]["person"]) for r in records) >= 20
    poses = [p for r in records for p in r["models"].get("pose", [])]
    assert poses and all(len(p["points"]) == 33 for p in poses)
    assert all(r["models"]["scene"][0]["top"] for r in with_all)

    # concurrency: on some frame, two different models were running at the same moment
    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    # (any two of a frame's models: once, in a parallel test run on two cores, the person
    # detector's runs met the face and scene models' on none of the 24 frames)
    overlapping = [
        s for s in spans if any(overlap(a, b) for a, b in itertools.combinations(s.values(), 2))
    ]
    assert overlapping, "models ran one after another, never together"
    status = app.final_summary()
    assert status["model_failures"] == {}
    assert all(m["errors"] == 0 for m in status["models"].values())


class Flaky:
    """Wraps a real runner and raises on every other call (an NPU that faults)."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.calls = 0

    def infer(self, frame: np.ndarray, regions: list[Box | None]) -> list[Result]:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("NPU fault injected by the test")
        results: list[Result] = self._runner.infer(frame, regions)
        return results

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = self._runner.describe()
        return described

    def close(self) -> None:
        self._runner.close()


def test_a_failing_model_is_contained_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = EdgedApp(parse_config(fast_config(tmp_path, 16), env={}))
    flaky = Flaky(app.pipeline.workers["face"].runner)
    app.pipeline.workers["face"].runner = flaky
    with caplog.at_level(logging.WARNING, logger="edged.inference"):
        records = run_app(tmp_path, app)
    assert len(records) >= 16
    failed = [r for r in records if "face" in r["errors"]]
    assert failed and all("NPU fault injected" in r["errors"]["face"] for r in failed)
    assert all("person" in r["models"] and "scene" in r["models"] for r in records)
    stats = app.pipeline.status()["models"]
    assert stats["face"]["errors"] >= len(failed)  # plus frames cut off by the stop
    assert stats["person"]["errors"] == 0
    # one outage in the log, not a line a failure (a dead NPU: 12 lines a second)
    said = [r for r in caplog.records if "model face" in r.getMessage()]
    assert len(failed) >= 4 and len(said) == 1


def test_static_frames_never_reach_a_model(tmp_path: Path) -> None:
    still = tmp_path / "still.avi"
    import cv2

    frame = cv2.imread("/usr/share/doc/opencv-doc/examples/data/basketball1.png")
    writer = cv2.VideoWriter(str(still), cv2.VideoWriter.fourcc(*"MJPG"), 10, frame.shape[1::-1])
    for _ in range(30):
        writer.write(frame)
    writer.release()
    raw = fast_config(tmp_path, 1000)
    raw["cameras"][0]["source"] = str(still)
    app = EdgedApp(parse_config(raw, env={}))
    app.run(threading.Event())
    cam = app.pipeline.status()["cameras"][0]
    assert cam["skipped_static"] >= 25
    assert cam["gated"] == 0
    assert all(m["inferences"] == 0 for m in app.pipeline.status()["models"].values())


def state(app: EdgedApp) -> str:
    return str(app.pipeline.status()["cameras"][0]["state"])


def test_a_camera_back_at_another_size_keeps_finding_people(tmp_path: Path) -> None:
    """An IP camera whose stream profile is changed goes away and comes back at 512x384:
    the planner and tracker of its 768x576 frames start afresh (the person model failed
    on every frame until edged restarted, its planned regions outside the new frame)."""
    cap = cv2.VideoCapture(str(VTEST))
    frames = [cap.read()[1] for _ in range(40)]
    cap.release()
    big = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
    small = [
        cv2.imencode(".jpg", cv2.resize(f, (512, 384), interpolation=cv2.INTER_AREA))[1].tobytes()
        for f in frames
    ]
    camera = MjpegCamera(big)
    raw = demo_config(tmp_path, output={"max_results": 100_000})
    raw["cameras"][0] = {"name": "ip", "source": camera.url, "reconnect_initial_s": 0.2}
    raw["models"] = raw["models"][:1]  # the planned, tracked person detector
    app = EdgedApp(parse_config(raw, env={}))
    stop = threading.Event()
    runner = threading.Thread(target=app.run, args=(stop,))
    runner.start()
    results = tmp_path / "results.jsonl"

    def rows() -> list[dict[str, Any]]:
        text = results.read_text() if results.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def people(first_frame: int) -> list[dict[str, Any]]:
        return [
            d for r in rows() if r["frame"] >= first_frame for d in r["models"].get("person", [])
        ]

    try:
        wait_until("a tracked person", lambda: any(d.get("track_id") for d in people(0)), 60)
        camera.stop()
        wait_until("the camera lost", lambda: state(app) == "reconnecting", 30)
        # frames are numbered across reconnects: the new stream's come after every old one
        # (whose results may still be written after the camera is back)
        first_new = int(app.pipeline.status()["cameras"][0]["frames"])
        camera = MjpegCamera(small, port=camera.port)
        wait_until("the camera back", lambda: state(app) == "running", 30)
        wait_until(
            "people tracked again",
            lambda: sum(1 for d in people(first_new) if d.get("track_id")) >= 10,
            60,
        )
    finally:
        stop.set()
        runner.join(30)
        camera.stop()
    later = [r for r in rows() if r["frame"] >= first_new]
    assert [r["errors"] for r in later if r["errors"]] == []
    boxes = [d["box"] for d in people(first_new)]
    assert all(b[0] < 512 and b[1] < 384 for b in boxes)
    before_ids = {
        d["track_id"]
        for r in rows()
        if r["frame"] < first_new
        for d in r["models"].get("person", [])
        if d.get("track_id")
    }
    assert {d["track_id"] for d in people(first_new) if d.get("track_id")}.isdisjoint(before_ids)


def test_a_frame_that_fails_is_counted_and_the_camera_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into the gate on frames 5-7 (as a frame it cannot take would
    raise): those frames are counted as failed, logged once, and the frames after them
    reach the models. The dispatcher thread ended at the first one before, and with it
    the camera's analysis, while capture and the daemon ran on."""
    app = EdgedApp(parse_config(fast_config(tmp_path, 24), env={}))
    camera = app.pipeline.cameras[0]
    update, calls = camera.gate.update, [0]

    def faulty(image: np.ndarray) -> Any:
        calls[0] += 1
        if 5 <= calls[0] <= 7:
            raise ValueError("injected fault")
        return update(image)

    camera.gate.update = faulty  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING)
    app.run(threading.Event())
    (status,) = app.pipeline.status()["cameras"]
    assert status["skipped_failed"] == 3 and app.pipeline.completed.total >= 24
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "dispatching a frame failed: injected fault" in errors[0]


def test_a_tracker_fault_loses_no_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fault injected into the tracker on its calls 5-7 (as a bug on a rare layout would
    raise): those frames still complete, with the detector's own boxes, and the log says
    so once. Before, such a frame never completed: no record, no event, not counted."""
    raw = fast_config(tmp_path, 24)
    raw["models"] = raw["models"][:1]  # the planned, tracked person detector
    app = EdgedApp(parse_config(raw, env={}))
    camera = app.pipeline.cameras[0]
    assert app.pipeline.planned_input is not None
    camera.perception = CameraPerception(
        app.config.perception, app.pipeline.planned_input, (576, 768, 3)
    )
    observe, calls = camera.perception.observe, [0]

    def faulty(*args: Any) -> Any:
        calls[0] += 1
        if 5 <= calls[0] <= 7:
            raise ValueError("injected fault")
        return observe(*args)

    camera.perception.observe = faulty  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING)
    app.run(threading.Event())
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    (status,) = app.pipeline.status()["cameras"]
    assert len(records) == app.pipeline.completed.total == status["gated"] >= 24
    untracked = [r for r in records if not r["objects"] and r["models"]["person"]]
    assert len(untracked) == 3
    assert all("track_id" not in d for d in untracked[0]["models"]["person"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "tracking failed: injected fault" in errors[0]


def test_a_full_disk_under_the_results_file_is_one_error_and_loses_no_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/full answers every write with ENOSPC, as a full disk does: the frames still
    complete and reach the other sinks, and the log says so once, not once a frame."""
    raw = fast_config(tmp_path, 24)
    raw["output"]["results"] = "/dev/full"
    app = EdgedApp(parse_config(raw, env={}))
    caplog.set_level(logging.WARNING)
    app.run(threading.Event())
    assert app.pipeline.completed.total >= 24 and len(app.events.page(0, 100)) >= 24
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("result sink JsonlSink failed: [Errno 28] No space left on device")


def test_an_object_mask_in_the_config_keeps_its_area_free_of_people(tmp_path: Path) -> None:
    """In vtest's first frames the detector takes the jacket lying on the lawn (lower left)
    for a person, and edged reports it; a camera's ``object_masks`` over that corner of the
    lawn keeps it out, while the people walking are still reported."""
    clip = tmp_path / "start.avi"
    cap = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(100):
        writer.write(cap.read()[1])
    writer.release()
    cap.release()

    def feet(masks: list[list[list[float]]]) -> list[tuple[float, float]]:
        out = tmp_path / f"masks-{len(masks)}"
        out.mkdir()
        raw = fast_config(out, 1000)
        raw["cameras"][0] |= {"source": str(clip), "object_masks": masks}
        raw["models"] = raw["models"][:1]  # the planned, tracked person detector
        records = run_app(out, EdgedApp(parse_config(raw, env={})))
        people = [d["box"] for r in records for d in r["models"].get("person", [])]
        return [((b[0] + b[2]) / 2 / 768, b[3] / 576) for b in people]

    def in_corner(point: tuple[float, float]) -> bool:
        return point[0] < 0.3 and point[1] > 0.75

    plain = feet([])
    masked = feet([[[0, 0.75], [0.3, 0.75], [0.3, 1], [0, 1]]])
    # how often the jacket is reported depends on where the planner looks, which depends
    # on when the detector's answers come back: at least once (3 or more in runs here)
    jacket = sum(map(in_corner, plain))
    assert jacket >= 1, plain
    assert not any(map(in_corner, masked)) and len(masked) >= 0.5 * (len(plain) - jacket), masked
