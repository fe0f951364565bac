"""Capture from real video: files through OpenCV/FFmpeg and a real MJPEG-over-HTTP camera.

The vanishing camera is an HTTP server (started by the test on a free port) that
streams JPEG frames encoded from vtest.avi as ``multipart/x-mixed-replace``, the
way IP cameras serve MJPEG; OpenCV's FFmpeg backend reads it like any camera URL.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edged.cameraconfig import CameraConfig, SourceKind, redact_source, source_kind
from edged.capture import Backoff, CaptureSource, CaptureState, Frame, FrameRing
from edgefed.errors import CaptureError
from edgefed.testing.wait import wait_until
from tests.support.mjpeg import MjpegCamera
from tests.support.paths import VTEST

WAIT_S = 20.0  # generous upper bound for conditions; never a timing assertion


def frame(i: int) -> Frame:
    return Frame("cam", i, float(i), float(i), np.zeros((2, 2, 3), np.uint8))


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    cap = cv2.VideoCapture(str(VTEST))
    out = []
    for _ in range(12):
        ok, image = cap.read()
        assert ok
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    cap.release()
    return out


@pytest.fixture
def short_clip(tmp_path: Path) -> Path:
    """A real 8-frame MJPG/AVI file cut from vtest.avi."""
    path = tmp_path / "short.avi"
    cap = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (768, 576))
    for _ in range(8):
        ok, image = cap.read()
        assert ok
        writer.write(image)
    writer.release()
    cap.release()
    return path


@pytest.fixture
def camera(jpegs: list[bytes]) -> Iterator[MjpegCamera]:
    cam = MjpegCamera(jpegs)
    yield cam
    if not cam.halt.is_set():
        cam.stop()


def drain(ring: FrameRing, stop: threading.Event, seen: list[Frame]) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            f = ring.get(timeout=0.1)
            if f is not None:
                seen.append(f)

    t = threading.Thread(target=run, name="test-consumer", daemon=True)
    t.start()
    return t


# -- FrameRing --------------------------------------------------------------------------
def test_ring_newest_wins_and_counts_drops() -> None:
    ring = FrameRing(3)
    for i in range(5):
        assert ring.put(frame(i))
    assert ring.drops == 2 and len(ring) == 3
    assert [ring.get(0).index for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]
    assert ring.get(timeout=0.01) is None


def test_ring_close_wakes_a_waiting_consumer() -> None:
    ring = FrameRing(2)
    got: list[Frame | None] = []
    t = threading.Thread(target=lambda: got.append(ring.get(timeout=None)))
    t.start()
    ring.close()
    t.join(WAIT_S)
    assert not t.is_alive() and got == [None]
    assert not ring.put(frame(0))


def test_lossless_ring_blocks_instead_of_dropping() -> None:
    ring = FrameRing(2, lossless=True)
    assert ring.put(frame(0)) and ring.put(frame(1))
    assert not ring.put(frame(2), timeout=0.01)  # full: refused, not dropped
    done = threading.Event()
    t = threading.Thread(target=lambda: done.set() if ring.put(frame(2)) else None)
    t.start()
    assert ring.get(0) is not None
    t.join(WAIT_S)
    assert done.is_set() and ring.drops == 0
    assert [ring.get(0).index for _ in range(2)] == [1, 2]  # type: ignore[union-attr]


def test_ring_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        FrameRing(0)


# -- config and pure helpers ------------------------------------------------------------
def test_source_kinds_and_config() -> None:
    assert source_kind(0) is SourceKind.DEVICE
    assert source_kind("/dev/video2") is SourceKind.DEVICE
    assert source_kind("rtsp://cam/stream") is SourceKind.STREAM
    assert source_kind("HTTP://cam/video.mjpg") is SourceKind.STREAM
    assert source_kind("clips/a.mp4") is SourceKind.FILE
    assert CameraConfig(name="c", source="1").source == 1  # env overrides arrive as strings
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        CameraConfig(name="c", source="a.mp4", reconnect_initial_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError, match="extra"):
        CameraConfig.model_validate({"name": "c", "source": "a.mp4", "fps": 3})
    with pytest.raises(ValidationError, match="device index"):
        CameraConfig(name="c", source=-1)


def test_object_masks_are_polygons_in_shares_of_the_frame() -> None:
    lawn = [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]]
    masks = CameraConfig(name="c", source="a.mp4", object_masks=[lawn]).object_masks
    assert masks == [[(0, 0.5), (0.5, 0.5), (0.5, 1), (0, 1)]]
    assert CameraConfig(name="c", source="a.mp4").object_masks == []
    with pytest.raises(ValidationError, match=r"object_masks\.0\n.*at least 3 items"):
        CameraConfig(name="c", source="a.mp4", object_masks=[[[0, 0], [1, 1]]])
    with pytest.raises(ValidationError, match=r"object_masks\.0\.1\.0\n.*less than or equal to 1"):
        CameraConfig(name="c", source="a.mp4", object_masks=[[[0, 0], [320, 0], [0, 1]]])


def test_redact_source_drops_the_user_and_password_of_a_url_only() -> None:
    assert redact_source("rtsp://admin:S3cret@10.0.0.5:554/h264") == "rtsp://10.0.0.5:554/h264"
    assert redact_source("rtsp://admin@cam/stream") == "rtsp://cam/stream"
    assert redact_source("http://u:p@ss@cam:80/v.mjpg?x=1") == "http://cam:80/v.mjpg?x=1"
    for password in ("Pa#ss", "pa/ss", "pa?ss", "p@ss"):  # unencoded, as people write them
        assert redact_source(f"rtsp://admin:{password}@10.0.0.5/x") == "rtsp://10.0.0.5/x"
    assert redact_source("rtsp://cam:554/a@b") == "rtsp://b"  # an "@" in a path: more goes
    assert redact_source("clips/me@home.mp4") == "clips/me@home.mp4"
    assert redact_source("/dev/video0") == "/dev/video0"
    assert redact_source(2) == "2"


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    plain = Backoff(0.5, 4.0, 0.0)
    assert [plain.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    plain.reset()
    assert plain.next() == 0.5
    jittered = Backoff(1.0, 30.0, 0.2, random.Random(7))
    for base in (1.0, 2.0, 4.0, 8.0):
        assert 0.8 * base <= jittered.next() <= 1.2 * base


# -- files ------------------------------------------------------------------------------
def test_file_is_read_to_the_end(short_clip: Path) -> None:
    ring = FrameRing(16, lossless=True)
    src = CaptureSource(CameraConfig(name="clip", source=str(short_clip), pace="fast"), ring)
    src.start()
    wait_until("end of file", lambda: src.stats().state is CaptureState.ENDED, WAIT_S)
    frames = [ring.get(0) for _ in range(len(ring))]
    assert [f.index for f in frames if f] == list(range(8))
    assert all(f and f.image.shape == (576, 768, 3) and f.camera == "clip" for f in frames)
    st = src.stats()
    assert st.frames == 8 and st.drops == 0 and st.reconnects == 0
    src.stop()


def test_file_loops(short_clip: Path) -> None:
    ring = FrameRing(4, lossless=True)
    cfg = CameraConfig(name="clip", source=str(short_clip), pace="fast", loop=True)
    src = CaptureSource(cfg, ring)
    seen: list[Frame] = []
    stop = threading.Event()
    consumer = drain(ring, stop, seen)
    src.start()
    wait_until("20 frames from an 8-frame looping file", lambda: len(seen) >= 20, WAIT_S)
    src.stop()
    stop.set()
    consumer.join(WAIT_S)
    assert [f.index for f in seen[:20]] == list(range(20))
    assert np.array_equal(seen[0].image, seen[8].image)  # frame 8 is the first frame again
    assert src.stats().state is CaptureState.STOPPED


def test_a_looping_file_replaced_by_one_without_frames_fails_instead_of_spinning(
    short_clip: Path, tmp_path: Path
) -> None:
    """The file swapped (atomic rename) for its own first 5,700 bytes, as a half-copied
    replacement is: OpenCV opens it and decodes nothing. The camera fails with the cause,
    as it would at start; before, it reopened the file ~10,000 times a second, a CPU
    core busy and its state ``running``."""
    ring = FrameRing(4)
    cfg = CameraConfig(name="clip", source=str(short_clip), pace="fast", loop=True)
    opens = [0]

    def opener(source: str | int) -> cv2.VideoCapture:
        opens[0] += 1
        return cv2.VideoCapture(source)

    src = CaptureSource(cfg, ring, opener=opener)
    stop = threading.Event()
    consumer = drain(ring, stop, [])
    src.start()
    try:
        wait_until("a few passes", lambda: src.stats().frames >= 20, WAIT_S)
        cut = tmp_path / "cut.avi"
        cut.write_bytes(short_clip.read_bytes()[:5700])
        cut.replace(short_clip)
        wait_until("the camera to fail", lambda: src.stats().state is CaptureState.FAILED, WAIT_S)
    finally:
        src.stop()
        stop.set()
        consumer.join(WAIT_S)
    assert src.stats().last_error == f"camera clip: video file {short_clip} has no decodable frame"
    assert opens[0] < 50


def test_missing_file_fails_at_start_with_the_cause(tmp_path: Path) -> None:
    src = CaptureSource(CameraConfig(name="c", source=str(tmp_path / "nope.mp4")), FrameRing(2))
    with pytest.raises(CaptureError, match=r"nope\.mp4 does not exist"):
        src.start()
    assert src.stats().state is CaptureState.FAILED


def test_corrupt_file_fails_at_start_with_the_cause(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 40)
    src = CaptureSource(CameraConfig(name="c", source=str(bad)), FrameRing(2))
    with pytest.raises(CaptureError, match=r"bad\.avi (cannot be opened|has no decodable frame)"):
        src.start()
    assert "\n" not in (src.stats().last_error or "\n")


def test_a_file_truncated_while_it_is_read_is_a_camera_error(tmp_path: Path) -> None:
    """vtest.avi cut to a third after 100 frames: the reads stop near frame 260 of the 795
    its header declares, which is counted and reported, not taken for its end."""
    video = tmp_path / "vtest.avi"
    video.write_bytes(VTEST.read_bytes())
    ring = FrameRing(4, lossless=True)
    src = CaptureSource(CameraConfig(name="cut", source=str(video), pace="fast"), ring)
    seen: list[Frame] = []
    stop = threading.Event()
    consumer = drain(ring, stop, seen)
    src.start()
    wait_until("100 frames", lambda: len(seen) >= 100, WAIT_S)
    with video.open("r+b") as f:
        f.truncate(video.stat().st_size // 3)
    wait_until("the reads to stop", lambda: src.stats().state is CaptureState.ENDED, WAIT_S)
    stop.set()
    consumer.join(WAIT_S)
    st = src.stats()
    assert st.errors == 1 and 100 <= st.frames < 795
    assert st.last_error == (f"video file ended at frame {st.frames} of 795: truncated or corrupt")


def test_a_looped_truncated_file_warns_once_and_counts_every_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = tmp_path / "cut.avi"
    video.write_bytes(VTEST.read_bytes()[: VTEST.stat().st_size // 10])
    ring = FrameRing(4)
    src = CaptureSource(CameraConfig(name="cut", source=str(video), pace="fast", loop=True), ring)
    stop = threading.Event()
    consumer = drain(ring, stop, [])
    caplog.set_level(logging.DEBUG, logger="edged.capture")
    src.start()
    try:
        wait_until("three passes", lambda: src.stats().errors >= 3, WAIT_S)
    finally:
        src.stop()
        stop.set()
        consumer.join(WAIT_S)
    about = [r for r in caplog.records if "truncated or corrupt" in r.getMessage()]
    assert [r.levelno for r in about][:3] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert src.stats().last_error is not None and "of 795" in src.stats().last_error


def test_a_whole_file_is_no_camera_error(short_clip: Path) -> None:
    src = CaptureSource(
        CameraConfig(name="clip", source=str(short_clip), pace="fast"), FrameRing(16, lossless=True)
    )
    src.start()
    wait_until("end of file", lambda: src.stats().state is CaptureState.ENDED, WAIT_S)
    assert (src.stats().errors, src.stats().last_error) == (0, None)


# -- live sources -----------------------------------------------------------------------
def test_vanishing_camera_reconnects_and_frames_flow_again(
    camera: MjpegCamera, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edged.capture")
    ring = FrameRing(4)
    cfg = CameraConfig(
        name="ipcam",
        source=camera.url,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.4,
        io_timeout_s=3,
    )
    src = CaptureSource(cfg, ring)
    seen: list[Frame] = []
    stop = threading.Event()
    consumer = drain(ring, stop, seen)
    src.start()
    try:
        wait_until("first frames from the camera", lambda: len(seen) >= 10, WAIT_S)
        assert src.stats().state is CaptureState.RUNNING
        assert seen[0].image.shape == (576, 768, 3)
        port = camera.port
        camera.stop()  # the camera vanishes
        wait_until(
            "reconnecting state", lambda: src.stats().state is CaptureState.RECONNECTING, WAIT_S
        )
        wait_until("failed reopen attempts", lambda: src.stats().retries >= 2, WAIT_S)
        assert src.stats().last_error
        before = len(seen)
        again = MjpegCamera(camera.jpegs, port=port)  # back on the same address
        try:
            wait_until(
                "frames after the camera came back", lambda: len(seen) >= before + 10, WAIT_S
            )
            st = src.stats()
            assert st.state is CaptureState.RUNNING and st.reconnects == 1
            wait_until(  # frames flowed for reconnect_max_s: the outage is over
                "the end of the outage in the log",
                lambda: any("reading the stream works again" in r.message for r in caplog.records),
                WAIT_S,
            )
            indexes = [f.index for f in seen]
            assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
        finally:
            src.stop()
            again.stop()
    finally:
        src.stop()
        stop.set()
        consumer.join(WAIT_S)
    assert src.stats().state is CaptureState.STOPPED


def test_an_unreachable_camera_is_named_with_its_cause_once_and_again_when_it_is_back(
    jpegs: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """On main a camera that could not be opened was never named in edged's log: the
    journal showed only OpenCV's own lines and a capture rate of 0.0 fps."""
    with socket.socket() as s:  # the camera's address, with nothing listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/video.mjpg"
    cfg = CameraConfig(name="door", source=url, reconnect_initial_s=0.05, reconnect_max_s=0.1)
    src = CaptureSource(cfg, FrameRing(2))
    caplog.set_level(logging.INFO, logger="edged.capture")
    src.start()
    camera: MjpegCamera | None = None
    try:
        wait_until("many failed opens", lambda: src.stats().retries >= 5, WAIT_S)
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert lines == [
            f"camera door: opening the stream failed: cannot open stream {url} "
            "(while it keeps failing, one line every 300 s)"
        ]
        camera = MjpegCamera(jpegs, port=port)  # the camera comes up
        wait_until("frames", lambda: src.stats().state is CaptureState.RUNNING, WAIT_S)
        back = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
        assert len(back) == 1 and back[0].startswith("camera door: opening the stream works")
    finally:
        src.stop()
        if camera is not None:
            camera.stop()


