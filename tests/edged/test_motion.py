"""The three-frame motion gate on real video frames (vtest.avi) and synthetic motion."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edged.motion import GateResult, MotionConfig, ThreeFrameGate
from edgefed.errors import ConfigError
from tests.support.paths import VTEST

OBJ_W, OBJ_H = 48, 96


@pytest.fixture(scope="module")
def vtest_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VTEST))
    frames = []
    for _ in range(40):
        ok, frame = cap.read()
        assert ok, f"cannot read {VTEST}"
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def background(vtest_frames: list[np.ndarray]) -> np.ndarray:
    return vtest_frames[0]


def noisy(base: np.ndarray, rng: np.random.Generator, sigma: float = 2.5) -> np.ndarray:
    out = rng.standard_normal(base.shape, dtype=np.float32)
    out *= sigma
    out += base
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def static_clip(
    base: np.ndarray,
    n: int,
    seed: int,
    flicker_at: int | None = None,
    gain: float = 1.0,
    offset: float = 0.0,
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = noisy(base, rng)
        if i == flicker_at:
            frame = np.clip(frame.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        yield frame


def moving_clip(
    base: np.ndarray,
    n: int,
    seed: int,
    start: tuple[int, int],
    step: tuple[int, int],
    size: tuple[int, int] = (OBJ_W, OBJ_H),
    contrast: int = 255,
) -> Iterator[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """A textured object moving over a noisy static scene; yields (frame, object box)."""
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth random texture (features ~6 px): plain surfaces moving less than their own
    # size leave no three-frame difference, so a textured object is the fair test object
    blurred = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32), (0, 0), 3)
    texture = np.clip(blurred / blurred.std() * contrast / 5 + contrast / 2, 0, contrast)
    texture = texture.astype(np.uint8)
    for i in range(n):
        frame = noisy(base, rng)
        x, y = start[0] + step[0] * i, start[1] + step[1] * i
        if contrast < 255:
            patch = frame[y : y + h, x : x + w].astype(np.int16) + texture - contrast // 2
            frame[y : y + h, x : x + w] = np.clip(patch, 0, 255).astype(np.uint8)
        else:
            frame[y : y + h, x : x + w] = texture
        yield frame, (x, y, x + w, y + h)


def run(gate: ThreeFrameGate, frames: Iterator[np.ndarray]) -> list[GateResult]:
    return [gate.update(f) for f in frames]


def covered(
    box: tuple[int, int, int, int], boxes: list[tuple[float, float, float, float]]
) -> float:
    """Share of ``box``'s pixels inside the union of ``boxes``."""
    x1, y1, x2, y2 = box
    cover = np.zeros((y2 - y1, x2 - x1), bool)
    for bx1, by1, bx2, by2 in boxes:
        cx1, cy1 = max(int(bx1) - x1, 0), max(int(by1) - y1, 0)
        cx2, cy2 = min(int(np.ceil(bx2)) - x1, x2 - x1), min(int(np.ceil(by2)) - y1, y2 - y1)
        if cx2 > cx1 and cy2 > cy1:
            cover[cy1:cy2, cx1:cx2] = True
    return float(cover.mean())


def test_first_two_frames_prime_the_gate(background: np.ndarray) -> None:
    results = run(ThreeFrameGate(MotionConfig()), static_clip(background, 4, seed=1))
    assert [r.primed for r in results] == [False, False, True, True]
    assert not any(r.motion for r in results[:2])


def test_first_frames_of_motion_are_not_motion_before_priming(background: np.ndarray) -> None:
    clip = moving_clip(background, 5, seed=2, start=(100, 200), step=(12, 0))
    results = run(ThreeFrameGate(MotionConfig()), (f for f, _ in clip))
    assert [r.motion for r in results] == [False, False, True, True, True]


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_sensor_noise_is_not_motion(background: np.ndarray, sigma: float) -> None:
    rng = np.random.default_rng(int(sigma * 10))
    gate = ThreeFrameGate(MotionConfig())
    results = [gate.update(noisy(background, rng, sigma)) for _ in range(20)]
    assert not any(r.motion for r in results)
    assert max(r.changed_pixels for r in results) == 0


