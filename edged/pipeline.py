"""The edged pipeline: capture -> three-frame gate -> N models concurrently -> sinks.

One dispatcher thread per camera takes the newest frame from the camera's ring,
runs the motion gate (CPU, well under a millisecond) and hands frames with motion to
every enabled frame model at once. Cascade models (``cascade_on: <detector>``) run on each
detection of their parent. A frame is complete when every model that was given it
has finished or dropped it; complete frames go to the sinks (JSON lines, the event
log of the status API, the offload policy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edged.capture import CaptureSource, Frame, FrameRing
from edged.config import EdgedConfig, ModelConfig
from edged.framejob import FrameJob
from edged.inference import ModelWorker, Task
from edged.motion import ThreeFrameGate
from edged.perception import CameraPerception, assign_tracks, lower_threshold
from edged.preroll import PreRoll
from edged.ratelimit import RateLimiter
from edged.regionplan import Plan
from edged.regions import motion_regions
from edged.stats import RateMeter
from edged.tracking import TrackerUpdate
from edgefed.errors import ConfigError
from edgefed.models.runner import ModelRunner, cascade_regions
from edgefed.models.types import Box, Detection, Result
from edgefed.outage import Outage, Sinks

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    def __call__(self, job: FrameJob) -> None: ...


ModelListener = Callable[[str, FrameJob, list[Result]], None]
ObjectListener = Callable[[FrameJob, TrackerUpdate], None]


def regions_for(
    model: ModelConfig, motion: Sequence[Box], plan: Plan | None = None
) -> list[Box | None]:
    """Where a frame model runs on this frame (see ModelConfig.regions)."""
    if model.regions == "planned" and plan is not None:
        return list(plan.regions)
    if model.regions == "full" or not motion:
        return [None]
    if model.regions == "motion":
        return list(motion)
    return [*motion, None]


def _region_tracks(results: Sequence[Result]) -> list[tuple[Box, int]]:
    """The cascade regions of tracked results, with their track ids (cascades follow tracks)."""
    out: list[tuple[Box, int]] = []
    for r in results:
        track_id = getattr(r, "track_id", None)
        if track_id is not None and r.box is not None:
            out.append((r.box, track_id))
    return out


@dataclass
class CameraStats:
    gated: int = 0
    skipped_static: int = 0
    skipped_rate: int = 0
    frames_in: RateMeter = field(default_factory=RateMeter)
    processed: RateMeter = field(default_factory=RateMeter)
    motion_ratio: float = 0.0


class CameraLoop:
    """Capture thread + dispatcher thread for one camera."""

    def __init__(self, pipeline: Pipeline, index: int) -> None:
        cfg = pipeline.config.cameras[index]
        self.name = cfg.name
        self._object_masks = cfg.object_masks
        self._pipeline = pipeline
        self.ring = FrameRing(cfg.ring_size, lossless=pipeline.config.pipeline.lossless)
        self.capture = CaptureSource(cfg, self.ring)
        self.gate = ThreeFrameGate(pipeline.config.motion)
        self.pre_roll: PreRoll[Frame] = PreRoll(pipeline.config.motion.pre_roll)
        self.perception: CameraPerception | None = None  # made on the first planned frame
        self.stats = CameraStats()
        self._thread = threading.Thread(target=self._run, name=f"dispatch-{cfg.name}", daemon=True)
        self._rate = RateLimiter()  # pipeline.target_fps
        self.finished = threading.Event()
        self.heartbeat = time.monotonic()  # set by the dispatcher on every turn of its loop
        # one frame that fails never stops the camera; ``failures`` counts them
        self.faults = Outage(log, f"camera {cfg.name}: dispatching a frame")

    def start(self) -> None:
        self.capture.start()
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.capture.stop(timeout)
        self.ring.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._pipeline.stopping.is_set():
                self.heartbeat = time.monotonic()
                frame = self.ring.get(timeout=0.2)
                if frame is None:
                    if self.capture.stats().state.value in ("ended", "failed"):
                        break
                    continue
                with self.faults.contained():
                    self._dispatch(frame)
        finally:
            self.finished.set()

    def _dispatch(self, frame: Frame) -> None:
        st = self.stats
        st.frames_in.tick()
        if not self._rate.take(frame.ts, self._pipeline.target_fps):
            st.skipped_rate += 1
            return
        gate = self.gate.update(frame.image)
        st.motion_ratio = gate.ratio
        decided = self.pre_roll.discarded
        sent = self.pre_roll.feed(frame, gate)
        st.skipped_static += self.pre_roll.discarded - decided  # a counter: never goes down
        for early, verdict in sent:
            regions = motion_regions(verdict.boxes, early.image.shape)
            job = FrameJob(frame=early, gate=verdict, motion_regions=regions)
            planned = self._pipeline.planned_input
            if planned is not None:
                if self.perception is None:
                    self.perception = CameraPerception(
                        self._pipeline.config.perception,
                        planned,
                        early.image.shape,
                        self._pipeline.planned_report_score,
                        self._object_masks,
                    )
                job.perception = self.perception
                job.plan = self.perception.plan(verdict.boxes, early.ts, early.image.shape)
            self._pipeline.submit(job, st.gated + 1)
            st.gated += 1  # once sent: a frame that failed before is counted as failed


class Pipeline:
    """Composes camera loops and model workers; thread-safe status and reconfiguration."""

    def __init__(
        self,
        config: EdgedConfig,
        runners: dict[str, ModelRunner],
        sinks: Sequence[FrameSink] = (),
        listeners: Sequence[ModelListener] = (),
        object_listeners: Sequence[ObjectListener] = (),
    ) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.target_fps = config.pipeline.target_fps
        self._models = {m.name: m for m in config.models if m.name in runners}
        self.enabled = {m.name for m in config.models if m.enabled and m.name in runners}
        self._children: dict[str, list[ModelConfig]] = {}
        for m in self._models.values():
            if m.cascade_on is not None:
                self._children.setdefault(m.cascade_on, []).append(m)
        self._sinks = Sinks(log, "result sink", sinks)
        self._listeners = Sinks(log, "model listener", listeners)
        self._object_listeners = Sinks(log, "object listener", object_listeners)
        self._tracking = Outage(log, "tracking")
        self._handling = Outage(log, "result handling")
        planned = [m.name for m in self._models.values() if m.regions == "planned"]
        # the detector the planner and tracker serve (config allows one) and its input side
        self.planned_model = planned[0] if planned else None
        self.planned_input = runners[planned[0]].manifest.input.width if planned else None
        self.planned_report_score = (
            lower_threshold(runners[planned[0]].decoder, config.perception.track_score)
            if planned
            else 0.0
        )
        self._lock = threading.Lock()
        self.completed = RateMeter()
        self.workers = {
            name: self._worker(self._models[name], runner)
            for name, runner in runners.items()
            if name in self._models
        }
        self.cameras = [CameraLoop(self, i) for i in range(len(config.cameras))]
        self.started = time.monotonic()

    def _worker(self, m: ModelConfig, runner: ModelRunner) -> ModelWorker:
        return ModelWorker(
            m.name,
            runner,
            threads=m.workers,
            queue_size=m.queue_size,
            lossless=self.config.pipeline.lossless,
            on_done=self._on_done,
            on_drop=self._on_drop,
        )

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        for w in self.workers.values():
            w.start()
        for cam in self.cameras:
            cam.start()

    def stop(self, timeout: float = 3.0) -> None:
        self.stopping.set()
        for cam in self.cameras:
            cam.stop(timeout / 2)
        for w in self.workers.values():
            w.stop(timeout / 2)

    def finished(self) -> bool:
        """True when every camera source has ended and all queued work is done."""
        return all(c.finished.is_set() for c in self.cameras) and self.idle()

    def idle(self) -> bool:
        return all(w.depth == 0 and w.busy == 0 for w in self.workers.values())

    def stalled(self, max_age: float) -> list[str]:
        """Threads that made no progress for ``max_age`` seconds (empty: alive).

        A dispatcher that still has a source must turn its loop (it waits at most 0.2 s for
        a frame); a model worker with work must finish a run. A lossless pipeline whose model
        hangs blocks its dispatcher, a lossy one leaves the worker busy on one run: both are named.
        """
        now = time.monotonic()
        out = [
            f"dispatch-{c.name}"
            for c in self.cameras
            if not c.finished.is_set() and now - c.heartbeat > max_age
        ]
        out += [
            f"model-{w.name}"
            for w in self.workers.values()
            if w.busy and now - w.progress > max_age
        ]
        return out

    # -- data path ---------------------------------------------------------------
    def submit(self, job: FrameJob, gated_count: int) -> None:
        roots = [
            m
            for m in self._models.values()
            if m.cascade_on is None and m.name in self.enabled and gated_count % m.every_n == 0
        ]
        if not roots:
            return
        job.pending = len(roots)
        for m in roots:
            self.workers[m.name].submit(Task(job, regions_for(m, job.motion_regions, job.plan)))

    def _on_done(
        self, name: str, task: Task, results: list[Result] | None, ms: float, error: Any
    ) -> None:
        job: FrameJob = task.job
        end = time.perf_counter()
        job.spans[name] = (end - ms / 1000.0, end)
        try:
            children = self._handle(name, task, results, ms, error)
        except Exception as exc:  # contained: the frame still completes, without cascades
            self._handling.failed(exc)
            children = []
        with self._lock:
            job.pending += len(children) - 1
            done = job.pending == 0
        for child, regions in children:
            self.workers[child.name].submit(
                Task(job, regions, tracks=_region_tracks(job.results.get(name, [])))
            )
        if done:
            self._complete(job)

    def _handle(
        self, name: str, task: Task, results: list[Result] | None, ms: float, error: Any
    ) -> list[tuple[ModelConfig, list[Box | None]]]:
        """Record one model's answer on its frame; the cascades it starts."""
        job: FrameJob = task.job
        children: list[tuple[ModelConfig, list[Box | None]]] = []
        if error is not None:
            job.errors[name] = f"{type(error).__name__}: {error}"
        elif results is not None:
            if name == self.planned_model and job.perception is not None:
                with self._tracking.contained():  # a failure keeps the untracked detections
                    results = self._track(job, results)
            elif task.tracks:
                results = assign_tracks(results, task.tracks)
            job.results[name] = results
            job.latency_ms[name] = ms
            for child in self._children.get(name, []):
                if child.name not in self.enabled:
                    continue
                regions = cascade_regions(results, job.frame.image.shape)
                if regions:
                    children.append((child, regions))
            self._listeners(name, job, results)
        return children

    def _track(self, job: FrameJob, results: list[Result]) -> list[Result]:
        """Feed the planned detector's results to the camera's tracker (ids, events)."""
        assert job.perception is not None
        dets = [r for r in results if isinstance(r, Detection)]
        others = [r for r in results if not isinstance(r, Detection)]
        tracked, update = job.perception.observe(dets, job.frame.ts, job.plan, job.frame.image)
        job.objects = job.perception.objects(job.frame.ts)
        self._object_listeners(job, update)
        return [*tracked, *others]

    def _on_drop(self, name: str, task: Task) -> None:
        job: FrameJob = task.job
        if name == self.planned_model and job.perception is not None:
            job.objects = job.perception.objects(job.frame.ts)  # carried, not detected
        with self._lock:
            job.dropped.append(name)
            job.pending -= 1
            done = job.pending == 0
        if done:
            self._complete(job)

    def _complete(self, job: FrameJob) -> None:
        self.completed.tick()
        for cam in self.cameras:
            if cam.name == job.frame.camera:
                cam.stats.processed.tick()
        self._sinks(job)

    def add_sink(self, sink: FrameSink) -> None:
        """One more sink of completed frames (from the next frame on)."""
        self._sinks.add(sink)

    # -- runtime configuration ---------------------------------------------------
    def add_model(self, m: ModelConfig, runner: ModelRunner) -> None:
        """Start serving model ``m``, which did not load at start (a federated model whose
        first version arrived since). Its worker starts before the model is published to
        the data path; each table is replaced whole, so a frame reads the old or the new."""
        if m.name in self.workers or m.regions == "planned":
            raise ConfigError(f"model {m.name} cannot be added while running")
        worker = self._worker(m, runner)
        worker.start()
        self.workers = {**self.workers, m.name: worker}
        if m.cascade_on is not None:
            siblings = [*self._children.get(m.cascade_on, []), m]
            self._children = {**self._children, m.cascade_on: siblings}
        self._models = {**self._models, m.name: m}
        if m.enabled:
            self.enabled = self.enabled | {m.name}

    def set_enabled(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(self._models))
        if unknown:
            raise ValueError(f"unknown or unloaded models: {', '.join(unknown)}")
        self.enabled = set(names)

    def set_motion(self, *, threshold: int | None = None, min_pixels: int | None = None) -> None:
        for cam in self.cameras:
            cam.gate.reconfigure(threshold=threshold, min_pixels=min_pixels)

    # -- status --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cams = []
        for cam in self.cameras:
            cs = cam.capture.stats()
            st = cam.stats
            total = st.gated + st.skipped_static
            cams.append(
                {
                    "name": cam.name,
                    "state": cs.state.value,
                    "capture_fps": round(cs.fps, 2),
                    "frames": cs.frames,
                    "ring_drops": cs.drops,
                    "reconnects": cs.reconnects,
                    "last_error": cs.last_error,
                    "processed_fps": cam.stats.processed.rate,
                    "gated": st.gated,
                    "skipped_static": st.skipped_static,
                    "skipped_rate": st.skipped_rate,
                    "skipped_failed": cam.faults.failures,
                    "gate_pass_ratio": round(st.gated / total, 4) if total else None,
                    "motion_ratio": round(st.motion_ratio, 5),
                    "objects": cam.perception.objects() if cam.perception is not None else [],
                }
            )
        models = {
            name: {"enabled": name in self.enabled, **w.runner.describe(), **w.stats()}
            for name, w in self.workers.items()
        }
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "frames_completed": self.completed.total,
            "pipeline_fps": self.completed.rate,
            "target_fps": self.target_fps,
            "cameras": cams,
            "models": models,
        }