def test_a_camera_that_drops_each_session_is_reopened_with_backoff_as_one_outage(
    jpegs: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """On main a stream that opened and then ended was reopened at once, whatever the
    backoff said, and each cycle logged two lines: a camera closing every session after a
    frame or two got ~190 new connections a second and 33 M log lines a day."""
    camera = MjpegCamera(jpegs, frames_per_session=2)
    cfg = CameraConfig(
        name="flappy", source=camera.url, reconnect_initial_s=0.2, reconnect_max_s=0.8
    )
    ring = FrameRing(4)
    seen: list[Frame] = []
    stop = threading.Event()
    consumer = drain(ring, stop, seen)
    caplog.set_level(logging.INFO, logger="edged.capture")
    src = CaptureSource(cfg, ring, rng=random.Random(1))
    src.start()
    try:
        wait_until("three reconnects", lambda: src.stats().reconnects >= 3, WAIT_S)
        time.sleep(2.0)  # the waits have grown to reconnect_max_s: ~2 more sessions
        sessions, stats = camera.sessions, src.stats()
    finally:
        src.stop()
        stop.set()
        consumer.join(WAIT_S)
        camera.stop()
    assert seen and stats.reconnects >= 3
    assert sessions <= 10, f"{sessions} sessions: reopened without waiting"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith(
        f"camera flappy: reading the stream failed: stream {camera.url} lost"
    ), lines


def test_an_unreachable_camera_never_shows_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On main the camera URL went as given into last_error (/readyz, the status API) and
    the journal, the camera's user and password with it."""
    cfg = CameraConfig(
        name="gate",
        source="rtsp://admin:S3cret@127.0.0.1:1/stream",  # nothing listens on port 1
        reconnect_initial_s=0.05,
        reconnect_max_s=0.1,
    )
    src = CaptureSource(cfg, FrameRing(2))
    caplog.set_level(logging.DEBUG, logger="edged.capture")
    src.start()
    try:
        wait_until("failed opens", lambda: src.stats().retries >= 2, WAIT_S)
    finally:
        src.stop()
    assert src.stats().last_error == "cannot open stream rtsp://127.0.0.1:1/stream"
    assert caplog.records and "S3cret" not in caplog.text


def test_a_lost_camera_never_shows_its_password(
    jpegs: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    camera = MjpegCamera(jpegs, frames_per_session=2)  # ends each session: "lost"
    url = camera.url.replace("http://", "http://admin:S3cret@")
    cfg = CameraConfig(name="yard", source=url, reconnect_initial_s=0.05, reconnect_max_s=0.1)
    ring = FrameRing(4)
    seen: list[Frame] = []
    stop = threading.Event()
    consumer = drain(ring, stop, seen)
    caplog.set_level(logging.DEBUG, logger="edged.capture")
    src = CaptureSource(cfg, ring)
    src.start()
    try:
        wait_until("a lost stream", lambda: "lost" in (src.stats().last_error or ""), WAIT_S)
        error = src.stats().last_error
    finally:
        src.stop()
        stop.set()
        consumer.join(WAIT_S)
        camera.stop()
    assert error == f"stream {camera.url} lost"
    assert "stream failed" in caplog.text and "S3cret" not in caplog.text


def test_stop_returns_while_backing_off() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = CameraConfig(
        name="gone",
        source=f"http://127.0.0.1:{port}/video.mjpg",
        reconnect_initial_s=30,
        reconnect_max_s=60,
    )
    src = CaptureSource(cfg, FrameRing(2))
    src.start()  # a live source never fails start(): it keeps trying
    wait_until("first failed attempt", lambda: src.stats().retries >= 1, WAIT_S)
    assert src.stats().state is CaptureState.CONNECTING
    src.stop(timeout=WAIT_S)  # the thread is in a 30 s backoff wait
    assert src.stats().state is CaptureState.STOPPED


def test_missing_device_is_retried_not_fatal() -> None:
    src = CaptureSource(
        CameraConfig(name="usb", source=63, reconnect_initial_s=0.05, reconnect_max_s=0.1),
        FrameRing(2),
    )
    src.start()
    wait_until("device retries", lambda: src.stats().retries >= 3, WAIT_S)
    st = src.stats()
    assert st.state is CaptureState.CONNECTING and "device 63" in (st.last_error or "")
    src.stop()
