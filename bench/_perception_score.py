"""How ``python -m bench perception`` scores what the pipeline reports against its
references: the oracle's people found (:func:`score`), their reference identities
(:func:`reference_ids`), the misses by cause (:func:`miss_causes`) and after a find
(:func:`missed_after_found`), the recall over persistent identities
(:func:`persistent_recall`), and a second exhaustive scan scored like the pipeline
(:func:`shifted_oracle`).

``reported`` maps each motion frame's index to what the pipeline reported on it: its
detections, every box it reported (detections and live tracks), and their track ids.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from edged.regionplan import covered
from edged.tracking import iou
from edgefed.models.types import Box

MISS_SCALE_PX = 60.0  # below this height in the detector's input it finds few people
FOUND_IOU = 0.3  # a reported box this close to an oracle box found that person
PERSISTENT_FRAMES = 3  # reference identities this long count in recall_vs_persistent_oracle

# a motion frame's index -> its detections, every box reported, their track ids
Reported = dict[int, tuple[list[Box], list[Box], list[int | None]]]


def overlaps(box: Sequence[float], others: Sequence[Sequence[float]]) -> bool:
    """Whether ``box`` overlaps any of ``others`` at IoU >= ``FOUND_IOU``."""
    a: Box = (box[0], box[1], box[2], box[3])
    return any(iou(a, (b[0], b[1], b[2], b[3])) >= FOUND_IOU for b in others)


def recall(oracle: list[list[list[float]]], boxes: dict[int, list[Box]]) -> float | None:
    """The share of the oracle's people that ``boxes`` (per motion frame) find."""
    people = sum(len(f) for f in oracle)
    found = sum(overlaps(o, boxes.get(k, [])) for k, f in enumerate(oracle) for o in f)
    return round(found / people, 4) if people else None


def shifted_oracle(
    oracle: list[list[list[float]]],
    second: list[list[list[float]]],
    rids: list[list[int]],
    reported: Reported,
) -> dict[str, Any]:
    """How a second exhaustive scan (``second``: the oracle's grids moved by half a
    stride) agrees with the oracle: its people found as the pipeline's are
    (``recall_vs_oracle``, ``recall_vs_persistent_oracle``), the share of its boxes on an
    oracle person (``precision_vs_oracle``), and the pipeline's recall against it
    (``pipeline_recall``). The first says how far the detector's answer depends on where
    its looks lie, the scale against which ``recall_vs_oracle`` is read."""
    as_reported: Reported = {
        k: ([], [(b[0], b[1], b[2], b[3]) for b in f], []) for k, f in enumerate(second)
    }
    people = sum(len(f) for f in oracle)
    found = sum(overlaps(o, as_reported[k][1]) for k, f in enumerate(oracle) for o in f)
    boxes = sum(len(f) for f in second)
    on_oracle = sum(overlaps(b, oracle[k]) for k, f in enumerate(second) for b in f)
    by_pipeline = sum(
        overlaps(b, reported.get(k, ([], [], []))[1]) for k, f in enumerate(second) for b in f
    )
    persistent = persistent_recall(oracle, rids, as_reported)
    return {
        "recall_vs_oracle": round(found / people, 4) if people else None,
        "recall_vs_persistent_oracle": persistent["recall_vs_persistent_oracle"],
        "precision_vs_oracle": round(on_oracle / boxes, 4) if boxes else None,
        "pipeline_recall": round(by_pipeline / boxes, 4) if boxes else None,
    }


