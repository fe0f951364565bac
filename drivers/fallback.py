"""Fallback chains: one model on the first working device of an ordered list.

A chain such as ``[openvino:NPU, sidecar:npu0, onnxruntime:cpu]`` names devices as
``<driver>:<device>`` in order of preference. The model is loaded on the first that is
present and loads; when the device serving it fails ``fall_back_after`` runs in a row (a
side-car past its restart budget refuses every call, so it gets there quickly; any
exception of a run counts, a vendor SDK's own as well as a ``DriverError``) the model
moves to the next device that loads. If none does, it stays and the next try comes a
probe interval later, not on every failed frame. A prober thread checks the more
preferred devices every ``probe_interval_s`` seconds and moves the model back as soon as
one is healthy and loads again. A device that fails again within ``SETTLE_RUNS`` good runs
of a return (it loads, but its runs fail) is probed half as often each time, down to
1/``MAX_BACKOFF``, until it serves ``SETTLE_RUNS`` runs. ``status()`` says which device
serves and why.

The run that crosses the threshold fails like the ones before it: a frame is never run
twice, so a device that fails slowly cannot double the latency of every frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from edgefed.config import Seconds
from edgefed.counters import Counters
from edgefed.driver import DeviceInfo, Driver, DriverConfig, LoadedModel, one_line
from edgefed.errors import DriverError

log = logging.getLogger(__name__)

SETTLE_RUNS = 20  # runs that must succeed after a return before the device counts as recovered
MAX_BACKOFF = 8  # a device that fails after every return is probed at most 8x less often


@dataclass(frozen=True)
class ChainEntry:
    """One ``driver:device`` of a chain."""

    driver: str
    device: str

    @classmethod
    def parse(cls, text: str) -> ChainEntry:
        driver, sep, device = text.partition(":")
        if not (sep and driver and device):
            raise ValueError(f"fallback entry {text!r} is not <driver>:<device>")
        return cls(driver, device)

    def __str__(self) -> str:
        return f"{self.driver}:{self.device}"


@dataclass
class FallbackCounters(Counters):
    fallbacks: int = 0  # moves to a less preferred device
    returns: int = 0  # moves back to a more preferred one
    probes: int = 0
    failed_runs: int = 0


class FallbackModel(LoadedModel):
    """A model that runs on the first working device of its chain."""

    def __init__(
        self,
        name: str,
        model_file: Path,
        chain: list[ChainEntry],
        drivers: Mapping[str, Driver[Any]],
        *,
        fall_back_after: int,
        probe_interval_s: float,
    ) -> None:
        if not chain:
            raise DriverError(f"{name}: empty fallback chain")
        self._name = name
        self._file = model_file
        self._chain = chain
        self._drivers = drivers
        self._fall_back_after = fall_back_after
        self._probe_interval_s = probe_interval_s
        self.counters = FallbackCounters()
        self._lock = threading.Lock()
        self._failures = 0  # runs failed in a row on the current device
        # after a failed fall back, no device is loaded for it again before this time
        self._fall_back_not_before = 0.0
        self._successes = 0  # runs that succeeded on the current device since the model came
        self._returned = False  # the model came back to the current device (a probe moved it)
        # a device that failed again soon after each return is probed less often: the factor
        # of the probe interval per entry, and the time before which it is not probed
        self._backoff = [1] * len(chain)
        self._probe_not_before = [0.0] * len(chain)
        index, model, reasons = self._first_loading(range(len(chain)))
        if model is None:
            raise DriverError(f"{name}: no device of the chain loads: {'; '.join(reasons)}")
        self._index, self._model = index, model
        self.device = str(chain[index])  # the serving device: changes when the model moves
        self.reason = "preferred device" if index == 0 else "; ".join(reasons)
        self.inputs, self.outputs = model.inputs, model.outputs
        self._stop = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, name=f"fallback-probe-{name}")
        self._prober.daemon = True
        self._prober.start()

    def _load(self, entry: ChainEntry) -> LoadedModel:
        """Load on ``entry`` if its driver sees the device healthy (ids match in any case)."""
        driver = self._drivers.get(entry.driver)
        if driver is None:
            raise DriverError(f"driver {entry.driver!r} is not available")
        for dev in driver.devices():
            if dev.id.lower() == entry.device.lower():
                if not dev.healthy:
                    raise DriverError(dev.detail or "unhealthy")
                return driver.load(self._file, dev.id)
        raise DriverError(f"{entry.driver} has no device {entry.device!r}")

    def _first_loading(self, indices: Iterable[int]) -> tuple[int, LoadedModel | None, list[str]]:
        reasons: list[str] = []
        for index in indices:
            try:
                return index, self._load(self._chain[index]), reasons
            except Exception as exc:  # a vendor driver may raise its SDK's own errors
                reasons.append(f"{self._chain[index]} unavailable: {one_line(exc)}")
        return -1, None, reasons

    def _switch(self, index: int, model: LoadedModel, reason: str, returned: bool) -> None:
        """Serve from ``model`` on chain ``index`` (lock held); the old model is closed."""
        old, old_label = self._model, self._chain[self._index]
        self._index, self._model, self._failures, self.reason = index, model, 0, reason
        self._fall_back_not_before = 0.0
        self._successes, self._returned = 0, returned
        self.device = str(self._chain[index])
        log.warning("model %s moves from %s to %s: %s", self._name, old_label, self.device, reason)
        old.close()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            index, model = self._index, self._model
        try:
            out = model.run(feeds)
        except Exception as exc:  # a DriverError, or a vendor SDK's own: the device failed
            with self._lock:
                self.counters.failed_runs += 1
                if index == self._index:
                    self._failures += 1
                    if (
                        self._failures >= self._fall_back_after
                        and time.monotonic() >= self._fall_back_not_before
                    ):
                        self._fall_back(exc)
            raise
        with self._lock:
            if index == self._index:
                self._failures = 0
                self._successes += 1
                if self._successes == SETTLE_RUNS:  # recovered: probed as usual again
                    self._backoff[index] = 1
        return out

    def _fall_back(self, cause: Exception) -> None:
        failed = self._chain[self._index]
        index, model, reasons = self._first_loading(range(self._index + 1, len(self._chain)))
        if model is None:  # tried again a probe interval later, not on every failed frame
            self._fall_back_not_before = time.monotonic() + self._probe_interval_s
            log.error(
                "model %s: %s failed and no later device loads (%s); tried again in %g s",
                self._name,
                failed,
                "; ".join(reasons) or "it is the last",
                self._probe_interval_s,
            )
            return
        why = f"{failed} failed {self._failures} runs in a row (last: {one_line(cause)})"
        if self._returned and self._successes < SETTLE_RUNS:  # back, and failing again
            backoff = self._backoff[self._index] = min(2 * self._backoff[self._index], MAX_BACKOFF)
            wait_s = self._probe_interval_s * backoff
            self._probe_not_before[self._index] = time.monotonic() + wait_s
            why += f", back for {self._successes} good runs only: probed again in {wait_s:g} s"
        self.counters.fallbacks += 1
        self._switch(index, model, "; ".join([why, *reasons]), returned=False)

    def probe(self) -> None:
        """Move back to the most preferred device that is healthy and loads again."""
        with self._lock:
            now = time.monotonic()
            due = [i for i in range(self._index) if now >= self._probe_not_before[i]]
            current = self._index
        if not due:
            return
        self.counters.probes += 1
        index, model, _ = self._first_loading(due)
        if model is None:
            return
        with self._lock:
            if self._index != current:  # moved meanwhile: keep that decision
                model.close()
                return
            self.counters.returns += 1
            self._switch(index, model, f"{self._chain[index]} recovered", returned=True)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self._probe_interval_s):
            try:
                self.probe()
            except Exception:  # a probe must never end the prober
                log.exception("model %s: probing its fallback chain failed", self._name)

    def _entry_status(self, entry: ChainEntry, backoff: int) -> dict[str, Any]:
        driver = self._drivers.get(entry.driver)
        status = {} if driver is None else driver.status()
        return {
            "device": str(entry),
            **({"probe_interval_s": self._probe_interval_s * backoff} if backoff > 1 else {}),
            **({"driver": status} if status else {}),
        }

    def status(self) -> dict[str, Any]:
        # the drivers are asked outside the lock: a side-car's status waits for the
        # side-car, and runs on the serving device must not wait with it
        with self._lock:
            serving, reason, model = self.device, self.reason, self._model
            counters, backoff = self.counters.as_dict(), list(self._backoff)
        return {
            "serving": serving,
            "reason": reason,
            "chain": [self._entry_status(e, b) for e, b in zip(self._chain, backoff, strict=True)],
            **counters,
            **model.status(),
        }

    def close(self) -> None:
        self._stop.set()
        if self._prober is not threading.current_thread():
            self._prober.join()
        with self._lock:
            self._model.close()


class FallbackConfig(DriverConfig):
    """One model's chain (edged builds it from ``models[].fallback``)."""

    type: Literal["fallback"] = Field("fallback", description="Driver type")
    chain: list[str] = Field(
        min_length=1, description="Devices as <driver>:<device>, in order of preference"
    )
    fall_back_after: int = Field(3, ge=1, description="Failed runs in a row that move the model")
    probe_interval_s: Seconds = Field(
        30, description="How often the more preferred devices are probed"
    )

    @field_validator("chain")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for text in value:
            ChainEntry.parse(text)
        return value


