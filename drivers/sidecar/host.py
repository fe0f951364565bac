"""The side-car process: hosts one driver and serves its supervisor over a socket.

Started by ``drivers.sidecar.driver`` as ``python -m drivers.sidecar.host --fd N`` with
one end of a private socket pair. It answers one request at a time, in order:

=========  ===============================  ===========================================
op         request                          answer
=========  ===============================  ===========================================
init       ``driver`` (its config)          ``pid``
devices                                     ``devices``
load       ``id``, ``path``, ``device``     ``device``, ``inputs``, ``outputs``
run        ``id``, ``shm``, ``tensors``     ``shm``, ``tensors`` (outputs), ``run_ms``
unload     ``id``
=========  ===============================  ===========================================

Every answer has ``ok``; a failure is ``{"ok": false, "error": "<one line>"}`` and the
process keeps serving. It exits when the socket closes (its supervisor went away).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from drivers import registry
from drivers.sidecar import protocol
from edgefed.driver import Driver, LoadedModel, one_line
from edgefed.errors import EdgeFedError

log = logging.getLogger("drivers.sidecar.host")


class Host:
    """The request handlers; owns the hosted driver, its models and the output arena."""

    def __init__(self) -> None:
        self._driver: Driver[Any] | None = None
        self._models: dict[int, LoadedModel] = {}
        self._reader = protocol.Reader()
        self._arena = protocol.Arena(f"edgefed-sc{os.getpid()}")

    def _loaded(self) -> Driver[Any]:
        if self._driver is None:
            raise EdgeFedError("side-car: no driver (init first)")
        return self._driver

    def _model(self, request: dict[str, Any]) -> LoadedModel:
        model = self._models.get(int(request["id"]))
        if model is None:
            raise EdgeFedError(f"side-car: no model {request['id']} loaded")
        return model

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "init":
            if self._driver is not None:
                raise EdgeFedError("side-car: driver already started")
            self._driver = registry.create(registry.parse_config(dict(request["driver"])))
            return {"pid": os.getpid()}
        if op == "devices":
            return {"devices": protocol.devices_to_json(self._loaded().devices())}
        if op == "load":
            model = self._loaded().load(Path(request["path"]), request.get("device"))
            self._models[int(request["id"])] = model
            return {
                "device": model.device,
                "inputs": protocol.specs_to_json(model.inputs),
                "outputs": protocol.specs_to_json(model.outputs),
            }
        if op == "run":
            feeds = self._reader.read(request, copy=False)
            start = time.perf_counter()
            outputs = self._model(request).run(feeds)
            run_ms = (time.perf_counter() - start) * 1000
            del feeds  # views into the supervisor's segment
            return {**self._arena.write(outputs), "run_ms": run_ms}
        if op == "unload":
            self._models.pop(int(request["id"])).close()
            return {}
        raise EdgeFedError(f"side-car: unknown op {op!r}")

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                request = protocol.receive(sock)
            except protocol.ChannelClosed:
                return
            try:
                answer = {"ok": True, **self.handle(request)}
            except (EdgeFedError, KeyError, TypeError, ValueError) as exc:
                answer = {"ok": False, "error": one_line(exc)}
            protocol.send(sock, answer)

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        if self._driver is not None:
            self._driver.close()
        self._reader.close()
        self._arena.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="inherited socket of the channel")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="side-car %(levelname)s %(message)s")
    sock = socket.socket(fileno=args.fd)
    host = Host()
    try:
        host.serve(sock)
    finally:
        host.close()
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
