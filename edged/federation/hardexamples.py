"""Hard examples labelled by serverd: the joint-inference loop feeding the sample store.

When edged offloads a hard example (low local confidence), it ``remember``s the example's
feature vector under the job id. The offload client's outcome listener
(``OffloadClient(on_outcome=...)``) then calls this object: a job that ended ``Exit`` with
a classification result stores the features with the server's top class as the label,
if the server was confident enough (``min_score``) and the class is one the edge's head
knows. Failed or expired jobs, unknown classes and unremembered jobs store nothing and
are counted, and so is a sample the store failed to write (``store_failures``: a full
disk) apart from one it refused (``refused``). This is how an edge model learns from the
big model on the server.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edged.federation.samples import SampleStore, SampleStoreError
from edged.offload.core import JobOutcome
from edgefed.counters import Counters
from edgefed.errors import FederationError
from edgefed.lifecycle import Status


@dataclass
class HardExampleCounters(Counters):
    remembered: int = 0
    forgotten: int = 0
    stored: int = 0
    no_result: int = 0
    low_score: int = 0
    unknown_class: int = 0
    refused: int = 0
    store_failures: int = 0


class HardExamples:
    """The outcome listener of one trainable model; ``classes`` are its head's labels."""

    def __init__(
        self,
        store: SampleStore,
        model: str,
        classes: Sequence[str],
        min_score: float = 0.5,
        max_pending: int = 1000,
    ) -> None:
        self.store = store
        self.model = model
        self.index = {name: i for i, name in enumerate(classes)}
        self.min_score = min_score
        self.max_pending = max_pending
        self.counters = HardExampleCounters()
        self._pending: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, job_id: str, features: np.ndarray) -> None:
        """Keep an offloaded example's features until its outcome (bounded, oldest first)."""
        with self._lock:
            self._pending[job_id] = features
            self.counters.remembered += 1
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.counters.forgotten += 1

    def __call__(self, outcome: JobOutcome) -> None:
        with self._lock:
            features = self._pending.pop(outcome.job_id, None)
        if features is None:
            return
        label = self._label(outcome)
        if label is None:
            return
        try:
            self.store.add(self.model, features, label, "server", ref=outcome.job_id)
        except SampleStoreError:
            self.counters.store_failures += 1
            raise
        except FederationError:
            self.counters.refused += 1
            raise
        self.counters.stored += 1

    def _label(self, outcome: JobOutcome) -> int | None:
        result = outcome.result
        top = result.results[0].get("top") if result is not None and result.results else None
        if outcome.status is not Status.EXIT or not isinstance(top, list) or not top:
            self.counters.no_result += 1
            return None
        name, score = top[0][0], float(top[0][1])
        if score < self.min_score:
            self.counters.low_score += 1
            return None
        if name not in self.index:
            self.counters.unknown_class += 1
            return None
        return self.index[name]
