"""The pipeline's side of offloading: decide per model result, submit frames to the outbox.

``OffloadDispatcher`` is a pipeline model listener (called on a worker thread after each
local model result) and a frame sink (called once per completed frame, for models that
exist only on the server). The decision is the pure ``policy.decide``; this module only
gathers its inputs, JPEG-encodes the frame and hands the job to ``OffloadClient.submit``,
which makes it durable before returning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from edged.framejob import FrameJob
from edged.offload.client import OffloadClient
from edged.offload.config import OffloadConfig
from edged.offload.policy import Decision, HardExampleBudget, OffloadPolicyName, decide
from edgefed.errors import OffloadError
from edgefed.models.types import Classification, Detection, Result, result_to_dict
from edgefed.outage import Outage
from edgefed.wire import LocalSummary

log = logging.getLogger(__name__)


def local_summary(results: Sequence[Result]) -> LocalSummary:
    """The compact view of a local result that the policy and the server see."""
    boxes = [r.score for r in results if isinstance(r, Detection)]
    probs = [p for r in results if isinstance(r, Classification) for _, p in r.top]
    return LocalSummary(box_scores=boxes[:1000], class_probs=probs[:10000])


SubmitListener = Callable[[str, str, np.ndarray], None]
"""Told (model, job id, BGR frame) of every frame submitted (the federation's hard
examples keep its features until serverd answers)."""


class OffloadDispatcher:
    """Pipeline listener + frame sink that feeds the offload client."""

    def __init__(
        self,
        config: OffloadConfig,
        client: OffloadClient,
        queue_depth: Callable[[str], int],
        on_submit: SubmitListener | None = None,
    ) -> None:
        self._config = config
        self._on_submit = on_submit
        self._policy = config.policy
        self._client = client
        self._queue_depth = queue_depth
        self._frames = 0
        self._lock = threading.Lock()
        self.decisions: dict[str, int] = {}
        self.submit_errors = 0
        self._refused = Outage(log, "offload: the outbox taking a job")
        self._budget = HardExampleBudget()

    @property
    def policy(self) -> OffloadPolicyName:
        return self._policy.policy

    def set_policy(self, name: OffloadPolicyName) -> None:
        """Runtime setter (device twin ``offload_policy``)."""
        self._policy = self._policy.model_copy(update={"policy": name})

    def __call__(self, model: str, job: FrameJob, results: list[Result]) -> None:
        """After a local model result: offload the frame if the policy says so."""
        if self._config.models is not None and model not in self._config.models:
            return
        local = local_summary(results)
        decision = decide(
            self._policy,
            model=model,
            registered=True,
            priority=self._config.priority,
            queue_depth=self._queue_depth(model),
            local=local,
        )
        per_minute = self._policy.hard_example.max_per_minute
        if decision.rule == "hard_example" and not self._budget.take(model, per_minute):
            reason = f"{decision.reason}, over hard_example.max_per_minute {per_minute:g}"
            decision = Decision(False, "hard_example_over_budget", reason)
        self._count(decision.rule)
        if decision.offload:
            local_result = [result_to_dict(r) for r in results]
            self._submit(model, job, self._config.priority, local, decision.reason, local_result)

    def on_frame(self, job: FrameJob) -> None:
        """Once per completed frame: models registered only on the server."""
        with self._lock:
            self._frames += 1
            frames = self._frames
        for remote in self._config.remote_models:
            if frames % remote.every_n:
                continue
            decision = decide(
                self._policy,
                model=remote.name,
                registered=False,
                priority=remote.priority,
                queue_depth=0,
                local=None,
            )
            self._count(decision.rule)
            if decision.offload:
                self._submit(remote.name, job, remote.priority, None, decision.reason, None)

    def _count(self, rule: str) -> None:
        with self._lock:
            self.decisions[rule] = self.decisions.get(rule, 0) + 1

    def _submit(
        self,
        model: str,
        job: FrameJob,
        priority: int,
        local: LocalSummary | None,
        reason: str,
        local_result: Any,
    ) -> None:
        ok, jpeg = cv2.imencode(
            ".jpg", job.frame.image, [cv2.IMWRITE_JPEG_QUALITY, self._config.jpeg_quality]
        )
        if not ok:
            log.warning("could not JPEG-encode frame %s for offload", job.key)
            return
        request = self._client.make_request(
            model,
            "jpeg",
            priority=priority,
            ttl_s=self._config.ttl_s,
            metadata={  # the frame's size: the camera's object masks over the answer
                "camera": job.frame.camera,
                "frame": job.frame.index,
                "width": job.frame.image.shape[1],
                "height": job.frame.image.shape[0],
            },
            local=local,
        )
        try:
            self._client.submit(request, jpeg.tobytes(), local_result, reason=reason)
        except OffloadError as exc:
            with self._lock:
                self.submit_errors += 1
            self._refused.failed(OffloadError(f"{job.key} for {model}: {exc}"))
            return
        self._refused.ok()
        if self._on_submit is not None:
            self._on_submit(model, request.job_id, job.frame.image)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policy": self.policy,
                "decisions": dict(self.decisions),
                "submit_errors": self.submit_errors,
            }
