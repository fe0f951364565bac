"""The edges' sample offers serverd remembers, bounded: pure code, time passed in.

One ``SampleOffer`` per device id, dated on serverd's clock (``FederationService`` says
how). Any identity allowed to publish offers may do so under many device ids (an edge
node's bridge publishes for every id in its namespace), so the book holds at most
``max_devices``: a new device beyond that evicts the one heard least recently (an
honest edge offers every ``offer_interval_s`` and is back with its next offer), and
each eviction is counted. An offer's ``samples`` keep only the models serverd
federates (the wire allows 64 names of any length per offer); the others are counted
and dropped. A device that has offered nothing for ``FORGET_MS`` is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from edgefed.counters import Counters
from edgefed.federation_wire import SampleOffer

FORGET_MS = 7 * 24 * 3600 * 1000
"""A device that has offered nothing for this long (a week) leaves the status."""

MAX_DEVICES = 10_000
"""Devices remembered by default: as many as a round message may name."""

RUNS_KEPT = 8  # per device, the edged runs heard, with the highest number of each


@dataclass(frozen=True, slots=True)
class Offer:
    """A device's latest ``SampleOffer`` as serverd keeps it: its fields in a fifth of
    the message's memory (a pydantic message costs 1.3 KB)."""

    samples: dict[str, int]  # of the models federated here
    training_allowed: bool
    sent_ms: int
    run: str
    seq: int
    seen_ms: int  # when it was sent, on serverd's clock as far as serverd can tell
    runs: tuple[tuple[str, int], ...] = ()  # (run, highest seq heard), newest last

    def status(self, now_ms: int) -> dict[str, Any]:
        """The offer's fields, when serverd dates it and its age."""
        return {
            "samples": dict(self.samples),
            "training_allowed": self.training_allowed,
            "sent_ms": self.sent_ms,
            "run": self.run,
            "seq": self.seq,
            "seen_ms": self.seen_ms,
            "age_s": round(max(0, now_ms - self.seen_ms) / 1000, 1),
        }


@dataclass
class OfferCounters(Counters):
    offers: int = 0
    offers_repeated: int = 0
    devices_evicted: int = 0
    offered_models_unknown: int = 0


class OfferBook:
    """The latest offer of each device heard, at most ``max_devices`` of them, least
    recently heard first. Not thread-safe: its owner holds a lock around each call."""

    def __init__(
        self, models: Collection[str], max_devices: int, counters: OfferCounters | None = None
    ) -> None:
        self.models = frozenset(models)
        self.max_devices = max_devices
        self.counters = counters if counters is not None else OfferCounters()
        self._offers: OrderedDict[str, Offer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._offers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._offers)

    def items(self) -> Iterator[tuple[str, Offer]]:
        return iter(self._offers.items())

    def get(self, device: str) -> Offer | None:
        return self._offers.get(device)

    def hear(self, device: str, offer: SampleOffer, now_ms: int, wall_ms: int) -> bool:
        """Take ``device``'s ``offer``, arrived at ``now_ms`` on serverd's clock
        (``wall_ms`` on the wall clock offers are stamped on); False for a copy of an
        offer already heard, which changes nothing."""
        known = self._offers.get(device)
        runs = dict(known.runs) if known is not None else {}
        heard = runs.get(offer.run) if offer.run else None
        if heard is not None and offer.seq <= heard:
            self.counters.offers_repeated += 1  # a copy delivered again
            return False
        # a later offer of a run heard before was sent just now; any other may be a copy
        # of any age: its sender's word for it, the age told on the wall clock
        age = 0 if heard is not None else max(0, wall_ms - offer.sent_ms)
        if offer.run:
            runs.pop(offer.run, None)
            runs[offer.run] = offer.seq
        kept = tuple(runs.items())[-RUNS_KEPT:]
        samples = {m: n for m, n in offer.samples.items() if m in self.models}
        self.counters.offered_models_unknown += len(offer.samples) - len(samples)
        self._offers[device] = Offer(
            samples, offer.training_allowed, offer.sent_ms, offer.run, offer.seq, now_ms - age, kept
        )
        self._offers.move_to_end(device)
        self.counters.offers += 1
        while len(self._offers) > self.max_devices:
            self._offers.popitem(last=False)
            self.counters.devices_evicted += 1
        return True

    def drop(self, device: str) -> None:
        """``device`` left (its retained offer was cleared)."""
        self._offers.pop(device, None)

    def forget(self, now_ms: int) -> None:
        """Forget the devices that have offered nothing for ``FORGET_MS``."""
        for device in [d for d, o in self._offers.items() if o.seen_ms < now_ms - FORGET_MS]:
            del self._offers[device]