class FallbackDriver(Driver[FallbackConfig]):
    """Loads a model as a ``FallbackModel`` over the drivers of its chain.

    Not in the registry: it composes drivers the daemon already made (``drivers``, by type).
    """

    type: ClassVar[str] = "fallback"
    config_model = FallbackConfig
    file_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, config: DriverConfig, drivers: Mapping[str, Driver[Any]], model_name: str
    ) -> None:
        super().__init__(config)
        self._model_name = model_name
        self._chain = [ChainEntry.parse(e) for e in self.config.chain]
        self._drivers = drivers
        suffixes = [set(d.file_suffixes) for d in drivers.values()] or [set()]
        # what every driver of the chain loads; known only once configured
        self.file_suffixes = tuple(sorted(set.intersection(*suffixes)))  # type: ignore[misc]

    def devices(self) -> list[DeviceInfo]:
        out = []
        for entry in self._chain:
            driver = self._drivers[entry.driver]
            found = [d for d in driver.devices() if d.id.lower() == entry.device.lower()]
            if found:
                out.append(
                    DeviceInfo(str(entry), found[0].model, found[0].healthy, found[0].detail)
                )
            else:
                out.append(DeviceInfo(str(entry), "", False, f"{entry.driver} has no such device"))
        return out

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        if device is not None:
            raise DriverError("a fallback chain picks its own device")
        return FallbackModel(
            self._model_name,
            model_file,
            self._chain,
            self._drivers,
            fall_back_after=self.config.fall_back_after,
            probe_interval_s=self.config.probe_interval_s,
        )
