"""serverd start-up: API, job table, own Tritons, external endpoints, MQTT, offload service.

Order of start: the HTTP API (health answers while the rest starts); the job table; the
model repository and the supervised Triton processes (in parallel; a failure names
Triton's own words); the external endpoints' model lists; the scheduler; the MQTT
connection with a retained ``online`` availability and its ``offline`` Last Will; the
request subscription last, so that no request arrives before something can serve it.
Everything stops in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from edgefed.clock import now_ms
from edgefed.errors import OffloadError
from edgefed.mqtt import Ack, MqttClient, presence
from edgefed.sdnotify import Notifier
from edgefed.wire import Availability, Topics
from serverd.api.config import resolve_token
from serverd.api.devices import EdgeDevices
from serverd.api.metrics import ServerdMetrics
from serverd.api.server import ServerdApi
from serverd.config import ServerdConfig
from serverd.federation import service as federation
from serverd.jobtable import JobTable
from serverd.scheduler import Scheduler
from serverd.service import OffloadServer, ServiceSettings
from serverd.systemd import watchdog
from serverd.triton import access
from serverd.triton.client import TritonEndpoint
from serverd.triton.install import TritonInstall
from serverd.triton.repository import write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess, TritonSupervisor, start_all

log = logging.getLogger(__name__)


class ServerdApp:
    """The running server daemon; ``run(stop)`` returns when ``stop`` is set."""

    def __init__(self, config: ServerdConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier()  # systemd's, if any
        self.supervisors: dict[str, TritonSupervisor] = {}
        self.endpoints: dict[str, TritonEndpoint] = {}
        self.scheduler = Scheduler(
            config.scheduler.ema_alpha, config.scheduler.prior_ms, config.scheduler.max_attempts
        )
        self.jobs: JobTable | None = None  # the job table, while serving
        self.service: OffloadServer | None = None
        self.mqtt: MqttClient | None = None
        self.federation: federation.FederationService | None = None
        self.ready = threading.Event()  # set once requests are being served
        self._loop: asyncio.AbstractEventLoop | None = None
        self.devices = EdgeDevices(config.api.max_devices)
        self.metrics = ServerdMetrics(self.status)
        self.api: ServerdApi | None = None
        if config.api.enabled:
            self.api = ServerdApi(
                config.api,
                resolve_token(config.api),
                self.status,
                self.serving,
                self.triton_metrics_urls,
                self.metrics,
                self.devices,
                lambda: self.federation,
            )

    def serving(self) -> bool:
        """Ready: requests are served, MQTT is up and some Triton instance is healthy."""
        mqtt = self.mqtt
        return (
            self.ready.is_set()
            and mqtt is not None
            and mqtt.connected
            and any(i.healthy for i in self.scheduler.instances())
        )

    def status(self) -> dict[str, Any]:
        """Instances, scheduler, job table, counters and edge devices (on the loop)."""
        service = self.service
        current = service.status() if service is not None else {}
        instances = current.get("instances", {})
        return {
            "server_id": self.config.server_id,
            "ready": self.serving(),
            "mqtt": {
                "connected": self.mqtt is not None and self.mqtt.connected,
                "cert_expires": self.mqtt.cert_expires if self.mqtt is not None else None,
            },
            "instances": {
                i.name: {
                    "healthy": i.healthy,
                    "in_flight": len(i.inflight),
                    "completed": i.completed,
                    "models": sorted(i.models),
                    "ema_ms": instances.get(i.name, {}).get("ema_ms", {}),
                    **self._supervision(i.name),
                }
                for i in self.scheduler.instances()
            },
            "scheduler": {
                "queued": current.get("queued", 0),
                "in_flight": current.get("in_flight", 0),
            },
            "jobs": current.get("jobs", {}),
            "job_table_failures": self.jobs.failures if self.jobs is not None else 0,
            "job_table_pruned_over_cap": self.jobs.pruned_over_cap if self.jobs is not None else 0,
            "counters": current.get("counters", {}),
            "queued": current.get("queued", 0),
            "shed": current.get("shed", {}),
            "capacity_per_s": current.get("capacity_per_s", {}),
            "edge_events": dict(self.devices.counts),
            "devices": self.devices.status(),
            "federation": self.federation.status() if self.federation else {"enabled": False},
        }

    def _supervision(self, name: str) -> dict[str, Any]:
        """A supervised Triton's restarts, and whether it rests after a crash loop."""
        supervisor = self.supervisors.get(name)
        if supervisor is None:  # an external endpoint
            return {}
        return {"restarts": supervisor.restart_count, "resting": supervisor.gave_up}

    def triton_metrics_urls(self) -> dict[str, str]:
        """The metrics endpoint of every supervised Triton (loopback, free ports)."""
        return {name: s.process.metrics_url for name, s in self.supervisors.items()}

    def _tritons(self) -> list[TritonSupervisor]:
        cfg = self.config
        if cfg.triton.instances == 0:
            return []
        install = TritonInstall.locate(cfg.triton.venv)
        work = cfg.state_dir / "triton"
        repository = write_repository(
            work / "models",
            cfg.triton.models,
            cfg.images.dir,
            cfg.images.trusted_keys,
            cfg.images.allow_unsigned,
        )
        out = []
        verbose = [f"--log-verbose={cfg.triton.log_verbose}"]
        for i in range(cfg.triton.instances):
            base = cfg.triton.base_port
            ports = TritonPorts.free() if base is None else TritonPorts.at(base + 3 * i)
            process = TritonProcess(
                install, repository, work, f"local-{i}", ports, cfg.triton.ready_timeout_s, verbose
            )
            out.append(
                TritonSupervisor(
                    process,
                    self._on_triton_state,
                    cfg.triton.restarts,
                    cfg.triton.restart_window_s,
                )
            )
        return out

    def _on_triton_state(self, name: str, up: bool) -> None:
        """Called on a supervisor's watcher thread."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._triton_state, name, up)

    def _triton_state(self, name: str, up: bool) -> None:
        service = self.service
        if service is None:
            return
        if up:  # restarted on the same port: the old channel may still be backing off
            self.endpoints[name].renew()
        service.instance_state(name, up)

    async def _start_tritons(self, stop: asyncio.Event) -> None:
        """Start the own Tritons; a stop while they load their models (which may take
        longer than the unit's stop timeout) abandons the starts and returns."""
        supervisors = self._tritons()
        if not await start_all(supervisors, stop):
            return
        capacity = self.config.scheduler.capacity
        models = [m.name for m in self.config.triton.models]
        for supervisor in supervisors:
            process = supervisor.process
            self.supervisors[process.name] = supervisor
            self.endpoints[process.name] = TritonEndpoint(
                process.name, process.grpc_url, self.config.infer_timeout_s
            )
            self.scheduler.add_instance(process.name, models, capacity)

    async def _add_external(self) -> None:
        for ext in self.config.endpoints:
            headers = dict if ext.key_file is None else access.key_file_headers(ext.key_file)
            endpoint = TritonEndpoint(ext.name, ext.url, self.config.infer_timeout_s, headers)
            models = set(ext.models)
            healthy = True
            if not models:
                try:
                    models = await endpoint.models()
                except OffloadError as exc:
                    log.error("external Triton %s: %s (will retry)", ext.name, exc)
                    healthy = False
            self.endpoints[ext.name] = endpoint
            self.scheduler.add_instance(
                ext.name, models, self.config.scheduler.capacity, healthy=healthy
            )

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        if self.api is not None:
            await self.api.start()
        try:
            await self._serve(stop)
        finally:
            if self.api is not None:
                await self.api.stop()

    async def _serve(self, stop: asyncio.Event) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.jobs = jobs = JobTable(cfg.jobs_path, max_bytes=cfg.job_table_max_mb * 2**20)
        if jobs.interrupted:
            log.warning("%d jobs were interrupted by the last stop", jobs.interrupted)
        try:
            await self._start_tritons(stop)
            if stop.is_set():  # while Triton loaded: nothing to drain, no READY was sent
                self.notifier.stopping("stopped while starting")
                return
            await self._add_external()
            topics = Topics(cfg.prefix)
            online = Availability(
                role="server",
                id=cfg.server_id,
                state="online",
                since=now_ms(),
                models=sorted(self.scheduler.models()),
            )
            own = Topics(cfg.availability_prefix or cfg.prefix)
            self.mqtt = MqttClient(
                cfg.mqtt, presence(own.server_availability(cfg.server_id), online)
            )
            settings = ServiceSettings(
                cfg.server_id,
                cfg.max_message_bytes,
                cfg.max_queue,
                cfg.health_interval_s,
                cfg.drain_s,
                cfg.retention_s,
                cfg.send_accepted,
                cfg.overload,
            )
            self.service = OffloadServer(
                settings,
                topics,
                self.mqtt.publish,
                jobs,
                self.scheduler,
                self.endpoints,
                on_done=self.metrics.observe,
            )
            requests = topics.requests_filter()
            if cfg.share_group is not None:
                requests = f"$share/{cfg.share_group}/{requests}"
            self.mqtt.subscribe_acked(requests, self._on_request)
            self.federation = federation.build(
                cfg.federation, self.mqtt, own.prefix, cfg.state_dir, cfg.images
            )
            if self.federation is not None:
                self.federation.start()
            self.mqtt.start(loop)  # driven by this loop: requests arrive with no hand-off
            log.info(
                "serverd %s serving %s on %d instance(s)",
                cfg.server_id,
                ", ".join(online.models) or "nothing yet",
                len(self.endpoints),
            )
            self.ready.set()
            self.notifier.ready(
                f"serving {', '.join(online.models) or 'nothing yet'} "
                f"on {len(self.endpoints)} instance(s)"
            )
            tasks = [
                asyncio.create_task(
                    watchdog(self.notifier, stop, self._status_line), name="serverd-watchdog"
                )
            ]
            if self.federation is not None:
                tasks.append(
                    asyncio.create_task(
                        federation.run_ticks(self.federation, stop), name="serverd-federation"
                    )
                )
            try:
                await self.service.run(stop)
            finally:
                if not stop.is_set():  # the service failed: its companions end with it
                    for task in tasks:
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if not stop.is_set():  # failed before or while serving: the task never said it
                self.notifier.stopping("stopping after an error")
            if self.service is not None:
                log.info("final status %s", self.service.status())
            if self.mqtt is not None:
                await asyncio.to_thread(self.mqtt.stop)
            await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.supervisors.values()))
            jobs.close()

    def _status_line(self) -> str:
        if self.service is None:
            return "starting"
        status = self.service.status()
        c = status["counters"]
        healthy = sum(1 for i in status["instances"].values() if i["healthy"])
        return (
            f"received={c['received']} completed={c['completed']} failed={c['failed']} "
            f"queued={status['queued']} in_flight={status['in_flight']} "
            f"instances={healthy}/{len(status['instances'])} healthy"
        )

    def _on_request(self, topic: str, payload: bytes, ack: Ack) -> None:
        """On the loop. The request is acknowledged to the broker after it is admitted to
        the job table and, like the job's ``started``, once its Triton call has been sent:
        the PUBACK is written after the call, not before it on the job's round trip."""
        try:
            if self.service is not None:
                self.service.on_request(topic, payload)
        finally:
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, ack)
