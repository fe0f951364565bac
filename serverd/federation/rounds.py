"""The federation round state machine: pure code, time passed in, no I/O.

One ``Federation`` per model. A round goes ``idle -> collecting -> idle``:

* ``open_round(available, now)`` selects the participants (devices that are available,
  allowed to train and hold at least ``min_samples`` samples; at most
  ``max_participants`` of them, drawn at random when more qualify), fixes the base
  version and the deadline, and returns the ``RoundPlan`` serverd publishes; ``draft``
  makes the same plan and changes nothing, ``begin`` opens it (the adapter builds the
  round's message in between, so a round it cannot publish never opens);
* ``receive(...)`` checks one update and accepts it or rejects it with a reason (not a
  participant, stale base version, duplicate, malformed: shapes or values that do not
  fit the model's tensors, out of bounds); ``unexpected`` says, before an update is
  even reassembled, whether its device may still answer the round;
* ``poll(now)`` closes the round once every participant answered, or at the deadline
  with at least ``quorum`` accepted updates: the accepted updates are aggregated
  (``serverd.federation.aggregate``) into version ``base + 1``. At the deadline without
  a quorum, or when the aggregate is not finite in the model's dtypes, the round fails
  and the global model stays as it was.

The adapter (MQTT, image signing) publishes what these calls return. The history keeps
``HISTORY_ROUNDS`` closed rounds; only the latest ``listed_rounds`` keep their device
lists (accepted, rejected with the reason, missing), older ones the counts: memory is
``listed_rounds x max_participants`` device entries, not ``HISTORY_ROUNDS x`` the fleet.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from edgefed.errors import FederationError
from edgefed.federation_wire import MAX_PARTICIPANTS
from serverd.federation.aggregate import (
    AggregationError,
    AggregationSettings,
    Params,
    Update,
    aggregate,
)

HISTORY_ROUNDS = 1000
"""Closed rounds kept for ``history`` (at one round every 10 minutes, about a week): the
global parameters live in ``Federation.params`` alone, never in the history."""
HISTORY_LISTED_ROUNDS = 20
"""Of those, the latest rounds that keep their device lists (older ones keep counts)."""


class Phase(StrEnum):
    IDLE = "idle"
    COLLECTING = "collecting"


@dataclass(frozen=True)
class RoundSettings:
    """Who takes part and when a round closes.

    ``min_clients``: participants needed to open a round; ``quorum``: accepted updates
    needed to aggregate at the deadline; ``min_samples``: samples a device must hold to be
    selected; ``timeout_ms``: how long a round collects; ``max_delta_norm``: an update whose
    L2 distance from the base exceeds this is refused as out of bounds (None: no bound);
    ``max_samples``: the largest sample count an update may claim; ``max_participants``:
    the most devices a round names (a uniform random sample of those that qualify).
    """

    min_clients: int = 3
    quorum: int = 3
    min_samples: int = 10
    timeout_ms: int = 120_000
    max_delta_norm: float | None = None
    max_samples: int = 1_000_000
    max_participants: int = 1000
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)

    def __post_init__(self) -> None:
        if self.min_clients < 1 or self.quorum < 1 or self.quorum > self.min_clients:
            raise FederationError("need 1 <= quorum <= min_clients")
        if self.timeout_ms <= 0 or self.min_samples < 1 or self.max_samples < 1:
            raise FederationError("timeout_ms, min_samples and max_samples must be positive")
        if not self.min_clients <= self.max_participants <= MAX_PARTICIPANTS:
            raise FederationError(f"need min_clients <= max_participants <= {MAX_PARTICIPANTS}")


@dataclass(frozen=True)
class RoundPlan:
    """What serverd publishes when a round opens."""

    round_id: int
    base_version: int
    participants: tuple[str, ...]
    deadline_ms: int
    opened_ms: int = 0


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class RoundOutcome:
    """A closed round: the new version and parameters, or why it failed."""

    round_id: int
    base_version: int
    version: int | None
    params: Params | None
    accepted: tuple[str, ...]
    rejected: dict[str, str]
    missing: tuple[str, ...]
    opened_ms: int
    closed_ms: int
    failure: str = ""
    counts: tuple[int, int, int] | None = None  # (accepted, rejected, missing), lists dropped

    def tally(self) -> tuple[int, int, int]:
        """How many devices were accepted, rejected and missing."""
        if self.counts is not None:
            return self.counts
        return len(self.accepted), len(self.rejected), len(self.missing)

    def summary(self) -> RoundOutcome:
        """This outcome without parameters and device lists, their counts kept: what the
        history holds of an older round."""
        return dataclasses.replace(
            self, params=None, accepted=(), rejected={}, missing=(), counts=self.tally()
        )

    def record(self) -> dict[str, Any]:
        """The JSON-able history row (no parameters; the device lists are empty once
        ``devices_listed`` is false, the counts are always there)."""
        accepted, rejected, missing = self.tally()
        return {
            "round": self.round_id,
            "base_version": self.base_version,
            "version": self.version,
            "accepted": list(self.accepted),
            "rejected": dict(self.rejected),
            "missing": list(self.missing),
            "opened_ms": self.opened_ms,
            "closed_ms": self.closed_ms,
            "round_s": (self.closed_ms - self.opened_ms) / 1000,
            "failure": self.failure,
            "accepted_count": accepted,
            "rejected_count": rejected,
            "missing_count": missing,
            "devices_listed": self.counts is None,
        }


class Federation:
    """The rounds of one model, from its current global version and parameters.

    ``rng`` draws the aggregation's noise; ``sampler`` draws a round's participants when
    more than ``max_participants`` qualify (seed it for the same choice from the same
    offers; by default it is seeded by the OS, so no edge can predict its turn);
    ``listed_rounds``: how many of the latest closed rounds keep their device lists."""

    def __init__(
        self,
        model: str,
        version: int,
        params: Params,
        settings: RoundSettings,
        rng: np.random.Generator | None = None,
        sampler: random.Random | None = None,
        listed_rounds: int = HISTORY_LISTED_ROUNDS,
    ) -> None:
        self.model = model
        self.version = version
        self.params = [np.asarray(p) for p in params]
        self.settings = settings
        self.phase = Phase.IDLE
        self.history: deque[RoundOutcome] = deque(maxlen=HISTORY_ROUNDS)  # without params
        self.rounds_done = 0
        self.rounds_failed = 0
        self._rng = rng
        self._sampler = sampler or random.Random()
        self.listed_rounds = listed_rounds
        self._round_id = 0
        self._plan: RoundPlan | None = None
        self._participants: frozenset[str] = frozenset()
        self._opened_ms = 0
        self._updates: dict[str, Update] = {}
        self._rejected: dict[str, str] = {}

    @property
    def plan(self) -> RoundPlan | None:
        return self._plan

    @property
    def round_id(self) -> int:
        """The latest round opened (0 before the first)."""
        return self._round_id

    def open_round(
        self, available: Mapping[str, int], now_ms: int, list_bytes: int | None = None
    ) -> RoundPlan:
        """Open a round over the ``available`` devices (id -> samples held, only devices
        online and allowed to train): ``begin(draft(...))``."""
        plan = self.draft(available, now_ms, list_bytes)
        self.begin(plan)
        return plan

    def draft(
        self, available: Mapping[str, int], now_ms: int, list_bytes: int | None = None
    ) -> RoundPlan:
        """The round that would open now over the ``available`` devices; nothing changes.
        The devices holding ``min_samples`` take part, all of them when they are at most
        ``max_participants`` and their ids, as a JSON list, fit in ``list_bytes`` (the room
        the round's message has for them); else a uniform random sample within both
        bounds. Raises ``FederationError`` if a round is open or too few devices qualify."""
        if self.phase is not Phase.IDLE:
            raise FederationError(f"round {self._round_id} of {self.model} is still collecting")
        eligible = sorted(d for d, n in available.items() if n >= self.settings.min_samples)
        if len(eligible) < self.settings.min_clients:
            raise FederationError(
                f"{len(eligible)} device(s) hold >= {self.settings.min_samples} samples, "
                f"need {self.settings.min_clients}"
            )
        chosen = self._choose(eligible, math.inf if list_bytes is None else list_bytes)
        if len(chosen) < self.settings.min_clients:
            raise FederationError(
                f"the ids of {len(chosen)} of {len(eligible)} devices fit in a round message "
                f"({list_bytes} bytes), need {self.settings.min_clients}"
            )
        deadline = now_ms + self.settings.timeout_ms
        return RoundPlan(self._round_id + 1, self.version, chosen, deadline, now_ms)

    def begin(self, plan: RoundPlan) -> None:
        """Open the round ``draft`` planned, if nothing opened or closed since."""
        if self.phase is not Phase.IDLE:
            raise FederationError(f"round {self._round_id} of {self.model} is still collecting")
        if plan.round_id != self._round_id + 1 or plan.base_version != self.version:
            raise FederationError(f"round {plan.round_id} of {self.model}: the plan is stale")
        self._round_id = plan.round_id
        self._plan = plan
        self._participants = frozenset(plan.participants)
        self._opened_ms = plan.opened_ms
        self._updates = {}
        self._rejected = {}
        self.phase = Phase.COLLECTING

    def _choose(self, eligible: list[str], room: float) -> tuple[str, ...]:
        """``eligible`` (sorted) if it fits ``max_participants`` and ``room`` bytes, else a
        uniform random sample that does, sorted. Uniform, not the most samples first: an
        offer's count is the edge's word (one claiming a million would always be chosen),
        and every device gets its turn, as FedAvg samples its clients."""
        limit = self.settings.max_participants
        if len(eligible) <= limit and _list_bytes(eligible) <= room:
            return tuple(eligible)
        chosen: list[str] = []
        used = 1  # "[" and "]", less the comma the first id does not need
        for device in self._sampler.sample(eligible, min(limit, len(eligible))):
            used += len(json.dumps(device)) + 1
            if used > room:  # stop, not skip: skipping would favour short ids
                break
            chosen.append(device)
        return tuple(sorted(chosen))

    def receive(
        self, device: str, round_id: int, base_version: int, params: Params, num_samples: int
    ) -> Verdict:
        """Accept or refuse one device's update; a refusal says why."""
        verdict = self._judge(device, round_id, base_version, params, num_samples)
        if verdict.accepted:  # kept in the model's dtypes, as judged
            kept = [np.asarray(p).astype(b.dtype) for p, b in zip(params, self.params, strict=True)]
            self._updates[device] = Update(kept, num_samples)
        elif self._answers_this_round(device, round_id):
            self._rejected[device] = verdict.reason  # its one answer to this round
        return verdict

    def refuse(self, device: str, round_id: int, reason: str) -> None:
        """Record a device's update refused before it could be judged (it could not be
        reassembled or decoded): its answer to the round, like any refusal."""
        if self._answers_this_round(device, round_id):
            self._rejected[device] = reason

    def poll(self, now_ms: int) -> RoundOutcome | None:
        """Close the round if everyone answered or the deadline passed; else None."""
        plan = self._plan
        if self.phase is not Phase.COLLECTING or plan is None:
            return None
        answered = set(self._updates) | set(self._rejected)
        if answered < set(plan.participants) and now_ms < plan.deadline_ms:
            return None
        return self._close(plan, now_ms)

    def status(self) -> dict[str, Any]:
        """The JSON-able state both the CLI and the status API print."""
        plan = self._plan
        collecting = self.phase is Phase.COLLECTING and plan is not None
        return {
            "model": self.model,
            "phase": self.phase.value,
            "version": self.version,
            "round": self._round_id,
            "participants": list(plan.participants) if collecting and plan else [],
            "received": sorted(self._updates) if collecting else [],
            "rejected": dict(self._rejected) if collecting else {},
            "deadline_ms": plan.deadline_ms if collecting and plan else None,
            "rounds_done": self.rounds_done,
            "rounds_failed": self.rounds_failed,
        }

    def unexpected(self, device: str, round_id: int) -> str:
        """Why ``device`` cannot answer round ``round_id`` now ("" when it can: a
        participant of the open round that has not answered yet)."""
        plan = self._plan
        if self.phase is not Phase.COLLECTING or plan is None or round_id != plan.round_id:
            return f"round {round_id} is not open"
        if device not in self._participants:
            return f"{device} is not a participant of round {round_id}"
        if device in self._updates or device in self._rejected:
            return f"{device} already answered round {round_id}"
        return ""

    def _answers_this_round(self, device: str, round_id: int) -> bool:
        return not self.unexpected(device, round_id)

    def _judge(
        self, device: str, round_id: int, base_version: int, params: Params, num_samples: int
    ) -> Verdict:
        plan = self._plan
        unexpected = self.unexpected(device, round_id)
        if unexpected or plan is None:
            return Verdict(False, unexpected)
        if base_version != plan.base_version:
            return Verdict(
                False, f"stale base version {base_version}, round is on {plan.base_version}"
            )
        if not 1 <= num_samples <= self.settings.max_samples:
            return Verdict(
                False, f"sample count {num_samples} outside [1, {self.settings.max_samples}]"
            )
        if len(params) != len(self.params) or any(
            p.shape != b.shape for p, b in zip(params, self.params, strict=False)
        ):
            return Verdict(False, "malformed: tensor count or shapes differ from the base")
        for p, b in zip(params, self.params, strict=True):
            unfit = _unfit(np.asarray(p), b.dtype)
            if unfit:
                return Verdict(False, f"malformed: {unfit}")
        bound = self.settings.max_delta_norm
        if bound is not None:
            norm = math.sqrt(
                sum(
                    float(np.sum((p.astype(np.float64) - b) ** 2))
                    for p, b in zip(params, self.params, strict=True)
                )
            )
            if norm > bound:
                return Verdict(False, f"out of bounds: update norm {norm:.4g} > {bound:.4g}")
        return Verdict(True)

    def _close(self, plan: RoundPlan, now_ms: int) -> RoundOutcome:
        accepted = tuple(sorted(self._updates))
        missing = tuple(
            d for d in plan.participants if d not in self._updates and d not in self._rejected
        )
        version: int | None = None
        params: Params | None = None
        failure = ""
        if len(accepted) < self.settings.quorum:
            failure = f"{len(accepted)} accepted update(s), quorum is {self.settings.quorum}"
        else:
            updates = [self._updates[d] for d in accepted]
            try:
                params = aggregate(self.params, updates, self.settings.aggregation, self._rng)
            except AggregationError as exc:
                failure = f"aggregation failed: {exc}"
            else:
                version = self.version + 1
                self.version, self.params = version, params
        outcome = RoundOutcome(
            plan.round_id,
            plan.base_version,
            version,
            params,
            accepted,
            dict(self._rejected),
            missing,
            self._opened_ms,
            now_ms,
            failure,
        )
        self._remember(outcome)
        if version is None:
            self.rounds_failed += 1
        else:
            self.rounds_done += 1
        self.phase = Phase.IDLE
        self._plan = None
        self._participants = frozenset()
        self._updates = {}
        self._rejected = {}
        return outcome

    def _remember(self, outcome: RoundOutcome) -> None:
        """Keep ``outcome`` in the history without parameters; the round that falls out
        of the latest ``listed_rounds`` keeps the counts of its device lists only."""
        self.history.append(dataclasses.replace(outcome, params=None))
        older = len(self.history) - 1 - self.listed_rounds
        if older >= 0:
            self.history[older] = self.history[older].summary()


def _list_bytes(devices: list[str]) -> int:
    """Bytes of ``devices`` as a compact JSON list."""
    return 1 + sum(len(json.dumps(d)) + 1 for d in devices) if devices else 2


def _unfit(values: np.ndarray, dtype: np.dtype[Any]) -> str:
    """Why ``values`` cannot be a tensor of the model, whose dtype is ``dtype`` ("" when
    they can): in a floating model each value must be finite once cast to it (1e300 is
    finite in float64, inf in float32); another model takes its own dtype only."""
    if not np.issubdtype(dtype, np.floating):
        return "" if values.dtype == dtype else f"dtype {values.dtype}, the model's is {dtype}"
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
    if not np.all(np.isfinite(cast)):
        return f"non-finite values as {dtype}, the model's dtype"
    return ""
