"""Pre-roll: the frames the three-frame rule decides late reach the models too."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edged.motion import MotionConfig, ThreeFrameGate
from edged.preroll import PreRoll
from tests.edged.test_motion import moving_clip, static_clip
from tests.support.paths import VTEST


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    cap = cv2.VideoCapture(str(VTEST))
    ok, frame = cap.read()
    cap.release()
    assert ok, f"cannot read {VTEST}"
    return frame


def clip(background: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """10 static frames, 8 frames of an object moving in, 12 static with a flash."""
    frames = [(f, "static") for f in static_clip(background, 10, seed=1)]
    frames += [
        (f, "motion") for f, _ in moving_clip(background, 8, seed=2, start=(300, 200), step=(6, 2))
    ]
    held = frames[-1][0]
    frames += [(f, "static") for f in static_clip(held, 12, seed=3, flicker_at=6, offset=35)]
    return frames


def sent(background: np.ndarray, pre_roll: int) -> list[int]:
    gate = ThreeFrameGate(MotionConfig(pre_roll=pre_roll))
    ring: PreRoll[int] = PreRoll(pre_roll)
    out: list[int] = []
    for i, (frame, _) in enumerate(clip(background)):
        out += [k for k, _ in ring.feed(i, gate.update(frame))]
    return out


def test_the_first_frame_of_a_motion_is_sent_with_the_pre_roll(background: np.ndarray) -> None:
    kinds = [k for _, k in clip(background)]
    motion = [i for i, k in enumerate(kinds) if k == "motion"]
    without = sent(background, 0)
    with_ring = sent(background, 2)
    assert motion[0] not in without  # the three-frame rule cannot decide the first frame
    assert motion[0] in with_ring
    assert set(motion) <= set(with_ring)
    assert with_ring == sorted(with_ring)  # in capture order, each once
    assert len(set(with_ring)) == len(with_ring)
    # no static or flicker frame passes, with or without the ring
    assert all(kinds[i] == "motion" for i in with_ring)


def test_a_frame_without_change_empties_the_ring(background: np.ndarray) -> None:
    gate = ThreeFrameGate(MotionConfig())
    frames = list(static_clip(background, 6, seed=4))
    results = [gate.update(f) for f in frames]
    ring: PreRoll[int] = PreRoll(2)
    fresh = results[-1].__class__(**{**results[-1].__dict__, "fresh": True})
    assert ring.feed(0, fresh) == []
    assert ring.feed(1, results[-1]) == []  # static: the undecided frame is dropped
    motion = results[-1].__class__(**{**results[-1].__dict__, "motion": True})
    assert [k for k, _ in ring.feed(2, motion)] == [2]


def test_every_frame_is_sent_or_discarded_once_and_the_discarded_never_go_down(
    background: np.ndarray,
) -> None:
    """The pipeline's count of static frames comes from ``discarded``: it took the ring's
    frames back out when motion started, so Prometheus saw a counter reset and the
    dashboard's gate pass share dropped to zero at each motion start."""
    gate = ThreeFrameGate(MotionConfig(pre_roll=2))
    ring: PreRoll[int] = PreRoll(2)
    sent: list[int] = []
    discarded = 0
    for i, (frame, _) in enumerate(clip(background)):
        sent += [k for k, _ in ring.feed(i, gate.update(frame))]
        assert ring.discarded >= discarded
        discarded = ring.discarded
        assert len(sent) + ring.discarded + ring.pending == i + 1
    assert 0 < len(sent) < len(clip(background)) and ring.discarded > 0
