"""A kubelet stand-in: serves the real v1beta1 Registration service on ``kubelet.sock``.

Like the kubelet's device manager it checks the API version, records the request, then
dials the plugin's endpoint and follows its ListAndWatch stream; tests read the
registrations and device lists from queues. ``restart()`` behaves as a kubelet restart:
it stops serving, wipes every socket in the directory and serves a new ``kubelet.sock``.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from drivers.deviceplugin.stubs import API_VERSION, KUBELET_SOCKET, Api

WAIT_S = 15.0  # generous: the CI machine has 2 busy cores


class KubeletStandIn:
    def __init__(self, api: Api, socket_dir: Path) -> None:
        self.api = api
        self.socket_dir = socket_dir
        self.socket = socket_dir / KUBELET_SOCKET
        self.registrations: queue.Queue[Any] = queue.Queue()
        self.device_lists: queue.Queue[dict[str, str]] = queue.Queue()
        self._server: grpc.Server | None = None
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    # the Registration service
    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.version != API_VERSION:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported {request.version}")
        self.registrations.put(request)
        threading.Thread(
            target=self._follow, args=(request.endpoint,), name="standin-watch", daemon=True
        ).start()
        return self.api.pb.Empty()

    def _follow(self, endpoint: str) -> None:
        channel = grpc.insecure_channel(f"unix:{self.socket_dir / endpoint}")
        with self._lock:
            self._channels.append(channel)
        stub = self.api.grpc.DevicePluginStub(channel)
        try:
            stub.GetDevicePluginOptions(self.api.pb.Empty(), timeout=WAIT_S)
            for response in stub.ListAndWatch(self.api.pb.Empty()):
                self.device_lists.put({d.ID: d.health for d in response.devices})
        except grpc.RpcError:
            return  # the stand-in or the plugin stopped

    def start(self) -> KubeletStandIn:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self.api.grpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None

    def restart(self) -> None:
        """Stop, wipe the directory's sockets as a restarting kubelet does, serve again."""
        self.stop()
        for path in self.socket_dir.iterdir():
            if path.is_socket():
                path.unlink()
        self.start()

    def next_registration(self) -> Any:
        return self.registrations.get(timeout=WAIT_S)

    def next_devices(self) -> dict[str, str]:
        return self.device_lists.get(timeout=WAIT_S)

    def devices_until(self, expected: dict[str, str]) -> dict[str, str]:
        """Read streamed lists until one equals ``expected`` (fails after WAIT_S per list)."""
        while True:
            got = self.next_devices()
            if got == expected:
                return got
