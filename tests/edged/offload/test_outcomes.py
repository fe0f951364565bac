"""The results loop: each closed offload job becomes one ``offload_result`` record that
reaches the results file, the sinks, the counters and the dashboard's recent list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edged.offload.core import JobOutcome
from edged.offload.outcomes import ObjectMasks, OffloadResults, offload_record
from edged.results import JsonlSink
from edgefed.lifecycle import Status
from edgefed.wire import OffloadResult

KEYS = {"type", "job_id", "camera", "frame", "model", "status", "served_by", "result"}
SERVER_RESULTS = [{"type": "detection", "label": "person", "score": 0.93, "box": [1, 2, 3, 4]}]
LOCAL_RESULT = [{"type": "detection", "label": "person", "score": 0.41, "box": [1, 2, 3, 4]}]


def answered(job_id: str = "job-0000001") -> JobOutcome:
    result = OffloadResult(
        job_id=job_id,
        device_id="edge-01",
        model="person",
        results=SERVER_RESULTS,
        served_by="serverd/triton-0",
        completed=1_700_000_000_000,
    )
    meta = {"camera": "cam1", "frame": 42}
    return JobOutcome(job_id, Status.EXIT, result, LOCAL_RESULT, "low confidence", "person", meta)


def expired() -> JobOutcome:
    meta = {"camera": "cam1", "frame": 43}
    return JobOutcome("job-0000002", Status.EXPIRED, None, None, "deadline", "echo", meta)


def test_an_answered_job_is_a_record_with_the_servers_result() -> None:
    record = offload_record(answered())
    assert set(record) == KEYS
    assert record == {
        "type": "offload_result",
        "job_id": "job-0000001",
        "camera": "cam1",
        "frame": 42,
        "model": "person",
        "status": "Exit",
        "served_by": "serverd/triton-0",
        "result": SERVER_RESULTS,
    }


def test_a_job_without_an_answer_says_so() -> None:
    record = offload_record(expired())
    assert set(record) == KEYS
    assert (record["status"], record["served_by"], record["result"]) == ("Expired", None, None)


def test_records_reach_every_sink_even_when_one_fails(tmp_path: Path) -> None:
    jsonl = JsonlSink(tmp_path / "results.jsonl")
    seen: list[dict[str, Any]] = []

    def broken(record: dict[str, Any]) -> None:
        raise OSError("EventBus down")

    results = OffloadResults([broken, jsonl.write, seen.append])
    results(answered())
    results(expired())
    jsonl.close()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["job_id"] for r in lines] == ["job-0000001", "job-0000002"]
    assert lines == seen
    status = results.status()
    assert status["counts"] == {"Exit": 1, "Expired": 1}
    assert status["sink_errors"] == 2
    newest, oldest = status["recent"]
    assert newest["job_id"] == "job-0000002"
    assert oldest["result"] == SERVER_RESULTS and oldest["local_result"] == LOCAL_RESULT


def test_the_recent_list_is_bounded() -> None:
    results = OffloadResults(recent=3)
    for i in range(10):
        results(answered(f"job-{i:07d}"))
    status = results.status()
    assert [r["job_id"] for r in status["recent"]] == ["job-0000009", "job-0000008", "job-0000007"]
    assert status["counts"] == {"Exit": 10}


def test_an_outcome_told_after_the_results_file_closed_is_not_an_error(tmp_path: Path) -> None:
    jsonl = JsonlSink(tmp_path / "results.jsonl")
    results = OffloadResults([jsonl.write])
    jsonl.close()
    results(answered())
    assert results.status()["sink_errors"] == 0


LAWN = [(0.0, 0.58), (0.31, 0.58), (0.31, 1.0), (0.0, 1.0)]  # vtest.avi's lower left


def scanned(model: str = "person", **meta: Any) -> JobOutcome:
    """The server's answer to a 768x576 frame: a walker, and a jacket on the lawn."""
    walker = {"type": "detection", "label": "person", "score": 0.93, "box": [500, 250, 540, 350]}
    jacket = {"type": "detection", "label": "person", "score": 0.78, "box": [60, 480, 160, 530]}
    odd = [
        {"type": "detection", "label": "person", "score": 0.5, "box": [1, 2, "x", 4]},
        {"type": "classification", "top": [["lawn", 0.9]], "box": [0, 400, 200, 576]},
    ]
    result = OffloadResult(
        job_id="job-0000003",
        device_id="edge-01",
        model=model,
        results=[walker, jacket, *odd],
        served_by="serverd/triton-0",
        completed=1_700_000_000_000,
    )
    meta = {"camera": "cam1", "frame": 7, "width": 768, "height": 576} | meta
    return JobOutcome("job-0000003", Status.EXIT, result, None, "hard example", model, meta)


def test_the_cameras_object_masks_hold_for_the_servers_answers_too() -> None:
    masks = ObjectMasks("person", {"cam1": [LAWN], "cam2": []})
    kept = masks(scanned())
    assert kept.result is not None
    boxes = [r["box"] for r in kept.result.results]
    assert [60, 480, 160, 530] not in boxes, "the jacket's feet stand in the mask"
    assert [500, 250, 540, 350] in boxes and len(boxes) == 3, "the rest is kept as sent"
    record = offload_record(kept)
    assert record["result"] == kept.result.results and record["masked"] == 1
    assert "masked" not in offload_record(scanned()), "said only when something was dropped"
    untouched = [
        scanned(model="scene"),  # another model: the masks are the planned detector's
        scanned(camera="cam2"),  # a camera without masks
        scanned(width=None),  # queued before jobs carried their frame's size
    ]
    for outcome in untouched:
        assert masks(outcome) is outcome
    assert ObjectMasks(None, {"cam1": [LAWN]})(scanned()).result == scanned().result
    # the same foot point in shares: a frame sent at half the size loses the same jacket
    small = scanned(width=384, height=288)
    assert small.result is not None
    small.result.results[1]["box"] = [30, 240, 80, 265]
    half = masks(small).result
    assert half is not None and [30, 240, 80, 265] not in [r["box"] for r in half.results]
