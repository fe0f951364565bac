"""edged start-up: compose drivers, model runners, the pipeline and the services.

Services have ``start()``/``stop()`` and are stopped in reverse order. A model that
fails to load (bad image, unknown driver, broken SDK) is reported with its reason
and the others still run; edged refuses to start only when no model loads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drivers import registry
from drivers.fallback import ChainEntry, FallbackConfig, FallbackDriver
from edged import wiring
from edged.api.preview import PreviewSink
from edged.api.server import ApiServer
from edged.api.sources import ApiSources
from edged.config import EdgedConfig, ModelConfig
from edged.events import ObjectEvents
from edged.offload.core import JobOutcome
from edged.offload.outcomes import ObjectMasks, OffloadResults, RecordSink
from edged.pipeline import FrameSink, Pipeline
from edged.results import EventLog, JsonlSink
from edged.systemd import PipelineWatch
from edgefed.driver import Driver
from edgefed.errors import ConfigError, DriverError, EdgeFedError, ImageError
from edgefed.images import image_dir
from edgefed.images.verify import read_manifest
from edgefed.models.runner import ModelRunner, open_runner
from edgefed.sdnotify import Notifier

log = logging.getLogger(__name__)

# With no systemd watchdog (a pod, a container, a shell): how long a pipeline thread may
# make no progress before edged counts as stalled and /healthz fails. Half the units'
# WatchdogSec=30s, the limit PipelineWatch sets under systemd, so both supervisors agree.
STALL_AFTER_S = 15.0


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def image_path(config: EdgedConfig, model: ModelConfig) -> Path:
    """A model's image directory: a path as given, or a name under ``images.dir``."""
    return image_dir(config.images.dir, model.image)


@dataclass
class LoadedModels:
    runners: dict[str, ModelRunner] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    drivers: dict[str, Driver] = field(default_factory=dict)
    image_failures: set[str] = field(default_factory=set)  # the image failed verification

    def fatal(self) -> EdgeFedError:
        """Why edged cannot run when no model loaded: an image error (exit 3) when every
        model's image failed verification, else a driver error (exit 4)."""
        reasons = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
        if self.failures and set(self.failures) == self.image_failures:
            return ImageError(f"no model could be loaded ({reasons})")
        return DriverError(f"no model could be loaded ({reasons})")

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        for driver in self.drivers.values():
            driver.close()


def _fallback_driver(
    config: EdgedConfig, m: ModelConfig, chain: list[str], drivers: dict[str, Driver]
) -> FallbackDriver:
    """The chain of ``m`` over the drivers it names; one that fails to start is left out
    (its entries are then reported unavailable) and logged with the reason."""
    for entry in chain:
        driver_type = ChainEntry.parse(entry).driver
        if driver_type not in drivers:
            try:
                drivers[driver_type] = registry.create(config.driver_config(driver_type))
            except (DriverError, ConfigError) as exc:
                log.warning("model %s: %s left out of its fallback chain: %s", m.name, entry, exc)
    fallback = FallbackConfig(
        chain=chain, fall_back_after=m.fallback_after, probe_interval_s=m.fallback_probe_s
    )
    used = {ChainEntry.parse(e).driver for e in chain}
    return FallbackDriver(fallback, {k: v for k, v in drivers.items() if k in used}, m.name)


def open_model(
    config: EdgedConfig, m: ModelConfig, path: Path, drivers: dict[str, Driver]
) -> ModelRunner:
    """Verify and load model ``m`` from the image at ``path`` on its driver (created in
    ``drivers`` on first use); an ``EdgeFedError`` says why not."""
    if m.fallback is not None:
        driver: Driver = _fallback_driver(config, m, m.fallback, drivers)
    else:
        driver_type = m.driver or read_manifest(path).driver
        if driver_type not in drivers:
            drivers[driver_type] = registry.create(config.driver_config(driver_type))
        driver = drivers[driver_type]
    return open_runner(
        m.name,
        path,
        driver,
        m.device,
        config.images.trusted_keys,
        config.images.allow_unsigned,
        m.recheck_ties,
    )


def load_models(config: EdgedConfig) -> LoadedModels:
    """Verify and load every configured model; failures are collected, not raised."""
    out = LoadedModels()
    for m in config.models:
        try:
            out.runners[m.name] = open_model(config, m, image_path(config, m), out.drivers)
        except EdgeFedError as exc:
            out.failures[m.name] = str(exc)
            if isinstance(exc, ImageError):
                out.image_failures.add(m.name)
            log.error("model %s not loaded: %s", m.name, exc)
    for m in config.models:
        runner = out.runners.get(m.name)
        if m.regions == "planned" and runner is not None and runner.manifest.task != "detection":
            out.runners.pop(m.name).close()
            out.failures[m.name] = (
                f"regions: planned plans and tracks a detector's objects; image {m.image!r} "
                f"is a {runner.manifest.task} model (use motion, full or motion+full)"
            )
            log.error("model %s not loaded: %s", m.name, out.failures[m.name])
    for m in config.models:
        if m.name in out.runners and m.cascade_on is not None and m.cascade_on not in out.runners:
            out.failures[m.name] = (
                f"parent model {m.cascade_on!r} is not loaded; {m.name} will not run"
            )
    return out


