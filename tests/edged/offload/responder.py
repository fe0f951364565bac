"""A tiny stand-in for serverd built only on the wire contract: dedupes and answers."""

from __future__ import annotations

import threading
import time
from collections import Counter

from edgefed.clock import now_ms
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.wire import (
    OffloadAccepted,
    OffloadErrorMessage,
    OffloadResult,
    Topics,
    decode_request,
    encode_message,
)


class Responder:
    """Answers every request once per job id; a duplicate gets the stored result again."""

    def __init__(
        self,
        port: int,
        prefix: str = "edgefed",
        unknown: frozenset[str] = frozenset(),
        config: MqttConfig | None = None,
    ):
        self.topics = Topics(prefix)
        config = config or MqttConfig(port=port, client_id=f"responder-{time.monotonic_ns()}")
        self.mqtt = MqttClient(config)
        self.processed: Counter[str] = Counter()
        self.order: list[str] = []
        self._answers: dict[str, bytes] = {}
        self._unknown = unknown
        self._lock = threading.Lock()
        self.mqtt.subscribe(self.topics.requests_filter(), self._on_request)

    def start(self) -> Responder:
        self.mqtt.start()
        assert self.mqtt.wait_connected(10)
        return self

    def stop(self) -> None:
        self.mqtt.stop()

    def _on_request(self, topic: str, payload: bytes) -> None:
        message = decode_request(payload)
        match = self.topics.parse(topic)
        assert match is not None
        req = message.request
        reply_topic = Topics(match.prefix).reply(req.device_id)
        with self._lock:
            self.order.append(req.job_id)
            answer = self._answers.get(req.job_id)
            if answer is None:
                self.processed[req.job_id] += 1
                answer = self._answer(req.job_id, req.device_id, req.model, len(message.body))
                self._answers[req.job_id] = answer
        if req.model not in self._unknown:
            accepted = OffloadAccepted(job_id=req.job_id, device_id=req.device_id, served_by="r")
            self.mqtt.publish(reply_topic, encode_message(accepted))
        self.mqtt.publish(reply_topic, answer)

    def _answer(self, job_id: str, device: str, model: str, size: int) -> bytes:
        if model in self._unknown:
            return encode_message(
                OffloadErrorMessage(
                    job_id=job_id,
                    device_id=device,
                    code="unknown_model",
                    reason=f"model {model!r} is not served here",
                    retryable=False,
                )
            )
        return encode_message(
            OffloadResult(
                job_id=job_id,
                device_id=device,
                model=model,
                results=[{"bytes": size}],
                timings_ms={"infer": 0.1},
                served_by="responder",
                completed=now_ms(),
            )
        )
