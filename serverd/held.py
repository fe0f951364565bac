"""The jobs serverd holds (queued or in flight) until it answers them, by queue id, with
how many each device holds (``overload.max_held_per_device`` bounds it) and the bytes
their frames take together (``overload.max_held_mb``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, ItemsView
from dataclasses import dataclass

from edgefed.wire import OffloadRequest
from serverd.jobtable import JobKey


@dataclass
class Held:
    """A job serverd holds until it is answered: its request, frame and reply topic."""

    request: OffloadRequest
    body: bytes
    reply_topic: str
    received: float  # perf_counter
    queued: float = 0.0  # perf_counter when last put in the queue (arrival or re-placement)

    def __post_init__(self) -> None:
        self.queued = self.queued or self.received

    @property
    def key(self) -> JobKey:
        return (self.request.device_id, self.request.job_id)

    @property
    def queue_id(self) -> str:
        """The job's id in the scheduler: device and job id (neither holds a space)."""
        return f"{self.request.device_id} {self.request.job_id}"


class HeldJobs:
    """Held jobs by ``Held.queue_id``, counted per device."""

    def __init__(self) -> None:
        self._jobs: dict[str, Held] = {}
        self._per_device: Counter[str] = Counter()
        self.bytes = 0  # of the held jobs' frames

    def add(self, held: Held) -> None:
        self._jobs[held.queue_id] = held
        self._per_device[held.request.device_id] += 1
        self.bytes += len(held.body)

    def pop(self, queue_id: str) -> Held | None:
        held = self._jobs.pop(queue_id, None)
        if held is not None:
            self.bytes -= len(held.body)
            device = held.request.device_id
            self._per_device[device] -= 1
            if not self._per_device[device]:
                del self._per_device[device]
        return held

    def get(self, queue_id: str) -> Held | None:
        return self._jobs.get(queue_id)

    def __getitem__(self, queue_id: str) -> Held:
        return self._jobs[queue_id]

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def items(self) -> ItemsView[str, Held]:
        return self._jobs.items()

    def load(self) -> tuple[int, Callable[[str], int], int]:
        """What the overload guard weighs an arrival against: the jobs held, the count of
        a device's, the bytes of their frames."""
        return len(self._jobs), self.of_device, self.bytes

    def of_device(self, device: str) -> int:
        """Jobs ``device`` holds now."""
        return self._per_device[device]
