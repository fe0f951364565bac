"""The EdgeFed demo: a private mosquitto, serverd with its Triton, edged on vtest.avi.

Run through ``bash packaging/dev/demo.sh`` (which sets up first). edged runs the four demo
models on the sample video, offloads low-confidence person results (hard examples) and a
server-only text detector to serverd, and serves its dashboard. The broker runs as shipped
(docs/security.md): TLS with a client certificate per identity (edged's common name is
its device id, serverd's ``serverd``) and the EdgeFed ACL; a client without a certificate
is refused, which the demo checks before it starts the daemons. Each server result is an
``offload_result`` line of results.jsonl in the state dir. Ctrl-C (or --duration)
stops everything and prints a summary. Logs and state go to the state dir (var/demo/ in
the checkout unless ``--state-dir`` says otherwise), emptied at each start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.ports import free_port
from edgefed.testing.broker import Broker  # a real mosquitto on a free port
from edgefed.testing.presence import Presence
from edgefed.wire import Topics

REPO = Path(__file__).resolve().parents[2]

STATE = REPO / "var" / "demo"  # the default state dir
MARK = ".edgefed-demo"  # in a state dir the demo made: the only kind it empties
BIN = REPO / ".venv" / "bin"
KEY = str(REPO / "firmware-images/build/keys/dev-signing.pub")
SERVER_ID = "demo-server"
SERVERD_PORT = 8081  # serverd's API where `serverd status` looks first
DEVICE_ID = "demo/edge-01"  # packaging/dev/demo-edged.yaml
WATCHER = "demo-watch"  # the demo's own presence watcher: a device-like identity
IDENTITIES = ("serverd", DEVICE_ID, WATCHER)
# vtest.avi's lower-left lawn, in shares of the frame: a camera's object_masks polygon
JACKET = [[0.0, 0.75], [0.3, 0.75], [0.3, 1.0], [0.0, 1.0]]


def mqtt_section(broker: Broker, identity: str, client_id: str) -> dict[str, Any]:
    """A daemon's ``mqtt`` config: the broker over TLS with ``identity``'s certificate."""
    tls = broker.client_config(identity).tls
    assert tls is not None and tls.cert is not None and tls.key is not None
    return {
        "host": broker.host,
        "port": broker.port,
        "client_id": client_id,
        "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
    }


def anonymous_refused(broker: Broker) -> bool:
    """Whether a client that trusts the CA but shows no certificate is turned away."""
    assert broker.tls is not None
    stranger = MqttClient(
        MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="demo-no-certificate",
            tls=MqttTls(ca=broker.tls.ca),
        )
    )
    quiet = logging.getLogger("edgefed.mqtt")  # the refusal is expected: no TLS alert on screen
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    stranger.start()
    try:
        return not stranger.wait_connected(2)
    finally:
        stranger.stop()
        quiet.setLevel(level)


def write_configs(
    state: Path, broker: Broker, api_port: int, serverd_port: int, token: str
) -> tuple[Path, Path]:
    images = {"dir": str(REPO / "firmware-images/build"), "trusted_keys": [KEY]}
    serverd = {
        "server_id": SERVER_ID,
        "state_dir": str(state / "serverd"),
        "mqtt": mqtt_section(broker, "serverd", "demo-serverd"),
        "api": {"port": serverd_port},  # 8081, `serverd status`'s default, if free
        "images": images,
        "triton": {
            "venv": str(REPO / ".venv-triton"),
            "instances": 1,
            "models": [
                {"name": "person", "image": "pose_detector", "regions": "scan"},
                {"name": "text", "image": "text_detector"},
            ],
        },
    }
    edged: dict[str, Any] = yaml.safe_load((REPO / "packaging/dev/demo-edged.yaml").read_text())
    edged |= {
        "state_dir": str(state / "edged"),
        "images": images,
        "mqtt": mqtt_section(broker, DEVICE_ID, "demo-edged"),
        "api": {"port": api_port, "token": token},
        "offload": {
            "enabled": True,
            # person boxes scoring under 0.75 on average are hard examples for the server,
            # which scans the whole frame for people (~100 detector runs: regions scan);
            # a busy scene is hard on most frames: one every 10 s at most
            "policy": {
                "policy": "hard_example",
                "hard_example": {"threshold": 0.75, "max_per_minute": 6},
            },
            "models": ["person"],
            "remote_models": [{"name": "text", "every_n": 20}],
            # the demo's server shares the edge's CPU cores: a scan takes 1-5 s there (the
            # default deadline of 5 s is for a server with an accelerator)
            "ttl_s": 30.0,
            "outbox": {"path": str(state / "edged" / "outbox.sqlite")},
        },
    }
    edged["output"]["results"] = str(state / "results.jsonl")
    # the jacket lying on the lawn (lower left), which the detector takes for a person
    edged["cameras"][0]["object_masks"] = [JACKET]
    paths = state / "serverd.yaml", state / "edged.yaml"
    for path, data in zip(paths, (serverd, edged), strict=True):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return paths


def open_browser(url: str) -> bool:
    """Open ``url`` in the desktop's browser; False when there is no desktop, or as root,
    where Chromium refuses to start without its sandbox (and should not run without it)."""
    if os.geteuid() == 0 or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    return webbrowser.open(url)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def wait_ready(state: Path, url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"edged exited with {proc.returncode}; see {state / 'edged.log'}")
        try:
            get_json(f"{url}/healthz")
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"edged did not answer on {url} in {timeout:.0f} s")


def wait_online(
    state: Path,
    broker: Broker,
    server_id: str,
    proc: subprocess.Popen[str],
    stopped: Callable[[], bool],
) -> None:
    """Until serverd announces itself online (its Triton up, its subscriptions in place):
    a request published before then would find no subscriber on this fresh broker."""
    topic = Topics().server_availability(server_id)
    watcher = Presence(broker.port, topic, config=broker.client_config(WATCHER, clean_session=True))
    try:
        deadline = time.monotonic() + 300
        while not stopped():
            with contextlib.suppress(queue.Empty):
                watcher.next("online", timeout=0.5)
                return
            if proc.poll() is not None:
                raise SystemExit(f"serverd exited with {proc.returncode}; see {state}/serverd.log")
            if time.monotonic() > deadline:
                raise SystemExit(f"serverd did not come online; see {state}/serverd.log")
    finally:
        watcher.stop()


def status_line(url: str) -> str:
    try:
        st = get_json(f"{url}/api/v1/status")
    except OSError as exc:
        return f"status unavailable: {exc}"
    cam = st["cameras"][0]
    models = " ".join(f"{m['name']}={m['p50_ms']}ms" for m in st["models"])
    return (
        f"processed {st['frames_completed']} frames ({cam['processed_fps']} fps), "
        f"gated {cam['gated']} / static {cam['skipped_static']} | {models} | "
        f"outbox { ({k: v for k, v in st['outbox']['counts'].items() if v}) }"
    )


def fresh_state_dir(state: Path) -> None:
    """Empty ``state`` for this run: the default, a dir the demo made (its mark inside) or
    an empty one; never a directory of someone else's that ``--state-dir`` was pointed at
    by mistake. Its contents go, not the directory (it may be a mount point)."""
    if state.exists() and not state.is_dir():
        raise SystemExit(f"--state-dir {state} is not a directory")
    ours = state == STATE or (state / MARK).exists()
    if not ours and state.exists() and any(state.iterdir()):
        raise SystemExit(
            f"{state} is not empty and not a demo state dir (no {MARK} in it): "
            "choose another --state-dir"
        )
    state.mkdir(parents=True, exist_ok=True)
    for entry in state.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (state / MARK).touch()


def main() -> int:
    os.umask(0o077)  # edged.yaml holds the API token: what the demo writes is its user's only
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: Ctrl-C)")
    parser.add_argument("--port", type=int, default=8080, help="dashboard port (if free)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=STATE,
        help=f"logs, state and results (default {STATE}); emptied at start",
    )
    args = parser.parse_args()
    state = args.state_dir.resolve()
    fresh_state_dir(state)
    token = secrets.token_urlsafe(16)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Broker(state / "broker", tls=True, identities=IDENTITIES, own_session=True) as broker:
        if not anonymous_refused(broker):
            raise SystemExit("the demo broker accepted a client without a certificate")
        print("broker: TLS, one certificate per identity, EdgeFed ACL; no certificate: refused")
        port, serverd_port = free_port(args.port), free_port(SERVERD_PORT)
        if port != args.port and args.port:
            print(f"port {args.port} is taken: the dashboard is on {port}")
        serverd_yaml, edged_yaml = write_configs(state, broker, port, serverd_port, token)
        url = f"http://127.0.0.1:{port}"
        serverd_url = f"http://127.0.0.1:{serverd_port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with (state / "serverd.log").open("w") as slog, (state / "edged.log").open("w") as elog:
            serverd = subprocess.Popen(
                [str(BIN / "serverd"), "run", "-c", str(serverd_yaml)],
                cwd=REPO,
                stdout=slog,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,  # Ctrl-C is the demo's: it stops the daemons in turn
            )
            edged: subprocess.Popen[str] | None = None
            try:
                print("starting serverd and its Triton ...", flush=True)
                wait_online(state, broker, SERVER_ID, serverd, lambda: stop)
                if stop:
                    raise SystemExit("stopped before edged started")
                edged = subprocess.Popen(
                    [str(BIN / "edged"), "run", "-c", str(edged_yaml), "--compact"],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=elog,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
                wait_ready(state, url, edged)
                print(f"EdgeFed demo running (broker 127.0.0.1:{broker.port})")
                print(f"  dashboard:  {url}/")
                print(f"  status:     {url}/api/v1/status   metrics: {url}/metrics")
                print(f"  API token:  {token}   (PUT {url}/api/v1/config)")
                status = "" if serverd_port == SERVERD_PORT else f" --url {serverd_url}"
                print(f"  serverd:    {serverd_url}/api/v1/status   (serverd status{status})")
                print(
                    f"  logs:       {state}/edged.log, serverd.log; results {state}/results.jsonl"
                )
                print("  stop with Ctrl-C", flush=True)
                if args.no_browser or not open_browser(f"{url}/"):
                    print(f"  open {url}/ in a browser (over SSH: ssh -L {port}:127.0.0.1:{port})")
                started = time.monotonic()
                while not stop and (
                    not args.duration or time.monotonic() - started < args.duration
                ):
                    time.sleep(5)
                    if not stop and (edged.poll() is not None or serverd.poll() is not None):
                        print("a daemon exited early; see the logs", file=sys.stderr)
                        break
                    print(status_line(url), flush=True)
            finally:
                for proc in (edged, serverd):
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                out = edged.communicate(timeout=30)[0] if edged is not None else ""
                serverd.wait(timeout=30)
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    (state / "summary.json").write_text(json.dumps(summary, indent=2))
    offload = summary.get("offload", {})
    print("\nsummary")
    print(f"  frames processed: {summary.get('frames_completed')}")
    print(f"  detections: {summary.get('detections')}")
    print(f"  offload decisions: {offload.get('decisions')}")
    print(f"  outbox jobs by status: {offload.get('jobs')}")
    print(f"  server results by status: {summary.get('offload_results')}")
    print(f"  edged exit {edged.returncode}, serverd exit {serverd.returncode}")
    return 0 if edged.returncode == 0 and serverd.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
