"""Run the bundled ``tritonserver`` binary: start, wait for ready, restart, stop.

``TritonProcess`` is one process with its log in a file (a pipe would keep the python
backend's stubs, which inherit it, from ever seeing EOF). serverd's own Tritons are
*private*: gRPC on a unix socket in ``<workdir>/sockets`` (mode 0700, so only serverd's
user and root connect), no HTTP, and only the read-only metrics endpoint on a 127.0.0.1
port for serverd's scraper. On loopback every local user, pod or browser on the host
would reach every API (``docs/security.md``: shared memory over any /dev/shm object
Triton opens, model unloads, logging and trace settings, inference past serverd), and
Triton's own per-API key sits on its command line where ``ps`` shows it. A Triton made
with ``private=False`` listens on loopback TCP with every API open: for tests and tools.
It runs in its own process group so that stubs orphaned by a crash are killed with
it, and with its own shared-memory prefix so that a crash's leftovers are removed.
A start that fails raises ``OffloadError`` quoting Triton's own last error lines; one
that a stopping serverd abandons (``abandon_start``: large models may load for minutes)
stops the Triton it launched. (The module is long because a Triton's start, stop,
leftovers and log are one lifecycle, which ``TritonSupervisor`` and ``start_all`` drive.)

Triton dies with serverd: it is started through ``setpriv --pdeathsig TERM`` (the Linux
parent-death signal: SIGTERM when the thread that started it ends, which for serverd is
the life of the process: its event loop's executor threads and the watcher threads live
until stop), so
a ``kill -9`` of serverd no longer leaves a Triton holding its ports. Its pid is written
to ``<workdir>/<name>.pid``; a start first stops a Triton an earlier run left (one whose
pid file names a live ``tritonserver`` of this install), then starts its own.

``TritonSupervisor`` keeps one process running from a watcher thread: when it dies it
reports the instance down, restarts it within a budget and reports it up when ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgefed.errors import OffloadError
from edgefed.outage import Repeats
from edgefed.ports import free_ports
from serverd.triton.install import TritonInstall
from serverd.triton.reaper import adopts_orphans, proc_stat, reap_orphans

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")
LOG_MAX_BYTES = 16 * 1024 * 1024  # per Triton log, and as much again in <name>.log.1
LOG_CHECK_S = 10.0  # how often a running Triton's log size is checked
# util-linux (Essential in Debian): sets the parent-death signal, then execs Triton in its
# place (same pid). Not a preexec_fn: a fork of serverd, whose gRPC threads hold locks,
# must not run Python before exec (restarts from the watcher thread died of SIGABRT).
SETPRIV = "/usr/bin/setpriv"
# Log lines Triton prints on every CPU-only machine; never the cause of a failure.
_NOISE = re.compile(r"CudaDriverHelper|NVML|DCGM|CUDA|cuda|GPU|pinned memory")
_PREFIX = re.compile(r"^[EWI]\d{4} [\d:.]+\s+\d+\s+")
MAX_BACKOFF_S = 30.0  # between starts that could not launch Triton
# Triton appends ":<grpc-port>" to its gRPC address, a unix socket's path included
SOCKET_PORT = 0
SOCKETS = "sockets"  # under the workdir, Triton's working directory


class StartAbandoned(OffloadError):
    """``abandon_start`` was called while ``start`` waited for Triton (serverd stops)."""


class PrepareError(OffloadError):
    """Triton was not launched: the files it needs could not be written (a full disk, a
    read-only state dir). Not a crash of Triton's; worth trying again later."""


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> TritonPorts:
        http, grpc, metrics = free_ports(3)
        return cls(http, grpc, metrics)

    @classmethod
    def at(cls, base: int) -> TritonPorts:
        """HTTP on ``base``, gRPC on ``base + 1``, metrics on ``base + 2``."""
        return cls(base, base + 1, base + 2)

    def args(self) -> list[str]:
        """``tritonserver`` flags: the three endpoints on these ports of 127.0.0.1."""
        return [
            "--http-address=127.0.0.1",
            f"--http-port={self.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc}",
            *self.metrics_args(),
        ]

    def metrics_args(self) -> list[str]:
        """``tritonserver`` flags: the metrics endpoint on its port of 127.0.0.1."""
        return ["--metrics-address=127.0.0.1", f"--metrics-port={self.metrics}"]


def quote_errors(log_text: str, limit: int = 3) -> str:
    """Triton's own last error lines (noise removed), for an error message."""
    lines = [line.rstrip() for line in log_text.splitlines() if line.strip()]
    errors = [
        _PREFIX.sub("", line)
        for line in lines
        if (line.startswith("E") or line.startswith("error:")) and not _NOISE.search(line)
    ]
    chosen = errors[-limit:] or [_PREFIX.sub("", line) for line in lines[-limit:]]
    return " | ".join(" ".join(line.split()) for line in chosen) or "(nothing logged)"


