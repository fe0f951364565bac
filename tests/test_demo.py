"""The README's demo command runs the whole system and offloads work by policy."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO


def test_demo_runs_broker_serverd_and_edged_and_offloads(tmp_path: Path) -> None:
    """Run until 20 s of status lines, then stopped as Ctrl-C at a terminal stops it: a
    SIGINT to its whole process group (the daemons' own sessions keep it from them: before,
    the broker died with them and the demo said a daemon had exited early)."""
    state = tmp_path / "demo"
    demo = [sys.executable, str(REPO / "packaging/dev/demo.py"), "--no-browser", "--port", "0"]
    proc = subprocess.Popen(
        [*demo, "--duration", "200", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        said = []
        for line in proc.stdout:  # ends early if the demo does
            said.append(line)
            if sum(s.startswith("processed ") for s in said) == 4:  # one each 5 s
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(said) + rest
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "exited early" not in err
    assert "dashboard:  http://127.0.0.1:" in out and "serverd:    http://127.0.0.1:" in out
    # the private broker runs TLS with per-client identities and refuses a certificate-less client
    assert "no certificate: refused" in out
    # edged.yaml holds the API token: only the demo's user reads what the demo writes
    for written in ("edged.yaml", "serverd.yaml"):
        assert stat.S_IMODE((state / written).stat().st_mode) == 0o600, written
    summary = json.loads((state / "summary.json").read_text())
    assert summary["frames_completed"] > 20
    assert {"person", "pose", "scene"} <= set(summary["detections"])
    decisions = summary["offload"]["decisions"]
    assert decisions.get("unregistered_model", 0) >= 1
    assert decisions.get("hard_example", 0) >= 1
    assert decisions.get("hard_example_over_budget", 0) >= 1  # at most one every 10 s
    jobs = summary["offload"]["jobs"]
    assert jobs["Exit"] >= 1
    # edged starts once serverd is online: no job is lost to a broker without subscribers
    assert jobs["Expired"] == 0 and jobs["Failed"] == 0, jobs
    # the server's results reach the results file, one offload_result line per closed job
    lines = (state / "results.jsonl").read_text().splitlines()
    offloaded = [r for r in map(json.loads, lines) if r.get("type") == "offload_result"]
    answered = [r for r in offloaded if r["status"] == "Exit"]
    assert len(answered) == jobs["Exit"], (len(answered), jobs)
    assert all(r["served_by"].startswith("demo-server/") for r in answered)
    assert all(isinstance(r["result"], list) for r in answered)
    assert {r["model"] for r in answered} <= {"person", "text"}
    # serverd scans a hard example's whole frame (regions: scan): run once on the whole
    # 768x576 frame, the detector found at most one of vtest.avi's walkers
    people = [len(r["result"]) for r in answered if r["model"] == "person"]
    assert people and max(people) >= 3, people
    # the demo masks the jacket on the lawn: the server's scan finds it, edged drops it
    feet = [
        ((d["box"][0] + d["box"][2]) / 2 / 768, d["box"][3] / 576)
        for r in answered
        if r["model"] == "person"
        for d in r["result"]
    ]
    assert not [f for f in feet if f[0] < 0.3 and f[1] > 0.75], feet
    assert sum(r.get("masked", 0) for r in answered) >= 1
    assert summary["offload_results"]["Exit"] == jobs["Exit"]


def test_the_demo_empties_no_directory_it_did_not_make(tmp_path: Path) -> None:
    """``--state-dir`` pointed at someone's files by mistake: one clear line, nothing gone."""
    (tmp_path / "notes.txt").write_text("keep me")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "packaging/dev/demo.py"),
            "--duration=1",
            "--no-browser",
            "--port=0",
            f"--state-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "not a demo state dir" in proc.stderr.strip().splitlines()[-1]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
