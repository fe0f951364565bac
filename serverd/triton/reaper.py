"""Waiting for the python backend stubs a dead Triton leaves, where serverd adopts them.

Each Triton runs in a session of its own (``start_new_session``) and its python backend
stubs are its children. When Triton dies, the kernel hands them to the nearest child
subreaper, or to PID 1: serverd itself in a container started with ``--entrypoint
serverd`` and no init. Nothing waited for them there: each crash left one zombie per
model instance (measured with the real Triton), until the container's limit on processes
stopped every fork. ``reap_orphans`` waits for the exited children of this process that
lie in another session than its own and lead none: a Triton (the leader of its session)
is left to its ``Popen``, and a short-lived helper (``subprocess.run``) shares serverd's
session, so no exit status that someone waits for is taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

PR_GET_CHILD_SUBREAPER = 37


def adopts_orphans() -> bool:
    """Whether orphaned processes come to this process: PID 1, or a child subreaper."""
    if os.getpid() == 1:
        return True
    flag = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return False
    return bool(flag.value)


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process that this module needs."""

    pid: int
    state: str  # "Z": exited, waiting for its parent to reap it
    ppid: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s entry, None if it is gone (the name in parentheses may hold anything)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[3]))


def children(parent: int) -> list[ProcStat]:
    """The processes whose parent is ``parent`` now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st.ppid == parent:
            found.append(st)
    return found


def reap_orphans() -> int:
    """Wait for the adopted, exited stubs of dead Tritons; returns how many."""
    own_session = os.getsid(0)
    reaped = 0
    for child in children(os.getpid()):
        if child.state != "Z" or child.session in (own_session, child.pid):
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(child.pid, os.WNOHANG)[0] == child.pid:
                reaped += 1
    if reaped:
        log.info("reaped %d exited process(es) left by a dead Triton", reaped)
    return reaped
