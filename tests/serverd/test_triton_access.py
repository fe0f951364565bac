"""Who may call Triton: a supervised Triton is reached over a unix socket only serverd's
user opens and listens on no API port; the Kubernetes Triton refuses every API but
health without the key of its Secret, which serverd sends from its ``key_file``.
Real ``tritonserver`` processes; a refused HTTP call is a 403."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgefed.errors import EXIT_CONFIG, OffloadError
from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult
from serverd.triton import access
from serverd.triton.client import TritonEndpoint
from serverd.triton.install import TritonInstall
from serverd.triton.repository import INPUT, TritonModelConfig, write_repository
from serverd.triton.supervisor import SETPRIV, TritonPorts, TritonProcess, TritonSupervisor
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg, triton_successes
from tests.support.kube import triton_entry_point
from tests.support.paths import IMAGES_DIR, REPO

VENV = REPO / ".venv-triton"
KUBEEDGE = REPO / "packaging" / "kubeedge" / "serverd.yaml"
ECHO = [TritonModelConfig(name="echo", backend="echo")]
NOBODY = 65534
SHM_BODY = {"key": "", "offset": 0, "byte_size": 64}  # key: a real /dev/shm object
INFER_BODY = {"inputs": [{"name": INPUT, "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]}
# method, path, body: one call or more of every API group, those a local user abused first
CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v2/systemsharedmemory/region/x/register", SHM_BODY),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v2/repository/models/echo/unload", {}),
    ("POST", "/v2/logging", {"log_verbose_level": 0}),
    ("POST", "/v2/trace/setting", {"trace_level": ["OFF"]}),
    ("POST", "/v2/models/echo/infer", INFER_BODY),
    ("GET", "/v2/health/ready", None),
    ("GET", "/v2/health/live", None),
    ("GET", "/v2", None),
    ("GET", "/v2/models/echo", None),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/models/echo/config", None),
    ("GET", "/v2/models/stats", None),
]


def http(
    method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:  # not listening (yet)
        return 0, str(exc).encode()


@pytest.fixture
def shm_object() -> Iterator[str]:
    """A /dev/shm object Triton's user can open: what a local user would name."""
    path = Path("/dev/shm") / f"edgefed-access-test-{os.getpid()}"
    path.write_bytes(b"\0" * 64)
    yield f"/{path.name}"
    path.unlink(missing_ok=True)


def supervised(serverd: ServerdThread) -> list[TritonProcess]:
    processes = [s.process for s in serverd.app.supervisors.values()]
    for process in processes:  # an earlier test may have killed one: back once ready
        wait_until(f"Triton {process.name} ready", process.ready, 60)
    return processes


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__)
else:
    print("connected")
