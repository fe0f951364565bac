"""The faults of ``python -m bench faults``: each injects one and undoes it.

System faults run while the edge submits jobs (``System``): broker restart, network
partition (the broker stopped with SIGSTOP, so connections hang rather than close),
serverd kill -9 and restart (its Triton dies with it), Triton kill -9 (serverd's
supervisor starts another), a clock jump of the edge's wall
clock forward and back, the outbox locked by another process for longer than SQLite's
busy timeout, and the outbox pushed past its bound while the broker is down.

Standalone faults need no traffic: a corrupt outbox file (refused with a clear error,
left as it was for the operator), and camera loss (a video file truncated while read,
and one deleted while a looping capture reads it).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench._faults_broker import ShippedBroker
from bench._faults_system import MAX_JOBS, Edge, JumpClock, Ledger, Serverd, wait_for
from bench.gating import VTEST
from edged.cameraconfig import CameraConfig
from edged.capture import CaptureSource, CaptureState
from edged.offload.outbox import Outbox
from edged.offload.records import NewJob, OutboxConfig
from edged.ring import FrameRing
from edgefed.errors import OffloadError
from edgefed.wire import OffloadRequest, new_job_id

OUTAGE_S = 3.0  # how long a broker, a partition or a lock lasts


@dataclass
class System:
    broker: ShippedBroker
    serverd: Serverd
    edge: Edge
    ledger: Ledger
    clock: JumpClock
    directory: Path


def broker_restart(s: System) -> None:
    s.broker.stop()
    time.sleep(OUTAGE_S)
    s.broker.start()


def partition(s: System) -> None:
    pid = s.broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    time.sleep(OUTAGE_S)
    os.kill(pid, signal.SIGCONT)


def serverd_kill9(s: System) -> None:
    s.serverd.kill9()
    wait_for(
        "the broker to announce serverd offline", lambda: not s.edge.server_online.is_set(), 30
    )
    s.serverd.start()
    wait_for("serverd online again", s.edge.server_online.is_set, 180)


def triton_kill9(s: System) -> None:
    """serverd's Triton killed with SIGKILL under load; its supervisor starts a new one."""
    (triton,) = s.serverd.tritons()
    triton.kill()
    triton.wait(10)
    wait_for(
        "a new Triton", lambda: [t.pid for t in s.serverd.tritons()] not in ([], [triton.pid]), 60
    )


def clock_jump(s: System) -> None:
    """The edge's wall clock forward an hour, then back two, then forward an hour again
    (to true time); its jobs stay on serverd's clock, as its replies teach it."""
    for step in (3_600_000, -7_200_000, 3_600_000):
        s.clock.offset_ms += step
        time.sleep(OUTAGE_S / 3)


def locked_sqlite(s: System) -> None:
    """Another process holds the outbox's write lock for longer than the busy timeout."""
    hold = 7.0  # the outbox waits 5 s for a lock, then its transaction fails
    script = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", script, str(s.edge.outbox_path), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    locker.wait(hold + 10)


def outbox_full(s: System) -> None:
    """With the broker down, twice the outbox's bound is submitted: the rest are shed or
    refused, each counted and told, none lost."""
    s.broker.stop()
    for _ in range(2 * MAX_JOBS):
        s.edge.submit()
    s.broker.start()


SYSTEM_FAULTS: dict[str, Callable[[System], None]] = {
    "broker_restart": broker_restart,
    "partition": partition,
    "serverd_kill9": serverd_kill9,
    "triton_kill9": triton_kill9,
    "clock_jump": clock_jump,
    "locked_sqlite": locked_sqlite,
    "outbox_full": outbox_full,
}


# --- standalone ---


def corrupt_sqlite(directory: Path) -> dict[str, int | bool | list[str]]:
    """An outbox with 20 jobs, damaged three ways (its header, a page in the middle, cut
    short): opening it must fail with an ``OffloadError`` naming the file, and leave the
    file as it was (the operator's copy to recover from). Or, if SQLite cannot see the
    damage, every job must still be there."""
    cases = {"header": 0, "middle": 0, "truncated": 0}
    survived = 0
    for damage in cases:
        folder = directory / f"corrupt-{damage}"
        folder.mkdir(parents=True)
        config = OutboxConfig(path=folder / "outbox.sqlite")
        outbox = Outbox(config)
        for n in range(20):
            outbox.enqueue(NewJob(_request(n), b"\xff\xd8" + bytes(30_000), "", "bench", None))
        outbox.close()
        data = bytearray(config.path.read_bytes())
        if damage == "header":
            data[:100] = os.urandom(100)
        elif damage == "middle":
            middle = len(data) // 2
            data[middle : middle + 16384] = os.urandom(16384)
        else:
            del data[len(data) // 3 :]
        config.path.write_bytes(bytes(data))
        try:
            reopened = Outbox(config)
        except OffloadError as exc:
            clear = str(config.path) in str(exc) and "\n" not in str(exc)
            survived += clear and config.path.read_bytes() == bytes(data)
            cases[damage] = 1
            continue
        try:
            survived += sum(reopened.counts().values()) == 20
        except sqlite3.Error:
            pass  # the damage escaped as a raw SQLite error: not survived
        finally:
            reopened.close()
    refused = sorted(damage for damage, n in cases.items() if n)
    return {"survived": survived == len(cases), "refused": len(refused), "refused_damage": refused}


def _request(n: int) -> OffloadRequest:
    now = int(time.time() * 1000)
    return OffloadRequest(
        job_id=new_job_id(), device_id="site/cam-a", model="echo", deadline=now + 60_000,
        created=now + n, payload_kind="jpeg",
    )  # fmt: skip


def camera_loss(directory: Path) -> dict[str, int | bool]:
    """A video file truncated while it is read is a camera error; a looping camera whose
    file is deleted fails with its cause. The capture thread survives both."""
    folder = directory / "camera"
    folder.mkdir(parents=True)
    cut, gone = folder / "cut.avi", folder / "gone.avi"
    shutil.copy(VTEST, cut)
    shutil.copy(VTEST, gone)
    truncated = CaptureSource(CameraConfig(name="cut", source=str(cut), pace="fast"), FrameRing(4))
    looping = CaptureSource(
        CameraConfig(name="gone", source=str(gone), pace="fast", loop=True), FrameRing(4)
    )
    truncated.start()
    looping.start()
    try:
        wait_for("frames from both cameras", lambda: truncated.stats().frames > 50, 30)
        with cut.open("r+b") as f:
            f.truncate(cut.stat().st_size // 3)
        gone.unlink()
        wait_for("the cut file to end", lambda: truncated.stats().state is CaptureState.ENDED, 60)
        wait_for(
            "the deleted file to fail", lambda: looping.stats().state is CaptureState.FAILED, 120
        )
    finally:
        truncated.stop()
        looping.stop()
    reported = [truncated.stats().last_error, looping.stats().last_error]
    survived = truncated.stats().errors == 1 and all(reported)
    return {"survived": survived, "camera_errors": sum(map(bool, reported))}