def reference_ids(
    oracle: list[list[list[float]]],
    segs: list[tuple[int, int]],
    link_iou: float = 0.5,
    lookback: int = 1,
) -> list[list[int]]:
    """Reference identities: each frame's oracle boxes linked to the best-overlapping box
    (IoU >= ``link_iou``) of the ``lookback`` frames before, within a segment, numbered
    from 1 (never reused)."""
    frame_seg = [s for s, (_, length) in enumerate(segs) for _ in range(length)]
    ids = itertools.count(1)
    out: list[list[int]] = []
    recent: deque[list[tuple[Box, int]]] = deque(maxlen=lookback)
    for k, frame in enumerate(oracle):
        if k == 0 or frame_seg[k] != frame_seg[k - 1]:
            recent.clear()
        before = [p for f in reversed(recent) for p in f]  # newest first: ties go to it
        now: list[tuple[Box, int]] = []
        for b in frame:
            o: Box = (b[0], b[1], b[2], b[3])
            best = max(before, key=lambda p: iou(p[0], o), default=None)
            now.append(
                (o, best[1] if best is not None and iou(best[0], o) >= link_iou else next(ids))
            )
        out.append([rid for _, rid in now])
        recent.append(now)
    return out


def missed_after_found(
    oracle: list[list[list[float]]],
    rids: list[list[int]],
    reported: Reported,
) -> int:
    """The misses of oracle people whose reference identity was found on an earlier frame:
    what a tracker that never lost anyone once found would add to ``found_people``."""
    found: set[int] = set()
    misses = 0
    for k, (frame, ids) in enumerate(zip(oracle, rids, strict=True)):
        boxes = reported.get(k, ([], [], []))[1]
        for b, rid in zip(frame, ids, strict=True):
            if overlaps((b[0], b[1], b[2], b[3]), boxes):
                found.add(rid)
            else:
                misses += rid in found
    return misses


def persistent_recall(
    oracle: list[list[list[float]]],
    rids: list[list[int]],
    reported: Reported,
) -> dict[str, Any]:
    """Recall over the oracle people whose reference identity lasts at least
    ``PERSISTENT_FRAMES`` frames: the oracle is the union of ~100 looks a frame, so it also
    keeps the detector's one-off hits (a box on a sign, a person seen by one lucky crop),
    which no tracker can carry; this figure leaves them out. The contract figure stays
    ``recall_vs_oracle``."""
    frames_of: dict[int, int] = {}
    for frame in rids:
        for rid in frame:
            frames_of[rid] = frames_of.get(rid, 0) + 1
    people = found = 0
    for k, (frame, ids) in enumerate(zip(oracle, rids, strict=True)):
        boxes = reported.get(k, ([], [], []))[1]
        for b, rid in zip(frame, ids, strict=True):
            if frames_of[rid] >= PERSISTENT_FRAMES:
                people += 1
                found += overlaps(b, boxes)
    return {
        "oracle_one_frame_identities": sum(n == 1 for n in frames_of.values()),
        "persistent_oracle_people": people,
        "recall_vs_persistent_oracle": round(found / people, 4) if people else None,
    }


def miss_causes(
    refs: dict[str, Any],
    reported: Reported,
    looked: dict[int, list[Box]],
    segs: list[tuple[int, int]],
    rids: list[list[int]],
    input_size: int,
) -> dict[str, Any]:
    """Why each oracle person the pipeline missed was missed (``miss_causes``):

    * ``not_sent``: the gate did not pass the frame;
    * ``region_missed``: a region held the person at >= ``MISS_SCALE_PX`` tall in the
      detector's input and the detector did not find them (nor a track carry them);
    * ``small_in_region``: regions held the person, but only smaller than that;
    * ``lost``: no region held them this frame, though they had been found before in
      this segment (the tracker dropped or never kept them);
    * ``not_yet``: no region held them and they had not been found yet in this segment
      (never scanned yet); ``not_yet_in_first_5`` of these in a segment's first 5 frames.
    """
    causes = dict.fromkeys(("not_sent", "region_missed", "small_in_region", "lost", "not_yet"), 0)
    early = 0
    starts = {sum(n for _, n in segs[:i]) for i in range(len(segs))}
    found_ids: set[int] = set()
    first = 0
    for k, (frame, frame_ids) in enumerate(zip(refs["oracle"], rids, strict=True)):
        if k in starts:
            found_ids.clear()
            first = k
        boxes = reported.get(k, ([], [], []))[1]
        for b, rid in zip(frame, frame_ids, strict=True):
            o: Box = (b[0], b[1], b[2], b[3])
            if overlaps(o, boxes):
                found_ids.add(rid)
                continue
            holding = [r for r in looked.get(k, []) if covered(o, [r]) >= 0.9]
            side = [max(r[2] - r[0], r[3] - r[1]) for r in holding]
            px = max(((o[3] - o[1]) * input_size / s for s in side), default=0.0)
            if k not in looked:
                cause = "not_sent"
            elif holding:
                cause = "region_missed" if px >= MISS_SCALE_PX else "small_in_region"
            elif rid in found_ids:
                cause = "lost"
            else:
                cause = "not_yet"
                early += k - first < 5
            causes[cause] += 1
    return {"miss_causes": causes | {"not_yet_in_first_5": early}}