@pytest.mark.parametrize(
    ("gain", "offset"), [(1.0, 40.0), (1.0, -45.0), (1.3, 0.0), (0.7, 0.0), (1.15, 20.0)]
)
def test_one_frame_flicker_is_not_motion(
    background: np.ndarray, gain: float, offset: float
) -> None:
    clip = static_clip(background, 12, seed=3, flicker_at=6, gain=gain, offset=offset)
    results = run(ThreeFrameGate(MotionConfig()), clip)
    assert not any(r.motion for r in results)


def test_flicker_is_motion_without_brightness_matching(background: np.ndarray) -> None:
    """The raw three-frame rule sees a flash in the middle frame: matching is what stops it."""
    clip = static_clip(background, 12, seed=3, flicker_at=6, offset=40.0)
    results = run(ThreeFrameGate(MotionConfig(match_brightness=False)), clip)
    assert [i for i, r in enumerate(results) if r.motion] == [7]


def test_sustained_motion_triggers_and_boxes_cover_the_object(background: np.ndarray) -> None:
    clip = list(moving_clip(background, 12, seed=4, start=(80, 150), step=(10, 4)))
    results = run(ThreeFrameGate(MotionConfig()), (f for f, _ in clip))
    for i, result in enumerate(results[2:], start=2):
        assert result.motion, f"frame {i}: no motion"
        # the boxes span the object in the middle frame B and in the newest frame C
        assert covered(clip[i - 1][1], result.boxes) >= 0.95, f"frame {i}: {result.boxes}"
        assert covered(clip[i][1], result.boxes) >= 0.95, f"frame {i}: {result.boxes}"
        x1, y1, x2, y2 = result.boxes[0]
        assert (x2 - x1) * (y2 - y1) < 3 * OBJ_W * OBJ_H, "box much larger than the object"


def test_real_pedestrians_are_motion_and_boxed(vtest_frames: list[np.ndarray]) -> None:
    results = run(ThreeFrameGate(MotionConfig()), iter(vtest_frames))
    primed = results[2:]
    assert sum(r.motion for r in primed) >= 0.9 * len(primed)
    for r in primed:
        if r.motion:
            assert r.boxes
            for x1, y1, x2, y2 in r.boxes:
                assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576


def test_counts_are_full_frame_pixels(vtest_frames: list[np.ndarray]) -> None:
    results = run(ThreeFrameGate(MotionConfig()), iter(vtest_frames[:6]))
    r = results[-1]
    assert r.mask.shape == (288, 384) and r.mask.dtype == np.uint8  # 768x576 halved once
    count = cv2.countNonZero(r.mask)
    assert count > 0
    assert r.changed_pixels == count * 4
    assert r.ratio == pytest.approx(count / (288 * 384))


def test_mask_is_owned_by_the_caller(vtest_frames: list[np.ndarray]) -> None:
    gate = ThreeFrameGate(MotionConfig())
    results = run(gate, iter(vtest_frames[:4]))
    kept = results[-1].mask.copy()
    gate.update(vtest_frames[4])
    assert np.array_equal(results[-1].mask, kept)


def test_threshold_change_changes_the_decision(background: np.ndarray) -> None:
    frames = [
        f
        for f, _ in moving_clip(background, 6, seed=5, start=(300, 200), step=(8, 0), contrast=160)
    ]
    gate = ThreeFrameGate(MotionConfig())
    assert all(r.motion for r in run(gate, iter(frames))[2:])
    gate.reconfigure(threshold=120)
    gate.reset()
    assert not any(r.motion for r in run(gate, iter(frames)))
    gate.reconfigure(threshold=25, min_pixels=10**7)
    gate.reset()
    assert not any(r.motion for r in run(gate, iter(frames)))
    assert gate.config.threshold == 25 and gate.config.min_pixels == 10**7


