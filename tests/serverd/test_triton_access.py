"""Who may call Triton: a supervised Triton refuses every API to a call without the key of
its start, serverd's own traffic carries it; the Kubernetes Triton refuses the APIs serverd
never calls. Real ``tritonserver`` processes; a refused HTTP call is a 403."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult
from serverd.triton import access
from serverd.triton.client import TritonEndpoint
from serverd.triton.install import TritonInstall
from serverd.triton.repository import INPUT, TritonModelConfig, write_repository
from serverd.triton.supervisor import TritonPorts, TritonProcess, TritonSupervisor
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg
from tests.support.paths import IMAGES_DIR, REPO

VENV = REPO / ".venv-triton"
KUBEEDGE = REPO / "packaging" / "kubeedge" / "serverd.yaml"
ECHO = [TritonModelConfig(name="echo", backend="echo")]
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


def refused_over_grpc(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of a gRPC call Triton refused as restricted."""
    with pytest.raises(InferenceServerException) as refused:
        call(*args, **kwargs)
    assert "This protocol is restricted" in str(refused.value.message()), refused.value
    return str(refused.value.message())


def echo_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    return tensor


@pytest.fixture
def shm_object() -> Iterator[str]:
    """A /dev/shm object Triton's user can open: what a local user would name."""
    path = Path("/dev/shm") / f"edgefed-access-test-{os.getpid()}"
    path.write_bytes(b"\0" * 64)
    yield f"/{path.name}"
    path.unlink(missing_ok=True)


def supervised(serverd: ServerdThread) -> list[TritonProcess]:
    processes = [s.process for s in serverd.app.supervisors.values()]
    for process in processes:  # an earlier test may have killed one: back with a new key
        wait_until(f"Triton {process.name} ready", process.ready, 60)
    return processes


def test_a_direct_call_to_a_supervised_triton_without_its_key_is_refused(
    serverd: ServerdThread, shm_object: str
) -> None:
    """Any local user reached every API of serverd's Tritons on loopback: register a
    shared-memory region over any /dev/shm object Triton can open (and have outputs
    written into it), unload models, change logging and trace, infer past serverd."""
    body = SHM_BODY | {"key": shm_object}
    for process in supervised(serverd):
        for method, path, call_body in CALLS:
            sent = body if call_body is SHM_BODY else call_body
            for headers in ({}, {access.HEADER: "0" * 64}, {"edgefed-triton-key-x": process.key}):
                code, text = http(method, process.http_url + path, sent, headers)
                assert code == 403, (process.name, method, path, headers, code, text)
                assert f"expecting header '{access.HEADER}'" in text.decode()
        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            refused_over_grpc(client.register_system_shared_memory, "x", shm_object, 64)
            refused_over_grpc(client.get_model_repository_index)
            refused_over_grpc(client.unload_model, "echo")
            refused_over_grpc(client.update_log_settings, {"log_verbose_level": 0})
            refused_over_grpc(client.infer, "echo", [echo_input()])
            wrong = {access.GRPC_HEADER: "0" * 64}
            refused_over_grpc(client.is_server_ready, headers=wrong)
            # the key is the difference: its holder reaches the same APIs
            assert client.is_server_ready(headers=process.grpc_headers())
        finally:
            client.close()
        keyed = process.http_headers()
        index = http("POST", f"{process.http_url}/v2/repository/index", {}, keyed)
        assert index[0] == 200 and {m["name"] for m in json.loads(index[1])} == {"echo", "person"}
        region = f"{process.http_url}/v2/systemsharedmemory/region/access-test"
        assert http("POST", f"{region}/register", body, keyed)[0] == 200
        assert http("POST", f"{region}/unregister", {}, keyed)[0] == 200


def test_serverds_own_jobs_health_and_metrics_carry_on(serverd: ServerdThread, edge: Edge) -> None:
    """serverd's client sends the key on inference and health; its scraper reads the
    metrics port, which has no restriction (read-only, loopback)."""
    processes = supervised(serverd)

    def successes() -> float:
        total = 0.0
        for process in processes:
            code, text = http(
                "GET", f"{process.http_url}/v2/models/echo/stats", headers=process.http_headers()
            )
            assert code == 200, text
            stats = json.loads(text)["model_stats"]
            total += sum(s["inference_stats"]["success"]["count"] for s in stats)
        return total

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
    assert all(i["healthy"] for i in status["instances"].values())  # gRPC health, keyed
    for process in processes:
        assert process.ready()  # the supervisor's HTTP health check, keyed
        assert http("GET", f"{process.http_url}/v2/health/ready")[0] == 403
        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            refused_over_grpc(client.infer, "echo", [echo_input()])
        finally:
            client.close()
        code, text = http("GET", f"http://127.0.0.1:{process.ports.metrics}/metrics")
        assert code == 200 and b"nv_inference_request_success" in text
    assert serverd.app.api is not None
    code, text = http("GET", f"{serverd.app.api.url}/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    scraped = {
        s.labels["triton_instance"] for s in families["nv_inference_request_success"].samples
    }
    assert scraped == set(serverd.app.supervisors)


