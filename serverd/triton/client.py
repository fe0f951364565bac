"""One Triton gRPC endpoint (serverd's own or an external one), through tritonclient's aio API.

``infer`` sends one JPEG to a model of backend ``npu`` or ``echo`` and returns the
decoded JSON. Errors are translated once, here: a failure of the endpoint (cannot
connect, timed out, model not loaded there) raises ``OffloadError`` and the job is
re-placed elsewhere; a failure of the job itself (the image cannot be decoded, the
model raised on it) raises ``ModelError`` and goes back to the device as an error.

Every call to an external Triton whose config names a ``key_file`` carries its key
(``headers``, ``serverd.triton.access``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from edgefed.errors import ModelError, OffloadError
from serverd.triton.repository import INPUT, OUTPUT

# Codes that say "this endpoint cannot serve now", not "this job is bad".
_ENDPOINT_CODES = frozenset(
    {
        "StatusCode.UNAVAILABLE",
        "StatusCode.DEADLINE_EXCEEDED",
        "StatusCode.CANCELLED",
        "StatusCode.UNKNOWN",
        "StatusCode.NOT_FOUND",
        "StatusCode.RESOURCE_EXHAUSTED",
        "StatusCode.UNIMPLEMENTED",
    }
)
_MAX_MESSAGE = 2**31 - 1
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    # a restarted Triton on the same port is found within a second, not after a backoff
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # its own connection: with gRPC's global subchannel pool a new channel (``renew``)
    # would share the old one's, still backing off after Triton died
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class InferReply:
    results: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _one_line(exc: InferenceServerException) -> str:
    return " ".join(str(exc.message() or exc).split())


def parse_reply(document: bytes) -> InferReply:
    """The backend's JSON document; ModelError if it is not what the backends write."""
    try:
        data = json.loads(document)
        results = data["results"]
        timings = {str(k): float(v) for k, v in data.get("timings_ms", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"backend returned an unreadable result: {exc}") from exc
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ModelError("backend returned results that are not a list of objects")
    bad = sorted(k for k, v in timings.items() if not (math.isfinite(v) and v >= 0))
    if bad:  # NaN is no JSON for the edge, and a negative time no duration
        raise ModelError(f"backend returned timings that are not durations: {', '.join(bad)}")
    return InferReply(results, timings)


class TritonEndpoint:
    """A gRPC connection to one Triton; create and use it inside one event loop."""

    def __init__(
        self,
        name: str,
        url: str,
        timeout_s: float = 10.0,
        headers: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        """``headers``: what each call sends, read at the call (an external Triton's
        ``key_file`` may change); none for serverd's own Tritons."""
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self._headers = headers
        self._client: aioclient.InferenceServerClient | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def _connect(self) -> aioclient.InferenceServerClient:
        if self._client is None:
            self._client = aioclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    async def infer(self, model: str, jpeg: bytes) -> InferReply:
        tensor = grpcclient.InferInput(INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[jpeg]], dtype=np.object_))
        try:
            reply = await self._connect().infer(
                model,
                [tensor],
                outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
                headers=dict(self._headers()),
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            if str(exc.status()) in _ENDPOINT_CODES:
                raise OffloadError(f"Triton {self.name} ({self.url}): {_one_line(exc)}") from exc
            raise ModelError(f"{model}: {_one_line(exc)}") from exc
        documents = reply.as_numpy(OUTPUT)
        if documents is None or documents.size != 1:
            raise ModelError(f"{model}: Triton returned no {OUTPUT} tensor")
        return parse_reply(bytes(documents.reshape(-1)[0]))

    async def ready(self) -> bool:
        """True if the server answers ready within the timeout."""
        try:
            return bool(
                await self._connect().is_server_ready(
                    headers=dict(self._headers()), client_timeout=2.0
                )
            )
        except InferenceServerException:
            return False

    async def models(self) -> set[str]:
        """Names of the models that are READY on this endpoint (OffloadError if unreachable)."""
        try:
            index = await self._connect().get_model_repository_index(
                headers=dict(self._headers()), as_json=True, client_timeout=5.0
            )
        except InferenceServerException as exc:
            raise OffloadError(f"Triton {self.name} ({self.url}): {_one_line(exc)}") from exc
        return {m["name"] for m in index.get("models", []) if m.get("state") == "READY"}

    def renew(self) -> None:
        """Open a new channel for the next calls (on the loop). After Triton restarted on
        the same port the old one may still be waiting out its reconnect back-off, failing
        calls; it is closed once the calls already on it have had ``timeout_s``."""
        old, self._client = self._client, None
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, client: aioclient.InferenceServerClient) -> None:
        try:
            await asyncio.sleep(self.timeout_s + 1.0)
        finally:
            await client.close()

    async def close(self) -> None:
        """Close the channel (and any old one still retiring)."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.close()