class Summary:
    """Logs one line of throughput every ``interval`` seconds on its own thread."""

    def __init__(self, pipeline: Pipeline, interval: float) -> None:
        self._pipeline = pipeline
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="summary", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            log.info("summary %s", summary_line(self._pipeline.status()))


def summary_line(status: dict[str, Any]) -> str:
    cams = " ".join(
        f"{c['name']}: {c['capture_fps']}fps in, gated {c['gated']}, static {c['skipped_static']}"
        for c in status["cameras"]
    )
    models = " ".join(
        f"{name}={m['p50_ms']}ms/{m['inferences']}" for name, m in status["models"].items()
    )
    return f"frames={status['frames_completed']} fps={status['pipeline_fps']} {cams} | {models}"


class EdgedApp:
    """The running daemon: models, pipeline, sinks and the optional services.

    Services start in list order and stop in reverse: pipeline, summary, offload, EventBus,
    twin, DMI mapper, the network loop with MQTT, HTTP API (the API starts last and stops
    first). The MQTT connection comes up after every subscriber has registered its handler, so that
    the messages the broker kept for edged's session while it was away find their handler.
    """

    def __init__(self, config: EdgedConfig, extra_sinks: tuple[FrameSink, ...] = ()) -> None:
        self.config = config
        self.events = EventLog()
        self.preview = PreviewSink()
        self.models = load_models(config)
        if not self.models.runners:
            raise self.models.fatal()
        out = config.output
        limit = out.results_max_mb * 2**20 if out.results_max_mb is not None else None
        self._jsonl = JsonlSink(out.results, limit, out.results_keep) if out.results else None
        self.net = wiring.network(config)
        self.mqtt = self.net.mqtt if self.net is not None else None
        self.eventbus = wiring.eventbus(config, self.mqtt, self._stats)
        record_sinks: list[RecordSink] = []
        if self._jsonl is not None:
            record_sinks.append(self._jsonl.write)
        if self.eventbus is not None:
            record_sinks.append(self.eventbus.publish_offload_result)
        self.offload_results = OffloadResults(record_sinks)
        self._server_masks = ObjectMasks(
            config.planned_model, {c.name: c.object_masks for c in config.cameras}
        )
        clock = wiring.server_clock(config)  # offload and federation times, serverd's
        self.federation = wiring.federation(config, self.mqtt, self._serve_adopted, clock)
        self.offload = wiring.offload(
            config,
            self.net,
            self._queue_depth,
            self._on_outcome,
            self.federation.on_offload if self.federation is not None else None,
            clock,
        )
        sinks: list[FrameSink] = [self.events, self.preview, *extra_sinks]
        sinks += [s for s in (self._jsonl, self.eventbus) if s is not None]
        listeners = []
        if self.offload is not None:
            sinks.append(self.offload.dispatcher.on_frame)
            listeners.append(self.offload.dispatcher)
        self.objects = ObjectEvents(
            config.device_id,
            publish=self.eventbus.publish_object if self.eventbus is not None else None,
        )
        self.pipeline = Pipeline(
            config,
            self.models.runners,
            sinks=sinks,
            listeners=listeners,
            object_listeners=[self.objects],
        )
        self.runtime = wiring.runtime_config(config, self.pipeline, self.offload, self.federation)
        self.twin = wiring.twin(config, self.mqtt, self.runtime, self.eventbus, self._readings)
        self.dmi = wiring.dmi(config, self.runtime, self.eventbus, self._readings)
        self.services: list[Service] = [
            self.pipeline,
            Summary(self.pipeline, config.output.summary_interval_s),
        ]
        optional = (
            self.offload,
            self.eventbus,
            self.federation,
            self.twin,
            self.dmi,
            self.net,
            self._api(),
        )
        self.services += [s for s in optional if s is not None]
        self._started: list[Service] = []
        self._final: dict[str, Any] | None = None
        self.stall_after_s = STALL_AFTER_S  # half the watchdog interval once run() has one

    def _serve_adopted(self, federated: str, image: Path) -> None:
        """A federated version was installed at ``image``: every pipeline model loaded
        from that path runs it from its next frame on (no frame is dropped)."""
        pipeline = getattr(self, "pipeline", None)
        if pipeline is None:  # still starting: the pipeline loads the installed image
            return
        for m in self.config.models:
            if image_path(self.config, m).absolute() != image.absolute():
                continue
            runner = open_model(self.config, m, image, self.models.drivers)
            if m.name in pipeline.workers:
                pipeline.workers[m.name].swap_runner(runner)
            else:  # its first version: the model did not load at start
                try:
                    pipeline.add_model(m, runner)
                except ConfigError:
                    runner.close()  # the federation rolls back; the driver's memory too
                    raise
                self.models.failures.pop(m.name, None)
                try:  # the API, the twin and the next start know it from now on
                    self.runtime.model_added(m.name, m.enabled)
                except ConfigError as exc:  # it serves all the same
                    log.warning("model %s serves but is not among enabled_models: %s", m.name, exc)
            self.models.runners[m.name] = runner
            log.info("model %s now serves %s %s", m.name, federated, runner.manifest.version)

    def _on_outcome(self, outcome: JobOutcome) -> None:
        """A closed offload job: recorded, and a hard example for the federation."""
        outcome = self._server_masks(outcome)
        self.offload_results(outcome)
        if self.federation is not None:
            self.federation.on_outcome(outcome)

    def _queue_depth(self, model: str) -> int:
        worker = self.pipeline.workers.get(model)
        return worker.depth if worker is not None else 0

    def _stats(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.status(),
            "mqtt": self.mqtt.counters.as_dict() if self.mqtt is not None else None,
            "offload": self.offload.status() if self.offload is not None else None,
        }

    def _readings(self) -> dict[str, Any]:
        """Read-only twin properties."""
        cams = self.pipeline.status()["cameras"]
        gated = sum(c["gated"] for c in cams)
        static = sum(c["skipped_static"] for c in cams)
        depth = self.offload.outbox.stats().get("open_jobs", 0) if self.offload else 0
        return {
            "fps": round(sum(c["capture_fps"] for c in cams), 2),
            "gated_ratio": round(static / (gated + static), 4) if gated + static else 0.0,
            "outbox_depth": depth,
        }

    def _api(self) -> ApiServer | None:
        if not self.config.api.enabled:
            return None
        sources = ApiSources(
            pipeline=self.pipeline,
            events=self.events,
            preview=self.preview,
            device_id=self.config.device_id,
            model_failures=self.models.failures,
            runtime=self.runtime,
            outbox=self.offload.outbox if self.offload is not None else None,
            offload_results=self.offload_results if self.offload is not None else None,
            links={"mqtt": self.mqtt} if self.mqtt is not None else {},
            objects=self.objects,
            federation=self.federation,
            twins={n: t for n, t in (("mqtt", self.twin), ("dmi", self.dmi)) if t is not None},
            stalled=self.stalled,
        )
        return ApiServer(self.config.api, sources)

    def stalled(self) -> list[str]:
        """The pipeline threads that made no progress for ``stall_after_s`` (empty: it
        moves): what withholds systemd's watchdog and what /healthz answers 503 for."""
        return self.pipeline.stalled(self.stall_after_s)

    def add_service(self, service: Service) -> None:
        self.services.append(service)

    def start(self) -> None:
        for service in self.services:
            service.start()
            self._started.append(service)

    def stop(self) -> None:
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
            except Exception:
                log.exception("stopping %r failed", service)
        self._final = self._summary()  # while the outbox is still open
        if self._jsonl is not None:
            self._jsonl.close()
        if self.offload is not None:
            self.offload.outbox.close()
        self.models.close()

    def run(self, stop: threading.Event, notifier: Notifier | None = None) -> None:
        """Run until ``stop`` is set, the sources end, or ``output.max_results`` is reached.

        ``notifier`` (systemd's, by default from the environment) hears READY once every
        service has started, WATCHDOG from this loop while the pipeline moves, STOPPING;
        its watchdog interval, halved, is also the stall limit of ``stalled`` (/healthz).
        """
        limit = self.config.output.max_results
        notifier = notifier if notifier is not None else Notifier()
        if notifier.watchdog_s is not None:  # the limit PipelineWatch withholds it at
            self.stall_after_s = notifier.watchdog_s / 2
        watch = PipelineWatch(
            notifier,
            self.pipeline,
            lambda: summary_line(self.pipeline.status()),
            self.config.output.summary_interval_s,
        )
        try:
            self.start()
            watch.ready(
                f"running {len(self.models.runners)} models on {len(self.config.cameras)} cameras"
            )
            while not stop.wait(0.2):
                watch.tick()
                if self.pipeline.finished():
                    break
                if limit is not None and self.pipeline.completed.total >= limit:
                    break
        finally:
            watch.stopping()
            self.stop()

    def final_summary(self) -> dict[str, Any]:
        """The status at stop (or now, while running)."""
        return self._final if self._final is not None else self._summary()

    def _summary(self) -> dict[str, Any]:
        status = self.pipeline.status()
        status["model_failures"] = self.models.failures
        status["detections"] = dict(self.events.detections)
        if self.offload is not None:
            status["offload"] = self.offload.status()
            status["offload_results"] = self.offload_results.status()["counts"]
        return status