def test_each_start_takes_a_new_key_that_serverds_client_follows(tmp_path: Path) -> None:
    """A restart (Triton killed) takes a fresh key: the old one is refused, serverd's
    gRPC client sends the new one; ``<name>.key`` holds it for serverd's user only."""
    repository = write_repository(tmp_path / "models", ECHO, IMAGES_DIR, [])
    process = TritonProcess(
        TritonInstall.locate(VENV),
        repository,
        tmp_path,
        "local-0",
        TritonPorts.free(),
        extra_args=["--log-verbose=2"],  # logs every request: never its key
    )
    states: list[bool] = []
    supervisor = TritonSupervisor(process, lambda _, up: states.append(up), poll_s=0.05)

    async def infer() -> list[dict[str, Any]]:
        endpoint = TritonEndpoint("local-0", process.grpc_url, headers=process.grpc_headers)
        try:
            assert await endpoint.ready()
            assert await endpoint.models() == {"echo"}
            return (await endpoint.infer("echo", b"abc")).results
        finally:
            await endpoint.close()

    supervisor.start()
    try:
        first = process.key
        assert process.key_path.read_text().strip() == first and len(first) == 64
        assert stat.S_IMODE(process.key_path.stat().st_mode) == 0o600
        assert asyncio.run(infer()) == [{"type": "echo", "bytes": 3}]
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until("Triton restarted", lambda: states == [False, True], 90)
        assert process.key != first and process.key_path.read_text().strip() == process.key
        old = {access.HEADER: first}
        assert http("GET", f"{process.http_url}/v2/health/ready", headers=old)[0] == 403
        assert asyncio.run(infer()) == [{"type": "echo", "bytes": 3}]
    finally:
        supervisor.stop()
    assert not process.key_path.exists()
    logged = process.log_path.read_text()
    assert "HTTP request" in logged and first not in logged and process.key not in logged


def kubeedge_triton_command() -> list[str]:
    docs = [d for d in yaml.safe_load_all(KUBEEDGE.read_text()) if d]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"]
    return command


def test_the_kubeedge_triton_refuses_what_serverd_never_calls(tmp_path: Path) -> None:
    """The Triton Deployment's command (the image's entry point through sh) run for real,
    with the repository polled as there: the APIs serverd never calls are refused to a
    call without the per-start key nobody holds; serverd's calls (inference, health,
    repository index) work without one, behind the NetworkPolicy."""
    command = kubeedge_triton_command()
    assert command[:2] == ["tini", "--"]
    shell = command[2:]
    assert shell[:2] == ["sh", "-ec"]
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
    repository = write_repository(tmp_path / "models", ECHO, IMAGES_DIR, [])
    ports = TritonPorts.free()
    args = [
        f"--model-repository={repository}",
        "--model-control-mode=poll",
        *ports.args(),
        "--exit-timeout-secs=5",
    ]
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    triton = subprocess.Popen(
        [*shell, *args],
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
        assert len(flags) == 2 and len({f.rsplit("=", 1)[1] for f in flags}) == 1
        assert len(flags[0].rsplit("=", 1)[1]) == 64  # secrets.token_hex(32)
        never = {"metadata", "shared-memory", "model-config", "statistics", "trace", "logging"}
        for method, call_path, body in CALLS:
            code, text = http(method, base + call_path, body)
            group = group_of(call_path)
            if group in never:
                assert code == 403, (method, call_path, code, text)
            else:
                assert code != 403, (method, call_path, code, text)
        # poll mode: no load or unload through the API, key or not
        code, text = http("POST", f"{base}/v2/repository/models/echo/unload", {})
        assert code == 503 and b"polling is enabled" in text, text

        async def serverds_calls() -> tuple[bool, set[str], list[dict[str, Any]]]:
            endpoint = TritonEndpoint("triton", f"127.0.0.1:{ports.grpc}")
            try:
                return (
                    await endpoint.ready(),
                    await endpoint.models(),
                    (await endpoint.infer("echo", b"abcd")).results,
                )
            finally:
                await endpoint.close()

        assert asyncio.run(serverds_calls()) == (True, {"echo"}, [{"type": "echo", "bytes": 4}])
    finally:
        os.killpg(triton.pid, signal.SIGTERM)
        try:
            triton.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(triton.pid, signal.SIGKILL)
            triton.communicate(timeout=10)


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
