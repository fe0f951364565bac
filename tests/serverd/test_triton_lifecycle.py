"""Triton's life is tied to serverd's: a kill -9 of the process that started it takes it
down (parent-death signal), and a Triton left by an earlier run is found by its pid file
and stopped before a new one starts; a Triton that dies while the disk refuses its files
comes back once they can be written. Real ``tritonserver`` processes (the echo model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgefed.testing.wait import wait_until
from serverd.app import ServerdApp
from serverd.triton import access, supervisor
from serverd.triton.install import TritonInstall
from serverd.triton.reaper import proc_stat
from serverd.triton.repository import TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess, TritonSupervisor
from tests.serverd.harness import serverd_config
from tests.support.paths import IMAGES_DIR, REPO

VENV = REPO / ".venv-triton"


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st.state != "Z"


@pytest.fixture(autouse=True)
def _require_triton() -> None:
    if not (VENV / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run bash serverd/triton/setup_env.sh")


def test_kill_9_of_its_parent_stops_triton(tmp_path: Path) -> None:
    """On main Triton kept running (and its ports) after serverd was killed with -9."""
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("triton_child.py")),
            str(VENV),
            str(tmp_path),
            str(IMAGES_DIR),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        triton_pid = int(child.stdout.readline())
        assert alive(triton_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_until("Triton to exit after its parent", lambda: not alive(triton_pid), 20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_the_stubs_of_a_crashed_triton_are_reaped_where_serverd_adopts_them(
    tmp_path: Path,
) -> None:
    """serverd as a container's PID 1 (``--entrypoint serverd``, no init): each crash of
    Triton left its python backend stubs as zombies, until the pid limit stopped forks."""
    child = Path(__file__).with_name("reaper_child.py")
    out = subprocess.run(
        [sys.executable, str(child), str(VENV), str(tmp_path), str(IMAGES_DIR)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
        check=True,
    ).stdout
    said = json.loads(out.strip().splitlines()[-1])
    assert said["stubs"] >= 2 and said["restarts"] == 2
    assert said["zombies"] == 0
    assert said["helper_exit"] == 3  # serverd's own short-lived children are not taken


def test_a_triton_left_by_an_earlier_run_is_stopped_by_its_pid_file(tmp_path: Path) -> None:
    """... and what that run left is cleared: the shared memory of the serverd of this
    state dir that was killed (by the prefix it recorded, not by pid: another serverd's
    may be invisible here), and a log past its size moves aside (both grew for ever)."""
    install = TritonInstall.locate(VENV)
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    ports = TritonPorts.free()
    earlier = TritonProcess(install, repository, tmp_path, "local-0", ports)
    earlier.start()
    old_pid = earlier.pid
    assert old_pid is not None and (tmp_path / "local-0.pid").read_text().strip() == str(old_pid)
    assert (tmp_path / "local-0.shm").read_text().strip() == earlier.shm_prefix
    killed = "edgefed_local-0_4000001_"  # as a run in another pid namespace would have
    (tmp_path / "local-0.shm").write_text(killed + "\n")
    regions = {
        "killed run's": supervisor.SHM / f"{killed}input0",
        "another serverd's": supervisor.SHM / "edgefed_local-0_4000002_input0",
        "another instance's": supervisor.SHM / "edgefed_local-1_4000001_input0",
    }
    for region in regions.values():
        region.write_bytes(b"\0" * 1024)
    with (tmp_path / "local-0.log").open("ab") as log:
        log.write(b"x" * 128 * 1024)
    # a new run with the same state dir and ports: the earlier Triton holds them
    again = TritonProcess(install, repository, tmp_path, "local-0", ports, log_max_bytes=64 * 1024)
    try:
        started = time.monotonic()
        again.start()
        assert not alive(old_pid)
        assert again.pid != old_pid and again.ready()
        assert time.monotonic() - started < 30
        assert (tmp_path / "local-0.pid").read_text().strip() == str(again.pid)
        left = {what for what, region in regions.items() if region.exists()}
        assert left == {"another serverd's", "another instance's"}
        assert (tmp_path / "local-0.shm").read_text().strip() == again.shm_prefix
        assert (tmp_path / "local-0.log.1").stat().st_size > 128 * 1024
        assert (tmp_path / "local-0.log").stat().st_size < 64 * 1024
    finally:
        again.stop()
        earlier.stop()
        for region in regions.values():
            region.unlink(missing_ok=True)
    assert not (tmp_path / "local-0.pid").exists()


def test_a_triton_that_dies_while_its_files_cannot_be_written_comes_back_when_they_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its log cannot be opened on restart (a directory stands in for a full disk): each
    try launches nothing and spends none of the crash budget; once the log can be written
    again, Triton is back and reported up. The watcher thread died here before."""
    install = TritonInstall.locate(VENV)
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    process = TritonProcess(install, repository, tmp_path / "work", "local-0", TritonPorts.free())
    states: list[bool] = []
    supervisor = TritonSupervisor(
        process, lambda _, up: states.append(up), restarts=1, poll_s=0.05, backoff_s=0.2
    )
    supervisor.start()
    try:
        process.log_path.unlink()
        process.log_path.mkdir()
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(
            "three restarts that could not prepare",
            lambda: caplog.text.count("cannot prepare") >= 3,
            20,
        )
        assert states == [False] and not supervisor.gave_up and supervisor.restart_count == 0
        process.log_path.rmdir()
        wait_until("Triton back and reported up", lambda: states == [False, True], 90)
        assert process.ready() and process.pid != pid and supervisor.restart_count == 1
    finally:
        supervisor.stop()


