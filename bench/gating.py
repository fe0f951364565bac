"""``python -m bench gating``: how much NPU work the three-frame gate saves, and what it costs.

A CCTV-like clip is built from vtest.avi (768x576, 10 fps): ``--segments`` motion
segments of ``--motion-frames`` real frames each, taken from evenly spaced places in
the video, each followed by a static stretch of ``--static-frames`` frames that hold
the segment's last frame with fresh Gaussian sensor noise on every frame and one
flicker frame in the middle (a +35 grey-level flash, or a x0.8 dimming on every
other stretch). The default clip is 75% static (16 x (25 motion + 75 static) = 1600
frames, 160 s of video); real CCTV is usually more static than that, and the gain
grows with the static share (gain <= 1 / (1 - static share)).

Both runs see every frame and use the same detection logic: the person detector
(pose_detector image) on the square crops around the gate's motion boxes, or on the
whole frame when there are none. The ungated run sends every frame to the model; the
gated run only frames the gate passes. ``gain`` = frames sent ungated / frames sent
gated. An event is a motion segment in which the ungated run detects a person;
``recall`` is the share of events in which the gated run detects one too. As the
detector is deterministic, a frame sent by both runs gives both the same result, so
each frame is run once; static frames the gate rejects are not run at all, since no
metric reads their detections (the whole frame of a held scene is also where this
detector finds nobody: CCTV people are too small without a crop).

Prints progress to stderr and one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers import registry
from edged.motion import MotionConfig, ThreeFrameGate
from edged.preroll import PreRoll
from edged.regions import motion_regions
from edgefed.errors import EdgeFedError
from edgefed.models.runner import ModelRunner, open_runner
from edgefed.models.types import Detection

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
IMAGES = Path("firmware-images/build")
TARGETS = {"gain": 3.44, "recall": 0.99, "frame_recall": 0.97, "gate_ms_per_frame": 1.0}
NOISE_BANK = 8


@dataclass(frozen=True)
class ClipSpec:
    video: Path
    segments: int
    motion_frames: int
    static_frames: int
    noise_sigma: float
    flash_levels: int
    dim_gain: float
    seed: int

    @property
    def frames(self) -> int:
        return self.segments * (self.motion_frames + self.static_frames)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.video.name,
            "resolution": "768x576",
            "fps": 10,
            "frames": self.frames,
            "motion_segments": self.segments,
            "motion_frames_per_segment": self.motion_frames,
            "static_frames_per_stretch": self.static_frames,
            "static_share": round(
                self.static_frames / (self.motion_frames + self.static_frames), 3
            ),
            "sensor_noise_sigma": self.noise_sigma,
            "flicker": f"one frame per static stretch: +{self.flash_levels} grey levels "
            f"(even stretches) or x{self.dim_gain} gain (odd)",
        }


@dataclass(frozen=True)
class ClipFrame:
    image: np.ndarray
    segment: int
    kind: str  # "motion", "static" or "flicker"


def _noise_bank(shape: tuple[int, ...], sigma: float, seed: int) -> list[tuple[Any, Any]]:
    """Pre-drawn noise fields split into saturating uint8 (+, -) parts."""
    rng = np.random.default_rng(seed)
    bank = []
    for _ in range(NOISE_BANK):
        noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * sigma)
        bank.append(
            (np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8))
        )
    return bank


def cctv_clip(spec: ClipSpec) -> Iterator[ClipFrame]:
    """The clip, frame by frame (never all in memory)."""
    cap = cv2.VideoCapture(str(spec.video))
    if not cap.isOpened():
        raise SystemExit(f"gating: cannot open {spec.video} (install the opencv-doc package)")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if spec.segments * spec.motion_frames > total:
        raise SystemExit(f"gating: {spec.segments} x {spec.motion_frames} frames exceed {total}")
    span = total - spec.motion_frames
    starts = [round(i * span / max(spec.segments - 1, 1)) for i in range(spec.segments)]
    position = 0
    bank: list[tuple[Any, Any]] = []
    flash = np.zeros(0, np.uint8)
    rng = np.random.default_rng(spec.seed)
    try:
        for seg, start in enumerate(starts):
            while position < start:
                cap.grab()
                position += 1
            last = None
            for _ in range(spec.motion_frames):
                ok, last = cap.read()
                if not ok:
                    raise SystemExit(f"gating: {spec.video} ended early at frame {position}")
                position += 1
                yield ClipFrame(last, seg, "motion")
            if last is None:
                raise SystemExit("gating: --motion-frames must be at least 1")
            if not bank:
                bank = _noise_bank(last.shape, spec.noise_sigma, spec.seed)
                flash = np.full(last.shape, spec.flash_levels, np.uint8)
            for i in range(spec.static_frames):
                plus, minus = bank[int(rng.integers(len(bank)))]
                held = cv2.subtract(cv2.add(last, plus), minus)
                if i == spec.static_frames // 2:
                    if seg % 2 == 0:
                        held = cv2.add(held, flash)
                    else:
                        held = cv2.convertScaleAbs(held, alpha=spec.dim_gain)
                    yield ClipFrame(held, seg, "flicker")
                else:
                    yield ClipFrame(held, seg, "static")
    finally:
        cap.release()


class PersonDetector:
    """The pose_detector image on motion crops, or the whole frame without motion boxes."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.ms: list[float] = []

    def __call__(self, image: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> bool:
        regions = motion_regions(boxes, image.shape)
        t0 = time.perf_counter()
        results = self.runner.infer(image, regions or [None])
        self.ms.append((time.perf_counter() - t0) * 1e3)
        return any(isinstance(r, Detection) and r.label == "person" for r in results)


def _open_detector(images: Path, threads: int) -> PersonDetector:
    driver = registry.create(registry.parse_config({"type": "litert", "num_threads": threads}))
    keys = [images / "keys" / "dev-signing.pub"]
    return PersonDetector(open_runner("person", images / "pose_detector", driver, None, keys))


@dataclass
class GatePass:
    decisions: list[tuple[bool, list[tuple[float, float, float, float]]]]
    gate_ms: list[float]
    gate_cpu_ms: list[float]
    gated_plain: int


def gate_pass(spec: ClipSpec, pre_roll: int) -> GatePass:
    """The gate alone over the clip: decisions (with the pre-roll's frames), boxes and the
    gate's own time per frame."""
    config = MotionConfig(pre_roll=pre_roll)
    gate = ThreeFrameGate(config)
    ring: PreRoll[int] = PreRoll(config.pre_roll)
    plain = ThreeFrameGate(MotionConfig(match_brightness=False))  # ablation
    out = GatePass([], [], [], 0)
    for n, frame in enumerate(cctv_clip(spec)):
        t0, c0 = time.perf_counter(), time.process_time()
        result = gate.update(frame.image)
        sent = ring.feed(n, result)
        out.gate_cpu_ms.append((time.process_time() - c0) * 1e3)
        out.gate_ms.append((time.perf_counter() - t0) * 1e3)
        out.decisions.append((False, []))
        for k, res in sent:  # pre-roll frames are decided now, with this frame's boxes
            out.decisions[k] = (True, res.boxes)
        out.gated_plain += plain.update(frame.image).motion
    return out


def detect_pass(spec: ClipSpec, gates: GatePass, detector: PersonDetector) -> dict[str, Any]:
    """Run the detector where a metric needs it; count frames sent, events found."""
    gated = static_gated = flicker_gated = person_frames = person_frames_gated = 0
    motion_frames = motion_sent = 0
    ungated_events: set[int] = set()
    gated_events: set[int] = set()
    for n, frame in enumerate(cctv_clip(spec)):
        motion, boxes = gates.decisions[n]
        gated += motion
        static_gated += motion and frame.kind != "motion"
        flicker_gated += motion and frame.kind == "flicker"
        motion_frames += frame.kind == "motion"
        motion_sent += motion and frame.kind == "motion"
        if frame.kind == "motion" or motion:
            person = detector(frame.image, boxes)
            if person and frame.kind == "motion":
                ungated_events.add(frame.segment)
                person_frames += 1
                if motion:
                    gated_events.add(frame.segment)
                    person_frames_gated += 1
    return {
        "gain": round(spec.frames / gated, 3) if gated else None,
        "recall": round(len(gated_events) / len(ungated_events), 4) if ungated_events else None,
        "frames_ungated": spec.frames,
        "frames_gated": gated,
        "static_frames_gated": static_gated,
        "flicker_frames_gated": flicker_gated,
        "events": len(ungated_events),
        "events_found_gated": len(gated_events),
        "frame_recall": round(motion_sent / motion_frames, 4) if motion_frames else None,
        "person_frame_recall": round(person_frames_gated / person_frames, 4)
        if person_frames
        else None,
    }


def run(
    spec: ClipSpec, images: Path, threads: int, progress: bool, pre_roll: int = 2
) -> dict[str, Any]:
    detector = _open_detector(images, threads)  # first: a missing image fails fast
    if progress:
        print(f"gating: gate pass over {spec.frames} frames", file=sys.stderr)
    gates = gate_pass(spec, pre_roll)
    if progress:
        print("gating: detector pass", file=sys.stderr)
    metrics = detect_pass(spec, gates, detector)
    ms = np.array(gates.gate_ms)
    return {
        **metrics,
        "gate_ms_per_frame": round(float(ms.mean()), 3),
        "gate_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "gate_ms_p99": round(float(np.percentile(ms, 99)), 3),
        "gate_cpu_ms_per_frame": round(float(np.mean(gates.gate_cpu_ms)), 3),
        "model_ms_per_frame": round(float(np.mean(detector.ms)), 2) if detector.ms else None,
        "model_frames_run": len(detector.ms),
        "gain_without_brightness_matching": round(spec.frames / gates.gated_plain, 3)
        if gates.gated_plain
        else None,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench gating", description="NPU work saved by the motion gate"
    )
    p.add_argument("--video", type=Path, default=VTEST, help="source video (default vtest.avi)")
    p.add_argument("--images", type=Path, default=IMAGES, help="model images directory")
    p.add_argument("--segments", type=int, default=16, help="motion segments (events)")
    p.add_argument("--motion-frames", type=int, default=25, help="frames per motion segment")
    p.add_argument("--static-frames", type=int, default=75, help="frames per static stretch")
    p.add_argument("--noise", type=float, default=2.5, help="sensor noise sigma (grey levels)")
    p.add_argument("--threads", type=int, default=2, help="LiteRT threads of the detector")
    p.add_argument("--seed", type=int, default=1, help="noise seed")
    p.add_argument("--pre-roll", type=int, default=2, help="gate pre-roll frames (0: off)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    spec = ClipSpec(
        video=args.video,
        segments=args.segments,
        motion_frames=args.motion_frames,
        static_frames=args.static_frames,
        noise_sigma=args.noise,
        flash_levels=35,
        dim_gain=0.8,
        seed=args.seed,
    )
    started = time.monotonic()
    try:
        metrics = run(spec, args.images, args.threads, not args.quiet, args.pre_roll)
    except EdgeFedError as exc:
        print(f"gating: {exc} (build the demo images: packaging/dev/setup.sh)", file=sys.stderr)
        return 1
    meets = (
        metrics["gain"] is not None
        and metrics["recall"] is not None
        and metrics["gain"] >= TARGETS["gain"]
        and metrics["recall"] >= TARGETS["recall"]
        and metrics["frame_recall"] is not None
        and metrics["frame_recall"] >= TARGETS["frame_recall"]
        and metrics["static_frames_gated"] == 0
        and metrics["gate_cpu_ms_per_frame"] < TARGETS["gate_ms_per_frame"]
    )
    out = {
        "bench": "gating",
        **metrics,
        "clip": spec.describe(),
        "detector": "pose_detector (MediaPipe pose detection, LiteRT) on motion crops",
        "targets": TARGETS,
        "meets_targets": meets,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