"""


def connect_as(uid: int, path: Path) -> str:
    """What a process of user ``uid`` gets connecting to the unix socket ``path``."""
    done = subprocess.run(
        [
            SETPRIV,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
            "-c",
            CONNECT,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_a_supervised_triton_opens_no_api_port_and_only_serverds_user_reaches_it(
    serverd: ServerdThread, shm_object: str
) -> None:
    """Any local user reached every API of serverd's Tritons on loopback: register a
    shared-memory region over any /dev/shm object Triton can open (and have outputs
    written into it), unload models, change logging and trace, infer past serverd; and
    Triton's own per-API key would sit on its command line for ``ps`` to show. Now
    Triton listens on no TCP port but its read-only metrics one, and its gRPC socket
    lies in a directory only serverd's user opens (another user tried below)."""
    for process in supervised(serverd):
        assert process.pid is not None
        assert listening_ports(process.pid) == {process.ports.metrics}
        assert stat.S_IMODE(process.socket_dir.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(process.socket_path.stat().st_mode)
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert not [a for a in argv if b"restricted" in a or b"--http-port" in a]
        # serverd's user reaches every API through it (as serverd's own client does)
        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            assert client.is_server_ready()
            index = client.get_model_repository_index(as_json=True)
            assert {m["name"] for m in index["models"]} == {"echo", "person"}
            client.register_system_shared_memory("access-test", shm_object, 64)
            client.unregister_system_shared_memory("access-test")
        finally:
            client.close()


def test_serverds_own_jobs_health_and_metrics_carry_on(serverd: ServerdThread, edge: Edge) -> None:
    """serverd's client reaches inference and health over the socket; its scraper reads
    the metrics port (read-only, loopback)."""
    processes = supervised(serverd)

    def successes() -> int:
        return triton_successes(serverd, "echo")

    before = successes()
    requests = [edge.request("echo") for _ in range(4)]
    for request in requests:
        edge.send(request, frame_jpeg())
    replies = [reply for reply, _ in edge.collect(4)]
    assert all(isinstance(r, OffloadResult) and r.results for r in replies), replies
    # through Triton, not around it (Triton counts a request just after its reply)
    wait_until("Triton to count 4 more inferences", lambda: successes() >= before + 4, 10)
    status = serverd.call(serverd.app.status)
    assert status["ready"] is True
    assert all(i["healthy"] for i in status["instances"].values())  # gRPC health
    for process in processes:
        code, text = http("GET", process.metrics_url)
        assert code == 200 and b"nv_inference_request_success" in text
        with pytest.raises(OffloadError, match="private: no HTTP"):
            process.http_url  # noqa: B018 (the property is the check)
    assert serverd.app.api is not None
    code, text = http("GET", f"{serverd.app.api.url}/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    scraped = {
        s.labels["triton_instance"] for s in families["nv_inference_request_success"].samples
    }
    assert scraped == set(serverd.app.supervisors)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own are its user's only)."""
    path = Path(tempfile.mkdtemp(prefix="edgefed-access-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_another_user_cannot_reach_the_socket(open_dir: Path) -> None:
    """In a state dir every user may enter, another user's connect is refused by the
    socket directory's mode alone (the socket itself made writable for all here)."""
    assert os.geteuid() == 0, "connecting as another user needs root, as .ci/run has"
    repository = write_repository(open_dir / "models", ECHO, IMAGES_DIR, [])
    process = TritonProcess(
        TritonInstall.locate(VENV), repository, open_dir, "local-0", TritonPorts.free()
    )
    process.start()
    try:
        assert connect_as(NOBODY, process.socket_path) == "PermissionError"
        process.socket_path.chmod(0o777)
        assert connect_as(NOBODY, process.socket_path) == "PermissionError"
        process.socket_dir.chmod(0o755)  # opened up: the same user connects
        assert connect_as(NOBODY, process.socket_path) == "connected"
        process.socket_dir.chmod(0o700)
    finally:
        process.stop()


def test_a_triton_killed_comes_back_on_its_socket_and_serverds_client_follows(
    tmp_path: Path,
) -> None:
    """A kill -9 leaves the socket behind (here, its whole directory removed by hand as
    well): the restart binds it again in a new directory of mode 0700, and the endpoint
    serverd keeps (renewed on the instance's return, as serverd does) infers with the
    same url. The state dir is longer than a unix socket's address holds (107 bytes)."""
    workdir = tmp_path / ("a-long-state-dir-" * 6)
    repository = write_repository(tmp_path / "models", ECHO, IMAGES_DIR, [])
    process = TritonProcess(
        TritonInstall.locate(VENV), repository, workdir, "local-0", TritonPorts.free()
    )
    assert len(os.fsencode(process.socket_path)) > 107
    process.socket_dir.mkdir(parents=True, mode=0o755)  # as an older state dir might hold it
    states: list[bool] = []
    supervisor = TritonSupervisor(process, lambda _, up: states.append(up), poll_s=0.05)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        endpoint = TritonEndpoint("local-0", process.grpc_url)
        try:
            assert await endpoint.ready()
            assert await endpoint.models() == {"echo"}
            first = (await endpoint.infer("echo", b"abc")).results
            pid = process.pid
            assert pid is not None
            shutil.rmtree(process.socket_dir)
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(
                wait_until, "Triton restarted", lambda: states == [False, True], 90
            )
            endpoint.renew()
            assert endpoint.url == process.grpc_url
            return first, (await endpoint.infer("echo", b"abcd")).results
        finally:
            await endpoint.close()

    supervisor.start()
    try:
        assert stat.S_IMODE(process.socket_dir.stat().st_mode) == 0o700
        first, second = asyncio.run(scenario())
        assert first == [{"type": "echo", "bytes": 3}]
        assert second == [{"type": "echo", "bytes": 4}]
        assert stat.S_IMODE(process.socket_dir.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(process.socket_path.stat().st_mode)
    finally:
        supervisor.stop()
    assert not process.socket_path.exists()  # a clean stop removes it


def kubeedge_triton() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(KUBEEDGE.read_text()) if d]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"
    ]
    container: dict[str, Any]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# what the test sets itself: its key file, repository and loopback ports
OWN_ARGS = ("--key-file=", "--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")


def test_the_kubeedge_triton_refuses_every_api_but_health_without_its_secret_key(
    tmp_path: Path,
) -> None:
    """The Triton Deployment run for real (the image's entry point with the manifest's
    arguments, the repository polled as there): without the key of its Secret every API
    but health is refused (the kubelet's probes still answer); serverd's endpoint with
    the Secret's file as ``key_file`` infers and reads the repository index."""
    container = kubeedge_triton()
    tini, dashes, *entry = triton_entry_point()
    assert (tini, dashes) == ("tini", "--") and entry[:2] == ["serverd", "tritonserver"]
    # `serverd` of the image, with this checkout's environments in place of /opt/edgefed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "serverd"
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1" = tritonserver ] && [ "$2" = --venv=/opt/edgefed/triton ] || exit 97\n'
        "shift 2\n"
        f"exec {sys.executable} -m serverd tritonserver --venv={VENV} "
        f'--workdir={tmp_path / "work"} "$@"\n'
    )
    shim.chmod(0o755)
    key = "5e" * 32
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}\n")  # as `kubectl create secret --from-literal` + a newline
    repository = write_repository(tmp_path / "models", ECHO, IMAGES_DIR, [])
    ports = TritonPorts.free()
    args = [
        *(a for a in container["args"] if not a.startswith(OWN_ARGS)),
        f"--key-file={key_file}",
        f"--model-repository={repository}",
        *ports.args(),
    ]
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    triton = subprocess.Popen(
        [*entry, *args],
        cwd=REPO,
        env=os.environ | {"PATH": path, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{ports.http}"
    try:
        wait_until(
            "the Kubernetes Triton ready",
            lambda: triton.poll() is None and http("GET", f"{base}/v2/health/ready")[0] == 200,
            60,
        )
        argv = Path(f"/proc/{triton.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(f"/proc/{triton.pid}/exe").resolve().name == "tritonserver"
        flags = [a.decode() for a in argv if b"restricted" in a]
        assert len(flags) == 2 and {f.rsplit("=", 1)[1] for f in flags} == {key}
        groups = {g for f in flags for g in f.split("=", 1)[1].split(":")[0].split(",")}
        assert groups == set(access.APIS) - set(access.OPEN)
        keyed = {access.HEADER: key}
        for method, call_path, body in CALLS:
            code, text = http(method, base + call_path, body)
            if group_of(call_path) in access.OPEN:
                assert code == 200, (method, call_path, code, text)
            else:
                assert code == 403, (method, call_path, code, text)
                assert http(method, base + call_path, body, keyed)[0] != 403, call_path
        # poll mode: no load or unload through the API, key or not
        code, text = http("POST", f"{base}/v2/repository/models/echo/unload", {}, keyed)
        assert code == 503 and b"polling is enabled" in text, text

        async def serverds_calls(
            headers: Callable[[], dict[str, str]],
        ) -> tuple[bool, set[str], list[dict[str, Any]]]:
            endpoint = TritonEndpoint("triton", f"127.0.0.1:{ports.grpc}", headers=headers)
            try:
                return (
                    await endpoint.ready(),
                    await endpoint.models(),
                    (await endpoint.infer("echo", b"abcd")).results,
                )
            finally:
                await endpoint.close()

        with pytest.raises(OffloadError, match="This protocol is restricted"):
            asyncio.run(serverds_calls(dict))
        assert asyncio.run(serverds_calls(access.key_file_headers(key_file))) == (
            True,
            {"echo"},
            [{"type": "echo", "bytes": 4}],
        )
    finally:
        os.killpg(triton.pid, signal.SIGTERM)
        try:
            triton.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(triton.pid, signal.SIGKILL)
            triton.communicate(timeout=10)


@pytest.mark.parametrize(
    ("content", "said"),
    [(None, "cannot read it"), ("short", "at least 32 characters"), ("a:b" * 16, "without")],
)
def test_the_entry_point_refuses_a_key_file_it_cannot_use(
    tmp_path: Path, content: str | None, said: str
) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverd",
            "tritonserver",
            f"--venv={VENV}",
            f"--key-file={key_file}",
            "--model-repository=/nonexistent",
        ],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG, done
    assert f"--key-file {key_file}" in done.stderr and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


GROUPS_BY_PREFIX = {
    "/v2/health": "health",
    "/v2/systemsharedmemory": "shared-memory",
    "/v2/repository": "model-repository",
    "/v2/trace": "trace",
    "/v2/logging": "logging",
}
GROUPS_BY_SUFFIX = {"/infer": "inference", "/config": "model-config", "/stats": "statistics"}


def group_of(path: str) -> str:
    """The API group Triton files an HTTP path under."""
    for prefix, group in GROUPS_BY_PREFIX.items():
        if path.startswith(prefix):
            return group
    for suffix, group in GROUPS_BY_SUFFIX.items():
        if path.endswith(suffix):
            return group
    return "metadata"


def test_an_external_tritons_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """Another serverd's Triton writes a new key at each start: the endpoint follows it."""
    key = tmp_path / "local-0.key"
    headers = access.key_file_headers(key)
    assert headers() == {}  # none yet: that Triton refuses the call, as any other
    key.write_text("first\n")
    assert headers() == {access.GRPC_HEADER: "first"}
    key.write_text("second\n")
    os.utime(key, ns=(1, 2))  # a different stamp whatever the file system's resolution
    assert headers() == {access.GRPC_HEADER: "second"}