def score(
    refs: dict[str, Any],
    reported: Reported,
    runs: list[int],
    model_ms: list[float],
    motion_frames: int,
    rids: list[list[int]],
) -> dict[str, Any]:
    oracle_people = found = found_det = hog_people = hog_found = hog_oracle = 0
    switches = reported_boxes = reported_true = 0
    last_track: dict[int, int] = {}
    for k in range(motion_frames):
        dets, boxes, ids = reported.get(k, ([], [], []))
        oracle = [tuple(b) for b in refs["oracle"][k]]
        oracle_people += len(oracle)
        found += sum(overlaps(o, boxes) for o in oracle)
        found_det += sum(overlaps(o, dets) for o in oracle)
        reported_boxes += len(boxes)
        reported_true += sum(overlaps(b, oracle) for b in boxes)
        hogs = [tuple(b) for b in refs["hog"][k]]
        hog_people += len(hogs)
        hog_found += sum(covered(h, boxes) >= 0.5 for h in hogs)  # type: ignore[arg-type]
        hog_oracle += sum(covered(h, oracle) >= 0.5 for h in hogs)  # type: ignore[arg-type]
        for o, rid in zip(oracle, rids[k], strict=True):
            pairs = [(iou(o, b), i) for b, i in zip(boxes, ids, strict=True) if i is not None]  # type: ignore[arg-type]
            hit = max(pairs, default=(0.0, None))
            if hit[0] >= FOUND_IOU and hit[1] is not None:
                if rid in last_track and last_track[rid] != hit[1]:
                    switches += 1
                last_track[rid] = hit[1]
    oracle_ms = float(np.mean(refs["oracle_ms"])) if refs["oracle_ms"] else 0.0
    pipe_ms = float(np.sum(model_ms)) / motion_frames if motion_frames else 0.0
    return {
        "recall_vs_oracle": round(found / oracle_people, 4) if oracle_people else None,
        "detection_recall_vs_oracle": round(found_det / oracle_people, 4)
        if oracle_people
        else None,
        "precision_vs_oracle": round(reported_true / reported_boxes, 4) if reported_boxes else None,
        "reported_per_frame": round(reported_boxes / motion_frames, 2) if motion_frames else 0.0,
        "oracle_people": oracle_people,
        "found_people": found,
        "model_ms_per_frame": round(pipe_ms, 2),
        "oracle_model_ms_per_frame": round(oracle_ms, 2),
        "cost_ratio": round(pipe_ms / oracle_ms, 4) if oracle_ms else None,
        "detector_runs_per_frame": round(float(np.mean(runs)), 3) if runs else 0.0,
        "frames_sent": len(runs),
        "motion_frames": motion_frames,
        "hog_people": hog_people,
        "hog_found": hog_found,
        "hog_found_by_oracle": hog_oracle,
        "id_switches": switches,
        "reference_identities": max((max(r, default=0) for r in rids), default=0),
    } | persistent_recall(refs["oracle"][:motion_frames], rids[:motion_frames], reported)
