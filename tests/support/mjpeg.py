"""An IP camera on this host: MJPEG over HTTP, as many cameras serve it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MjpegCamera:
    """An IP camera serving MJPEG over HTTP; ``stop()`` cuts every client like a power loss.
    ``frames_per_session``: the camera closes each session after that many frames (a
    flapping camera); ``sessions`` counts the sessions it served."""

    def __init__(
        self, jpegs: list[bytes], port: int = 0, frames_per_session: int | None = None
    ) -> None:
        self.jpegs = jpegs
        self.sessions = 0
        sessions = threading.Lock()  # the handlers run on threads of their own
        self.halt = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with sessions:
                    camera.sessions += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not camera.halt.is_set() and i != frames_per_session:
                        jpg = camera.jpegs[i % len(camera.jpegs)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}"
                        self.wfile.write(head.encode() + b"\r\n\r\n" + jpg + b"\r\n")
                        i += 1
                        camera.halt.wait(0.02)
                except OSError:
                    pass  # the client went away

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self.thread = threading.Thread(target=self.server.serve_forever, name="mjpeg-camera")
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