def _zombie(pid: int) -> bool:
    """A process that exited and waits for its parent to reap it (it holds no ports)."""
    st = proc_stat(pid)
    return st is None or st.state == "Z"


class TritonProcess:
    """One ``tritonserver`` process serving ``repository``: over a private unix socket,
    or (``private=False``) on 127.0.0.1 ports."""

    def __init__(
        self,
        install: TritonInstall,
        repository: Path,
        workdir: Path,
        name: str,
        ports: TritonPorts,
        ready_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
        private: bool = True,
        log_max_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        """``private``: gRPC on ``socket_path`` only (of ``ports`` only ``metrics`` is
        used); False: HTTP and gRPC on ``ports`` of 127.0.0.1, every API open to whoever
        reaches them (tests and tools; serverd's own Tritons are private).
        ``log_max_bytes``: the log's size past which ``rotate_log`` moves it aside."""
        self.install = install
        self.repository = repository
        self.workdir = workdir
        self.name = name
        self.ports = ports
        self.ready_timeout = ready_timeout
        self._abandon = threading.Event()  # serverd stops: a start under way gives up
        self.extra_args = tuple(extra_args)
        self.private = private
        self.log_max_bytes = log_max_bytes
        self.socket_dir = workdir / SOCKETS  # mode 0700: serverd's user (and root) only
        self.socket_path = self.socket_dir / f"{name}.sock:{SOCKET_PORT}"
        self._socket_dir_fd: int | None = None
        self.log_path = workdir / f"{name}.log"
        self.pid_path = workdir / f"{name}.pid"
        self.shm_path = workdir / f"{name}.shm"  # the prefix of the run that wrote it
        self.shm_prefix = f"edgefed_{name}_{os.getpid()}_"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """Its gRPC address for a client in this process. Private: the socket through a
        descriptor of its directory (``/proc/self/fd/<fd>/<name>``), as a unix socket's
        address holds 107 bytes and a state dir's path may be longer; other processes of
        serverd's user connect to ``unix:<socket_path>``."""
        if not self.private:
            return f"127.0.0.1:{self.ports.grpc}"
        if self._socket_dir_fd is None:
            self._open_socket_dir()
        return f"unix:/proc/self/fd/{self._socket_dir_fd}/{self.socket_path.name}"

    def _open_socket_dir(self) -> None:
        """``socket_dir`` made if missing and set to mode 0700 (an existing directory
        keeps its mode on mkdir), held as a path descriptor. Again at each start: a
        directory replaced since (removed by hand) is pointed at under the same number,
        so that the ``grpc_url`` clients hold stays right."""
        self.socket_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.socket_dir.chmod(0o700)
        fresh = os.open(self.socket_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if self._socket_dir_fd is None:
            self._socket_dir_fd = fresh
            return
        os.dup2(fresh, self._socket_dir_fd, inheritable=False)
        os.close(fresh)

    @property
    def metrics_url(self) -> str:
        """Its Prometheus metrics (read-only, on 127.0.0.1 whether private or not)."""
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    @property
    def http_url(self) -> str:
        """Its HTTP address; ``OffloadError`` for a private Triton, which has none."""
        if self.private:
            raise OffloadError(f"Triton {self.name} is private: no HTTP, gRPC on {self.grpc_url}")
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        backends = self.install.backend_dir(self.workdir / self.name)  # own copy: no races
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={self.install.cache_dir}",
            *(self._private_args() if self.private else self.ports.args()),
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def _private_args(self) -> list[str]:
        """gRPC on the unix socket (Triton appends ``:<port>`` to it; relative to its
        working directory, the workdir, so a long state dir does not matter), no HTTP."""
        return [
            "--allow-http=false",
            f"--grpc-address=unix:{SOCKETS}/{self.name}.sock",
            f"--grpc-port={SOCKET_PORT}",
            *self.ports.metrics_args(),
        ]

    def start(self) -> None:
        """Start and wait until gRPC health says ready; OffloadError quoting Triton if not."""
        if self.poll() is None:
            return
        if self._process is not None:  # it died: clear its orphans before a new start
            self._cleanup()
            self._process = None  # once: a retry must not signal a pid reused since
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.private:
                self._open_socket_dir()
            command = self.command()
            self.rotate_log()
            with self.log_path.open("ab") as out:
                out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
                out.flush()
                offset = out.tell()
                self._stop_orphan()
                self._sweep_shm()
                self._process = self._spawn(command, out)
        except OSError as exc:
            raise PrepareError(f"Triton {self.name}: cannot prepare {self.workdir}: {exc}") from exc
        try:
            self.pid_path.write_text(f"{self._process.pid}\n")
        except OSError as exc:  # Triton runs; only a later start's clean-up needs the file
            log.warning(
                "Triton %s: cannot write %s (%s): if serverd is killed, the next start "
                "will not find this Triton to stop it",
                self.name,
                self.pid_path,
                exc,
            )
        started = time.monotonic()
        while time.monotonic() - started < self.ready_timeout:
            code = self.poll()
            if code is not None:
                self._cleanup()
                raise OffloadError(
                    f"Triton {self.name} failed to start (exit code {code} after "
                    f"{time.monotonic() - started:.1f} s); Triton said: {self._said(offset)}"
                )
            if self.ready():
                where = self.socket_path if self.private else self.grpc_url
                log.info("Triton %s ready on %s (pid %s)", self.name, where, self.pid)
                return
            if self._abandon.wait(0.1):
                self.stop()
                raise StartAbandoned(f"Triton {self.name}: start abandoned, serverd stops")
        self.stop()
        raise OffloadError(
            f"Triton {self.name} was not ready within {self.ready_timeout:.0f} s; "
            f"Triton said: {self._said(offset)} (log: {self.log_path})"
        )

    def abandon_start(self) -> None:
        """From another thread: a ``start`` waiting for Triton (which may take minutes to
        load its models) stops it and raises ``StartAbandoned``; so do later starts."""
        self._abandon.set()

    def _spawn(self, command: list[str], out: BinaryIO) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                [SETPRIV, "--pdeathsig", "TERM", "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.install.environment(os.environ),
                start_new_session=True,
            )
        except OSError as exc:
            raise OffloadError(f"Triton {self.name}: cannot run {command[0]}: {exc}") from exc

    def ready(self) -> bool:
        """True if its gRPC health check answers ready and its metrics endpoint, the last
        it starts (Triton exits when that port is taken), answers; within a second each."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=1) as reply:
                if reply.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            return bool(client.is_server_ready(client_timeout=1.0))
        except InferenceServerException:
            return False
        finally:
            client.close()

    def poll(self) -> int | None:
        """The exit code, or None while running (and after ``stop``: -1 if never started)."""
        if self._process is None:
            return -1
        return self._process.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL; stubs left in the process group are killed too."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Triton %s did not stop within %.0f s: killed", self.name, timeout)
                process.kill()
                process.wait(5)
        self._cleanup()
        self._process = None
        self.pid_path.unlink(missing_ok=True)

    def _stop_orphan(self) -> None:
        """Stop the Triton an earlier run left behind (its pid file names a live process
        of this install's binary): SIGTERM to its process group, SIGKILL after 10 s."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not cmdline or cmdline[0] != str(self.install.binary).encode():
            return  # the pid is someone else's now
        log.warning("Triton %s: stopping pid %s left by an earlier run", self.name, pid)
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                if _zombie(pid):
                    break
                time.sleep(0.05)
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                break
        self.pid_path.unlink(missing_ok=True)

    def rotate_log(self) -> bool:
        """Past ``log_max_bytes`` the log becomes ``<name>.log.1``; True when it did. Renamed
        before a start; while Triton runs, copied and emptied in place (its writers append:
        their next line lands at the start; logrotate's ``copytruncate``)."""
        kept = self.log_path.with_suffix(".log.1")
        try:
            if self.log_path.stat().st_size <= self.log_max_bytes:
                return False
            if self.poll() is not None:
                os.replace(self.log_path, kept)
                return True
            partial = kept.with_suffix(".1.partial")
            try:  # the old .log.1 is kept until the new copy is whole
                shutil.copyfile(self.log_path, partial)
                os.replace(partial, kept)
            finally:  # a full disk: the log is emptied all the same, the disk matters more
                partial.unlink(missing_ok=True)
                os.truncate(self.log_path, 0)
        except FileNotFoundError:
            return False
        return True

    def _sweep_shm(self) -> None:
        """Remove the shared memory an earlier serverd of this state dir left (killed with
        its Triton: only a clean stop removes it), by the prefix it recorded; then record
        ours. Not by pid: another serverd's pid may not be visible here (containers with
        a shared /dev/shm), and a pid is reused."""
        with contextlib.suppress(FileNotFoundError):
            earlier = self.shm_path.read_text().strip()
            if earlier.startswith("edgefed_") and earlier != self.shm_prefix:
                for region in SHM.glob(f"{glob.escape(earlier)}*"):
                    region.unlink(missing_ok=True)
        self.shm_path.write_text(f"{self.shm_prefix}\n")

    def _cleanup(self) -> None:
        """Kill what is left of the process group and remove its shared memory."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        for leftover in SHM.glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)

    def _said(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return quote_errors(text)


StateListener = Callable[[str, bool], None]


class TritonSupervisor:
    """Keeps one TritonProcess alive: restart within a budget (past it, rest one window
    and try again), report down and up."""

    def __init__(
        self,
        process: TritonProcess,
        on_state: StateListener,
        restarts: int = 3,
        window_s: float = 300.0,
        poll_s: float = 0.2,
        backoff_s: float = 1.0,
        log_check_s: float = LOG_CHECK_S,
    ) -> None:
        self.process = process
        self._log_check_s = log_check_s
        self._backoff_s = backoff_s
        self._on_state = on_state
        self._restarts = restarts
        self._window_s = window_s
        self._poll_s = poll_s
        self._history: deque[float] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gave_up = False
        self.restart_count = 0
        self._next_log_check = 0.0
        self._rotate_failures = Repeats(log)
        self._adopts_orphans = adopts_orphans()  # serverd as PID 1: see reaper.py

    def start(self) -> None:
        """Start Triton (raises OffloadError quoting Triton) and begin watching it."""
        self.process.start()
        self._thread = threading.Thread(
            target=self._watch, name=f"triton-watch-{self.process.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.process.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            code = self.process.poll()
            if code is None:
                if time.monotonic() >= self._next_log_check:
                    self._next_log_check = time.monotonic() + self._log_check_s
                    self._rotate_log()
                    if self._adopts_orphans:  # the stubs of a Triton that died since
                        reap_orphans()
                continue
            log.error("Triton %s died (exit code %s)", self.process.name, code)
            self._report(False)
            while not self._restart():  # a crash loop: rest one window, then try again
                if self._stop.wait(self._window_s):
                    return
                log.warning("Triton %s: trying again after resting", self.process.name)

    def _restart(self) -> bool:
        """Restart within the budget; False when the budget is spent (``gave_up``: the
        watcher rests one window before it tries again).

        A start that could not even launch Triton (``PrepareError``: a full disk, a
        read-only state dir) is no crash of Triton's and spends no budget: it is tried
        again after a back-off (1 s, doubling up to 30 s) until the disk allows it.
        """
        unprepared = 0
        while not self._stop.is_set():
            now = time.monotonic()
            while self._history and now - self._history[0] > self._window_s:
                self._history.popleft()
            if len(self._history) >= self._restarts:
                self.gave_up = True
                log.error(
                    "Triton %s: %d restarts within %.0f s, resting as long before the next",
                    self.process.name,
                    self._restarts,
                    self._window_s,
                )
                return False
            try:
                self.process.start()
            except PrepareError as exc:
                wait_s = min(self._backoff_s * 2 ** min(unprepared, 16), MAX_BACKOFF_S)
                unprepared += 1
                log.error(
                    "restart of %s failed: %s (again in %.0f s)", self.process.name, exc, wait_s
                )
                self._stop.wait(wait_s)
                continue
            except OffloadError as exc:
                self._launched(now)
                log.error("restart of %s failed: %s", self.process.name, exc)
                continue
            self._launched(now)
            self.gave_up = False
            self._report(True)
            return True
        return False

    def _rotate_log(self) -> None:
        """A running Triton's log kept within its size; a refusing disk is logged."""
        try:
            if self.process.rotate_log():
                log.info("Triton %s: log past its size, kept in .log.1", self.process.name)
        except OSError as exc:
            self._rotate_failures(
                "rotate", f"Triton {self.process.name}: cannot rotate its log: {exc}"
            )

    def _launched(self, at: float) -> None:
        self._history.append(at)
        self.restart_count += 1

    def _report(self, up: bool) -> None:
        try:
            self._on_state(self.process.name, up)
        except Exception:
            log.exception("Triton %s state listener failed", self.process.name)


async def start_all(supervisors: list[TritonSupervisor], stop: asyncio.Event) -> bool:
    """Start ``supervisors`` together (each waits for its Triton in a thread). False if
    ``stop`` came first: the starts are abandoned and every Triton stopped. A start that
    fails stops them all and raises ``OffloadError``."""
    starting = asyncio.gather(
        *(asyncio.to_thread(s.start) for s in supervisors), return_exceptions=True
    )
    stopping = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {starting, stopping}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        for supervisor in supervisors:
            supervisor.process.abandon_start()
    results = await starting
    failed = [(s, r) for s, r in zip(supervisors, results, strict=True) if r is not None]
    if not failed and not stop.is_set():
        return True
    await asyncio.gather(*(asyncio.to_thread(s.stop) for s in supervisors))
    if stop.is_set():
        return False
    supervisor, error = failed[0]
    if isinstance(error, OffloadError):
        raise error
    raise OffloadError(f"Triton {supervisor.process.name}: {error}") from error