def test_a_running_triton_s_log_is_kept_within_its_size(tmp_path: Path) -> None:
    """A Triton run with ``--log-verbose`` grew its log until its next start; now the
    watcher moves it to ``.log.1`` and empties it in place while Triton runs on, whose
    next lines land at the start of the emptied file (not after a hole of its old size)."""
    install = TritonInstall.locate(VENV)
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    ports = TritonPorts.free()
    process = TritonProcess(
        install,
        repository,
        tmp_path,
        "local-0",
        ports,
        extra_args=["--log-verbose=1"],
        log_max_bytes=16 * 1024,  # start-up alone logs ~19 KB
    )
    watcher = TritonSupervisor(process, lambda _, up: None, poll_s=0.05, log_check_s=0.1)
    watcher.start()
    kept = tmp_path / "local-0.log.1"
    try:
        pid = process.pid
        wait_until(
            "the verbose log to pass its size", lambda: process.ready() and kept.exists(), 60
        )
        assert kept.stat().st_size > 16 * 1024
        assert kept.read_bytes().startswith(b"--- ")  # the whole log, from its first line
        before = process.log_path.stat().st_size
        wait_until(
            "Triton to log on after the move",
            lambda: process.ready() and process.log_path.stat().st_size > before + 1024,
            30,
        )
        head = process.log_path.read_bytes()[:64]
        assert head and b"\0" not in head and head[:1] in b"IWE"
        assert process.log_path.stat().st_size < 16 * 1024 + 8192
        assert process.pid == pid and process.ready() and watcher.restart_count == 0
    finally:
        watcher.stop()


def test_triton_log_verbose_reaches_each_triton_s_command_line(tmp_path: Path) -> None:
    """serverd's ``triton.log_verbose`` as Triton's own flag, on every instance it starts."""
    for level in (0, 2):
        config = serverd_config(tmp_path / str(level), 1883, triton={"log_verbose": level})
        supervisors = ServerdApp(config)._tritons()  # built, not started
        assert len(supervisors) == 2
        for watcher in supervisors:
            assert f"--log-verbose={level}" in watcher.process.command()


def test_a_running_triton_s_log_that_cannot_be_kept_is_emptied_all_the_same(
    tmp_path: Path,
) -> None:
    """Where ``.log.1`` cannot be written (a full disk; here a directory in its place) the
    running Triton's log is still emptied: the disk matters more than the old lines."""
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    install = TritonInstall.locate(VENV)
    process = TritonProcess(  # start-up alone logs more than 1 KB
        install, repository, tmp_path, "local-0", TritonPorts.free(), log_max_bytes=1024
    )
    process.start()
    try:
        (tmp_path / "local-0.log.1").mkdir()
        assert process.log_path.stat().st_size > 1024
        with pytest.raises(OSError):
            process.rotate_log()
        assert process.log_path.stat().st_size == 0
        assert (tmp_path / "local-0.log.1").is_dir()
        assert not list(tmp_path.glob("*.partial")) and process.ready()
    finally:
        process.stop()


def test_serverd_tritonserver_execs_triton_with_our_backends(tmp_path: Path) -> None:
    """The entry point of the edgefed-serverd-triton image: Triton in serverd's place (same
    pid, so SIGTERM reaches it), serving the echo model of our python-based backends."""
    echo = [TritonModelConfig(name="echo", backend="echo")]
    repository = write_repository(tmp_path / "models", echo, IMAGES_DIR, [])
    ports = TritonPorts.free()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serverd",
            "tritonserver",
            f"--venv={VENV}",
            f"--workdir={tmp_path / 'work'}",
            f"--model-repository={repository}",
            *ports.args(),
            "--exit-timeout-secs=5",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{ports.http}/v2/models/echo/ready"
    try:
        wait_until("the echo model to be ready", lambda: _ok(url), 60)
        assert Path(f"/proc/{process.pid}/exe").resolve().name == "tritonserver"
        assert (tmp_path / "work" / "backends" / "echo" / "model.py").is_file()
        # without --key-file the groups serverd never calls need a key nobody holds
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        flags = [a.decode() for a in argv if b"restricted" in a]
        groups = {g for f in flags for g in f.split("=", 1)[1].split(":")[0].split(",")}
        assert len(flags) == 2 and groups == set(access.APIS) - set(access.SERVERD_CALLS)
        stats = f"http://127.0.0.1:{ports.http}/v2/models/echo/stats"
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(stats, timeout=5)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0


def test_serverd_tritonserver_without_an_environment_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "serverd", "tritonserver", f"--venv={tmp_path / 'none'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "no Triton environment at" in line


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