def test_min_pixels_is_in_full_frame_pixels(background: np.ndarray) -> None:
    frames = [
        f
        for f, _ in moving_clip(background, 5, seed=6, start=(400, 300), step=(8, 0), size=(32, 32))
    ]
    small = run(ThreeFrameGate(MotionConfig()), iter(frames))[-1]
    assert small.motion and 0 < small.changed_pixels < 32 * 32 * 2
    above = MotionConfig(min_pixels=small.changed_pixels)
    assert not run(ThreeFrameGate(above), iter(frames))[-1].motion


def test_reconfigure_rejects_bad_values_and_keeps_the_old(background: np.ndarray) -> None:
    gate = ThreeFrameGate(MotionConfig())
    with pytest.raises(ConfigError, match="threshold"):
        gate.reconfigure(threshold=0)
    with pytest.raises(ConfigError, match="min_pixels"):
        gate.reconfigure(min_pixels=-1)
    assert gate.config == MotionConfig()


def test_disabled_gate_passes_every_frame(background: np.ndarray) -> None:
    gate = ThreeFrameGate(MotionConfig(enabled=False))
    results = run(gate, static_clip(background, 3, seed=7))
    assert all(r.motion and r.primed and not r.boxes for r in results)
    gate.reconfigure(enabled=True)
    assert [r.primed for r in run(gate, static_clip(background, 3, seed=8))] == [False, False, True]


def test_grey_frames_and_size_changes(vtest_frames: list[np.ndarray]) -> None:
    gate = ThreeFrameGate(MotionConfig())
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in vtest_frames[:5]]
    assert run(gate, iter(grey))[-1].motion
    small = [cv2.resize(f, (320, 240)) for f in vtest_frames[:3]]
    assert [r.primed for r in run(gate, iter(small))] == [False, False, True]
    assert gate.update(small[0]).mask.shape == (240, 320)  # no halving below downscale_width
    strided = vtest_frames[0][::2, ::2]  # a non-contiguous view is accepted
    assert gate.update(strided).mask.shape == (288, 384)


def test_bad_frames_are_rejected_with_the_cause() -> None:
    gate = ThreeFrameGate(MotionConfig())
    with pytest.raises(ValueError, match="uint8"):
        gate.update(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        gate.update(np.zeros((10, 10, 4), np.uint8))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="odd"):
        MotionConfig(blur=4)
    with pytest.raises(ValueError, match="extra"):
        MotionConfig.model_validate({"threshold": 25, "thresh": 3})
    assert MotionConfig(blur=3).blur == 3


@pytest.mark.parametrize("seed", range(8))
def test_property_random_flicker_and_noise_never_trigger(background: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    gain = float(rng.uniform(0.75, 1.3))
    offset = float(rng.uniform(-40, 40))
    clip = static_clip(
        background, 8, seed=seed, flicker_at=int(rng.integers(0, 8)), gain=gain, offset=offset
    )
    assert not any(r.motion for r in run(ThreeFrameGate(MotionConfig()), clip))


@pytest.mark.parametrize("seed", range(8))
def test_property_random_moving_objects_are_found(background: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    step = (int(rng.integers(5, 15)) * int(rng.choice([-1, 1])), int(rng.integers(-4, 5)))
    start = (int(rng.integers(200, 500)), int(rng.integers(100, 400)))
    clip = list(moving_clip(background, 6, seed=seed, start=start, step=step))
    results = run(ThreeFrameGate(MotionConfig(blur=int(rng.choice([0, 3])))), (f for f, _ in clip))
    for i in range(2, 6):
        assert results[i].motion
        assert covered(clip[i][1], results[i].boxes) >= 0.95
