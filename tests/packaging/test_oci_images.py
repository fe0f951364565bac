"""packaging/oci/Containerfile against what runs its images: the pods of the KubeEdge
manifests (whose uid may not be the image's) and the configs baked into the images.

Read from the Containerfile itself: each target's stages, the directories ``install -d``
makes (owner, group, mode), USER, EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD; and the plain
``podman run`` of edged that docs/install.md gives. No image is built.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edged.config import load_config as load_edged
from edgefed.ports import free_port
from serverd.config import load_config as load_serverd
from tests.packaging.test_kubeedge_manifests import DOCS, device_plugin_args, pod_spec
from tests.support.builder import builder_module
from tests.support.paths import REPO

NPU = "skt.com/aix_v1"
Directory = tuple[int, int, int]  # uid, gid, mode


OCI = builder_module("oci", "oci.py")
DEBCHECK = builder_module("debcheck", "debcheck.py")
INSTALL_MD = REPO / "docs" / "install.md"
DEVICE_GROUPS = {"/dev/video": "video", "/dev/accel/": "render", "/dev/dri/": "render"}


def stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (the stage it is built FROM, its instructions as (KEYWORD, rest))."""
    out: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    text = OCI.CONTAINERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for line in re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = []
            out[name.strip()] = (base.strip(), current)
        elif keyword:
            current.append((keyword, rest.strip()))
    return out


def instructions(target: str, keyword: str) -> list[str]:
    """Every ``keyword`` instruction of ``target`` and the stages it is built on, in order."""
    chain: list[str] = []
    found = stages()
    while target in found:
        chain.insert(0, target)
        target = found[target][0]
    return [rest for name in chain for kw, rest in found[name][1] if kw == keyword]


def directories(target: str) -> dict[str, Directory]:
    """The directories ``install -d`` makes in ``target``'s stages: path -> (uid, gid, mode)."""
    users, groups = {"root": 0}, {"root": 0}
    made: dict[str, Directory] = {}
    for run in instructions(target, "RUN"):
        for command in run.split("&&"):
            words = command.split()
            if words[:1] == ["useradd"]:
                users[words[-1]] = int(words[words.index("--uid") + 1])
            if words[:1] == ["groupadd"]:
                groups[words[-1]] = int(words[words.index("--gid") + 1])
            if words[:2] != ["install", "-d"]:
                continue
            options = {"-o": "root", "-g": "root", "-m": "0755"}
            rest = words[2:]
            while rest and rest[0] in options:
                options[rest[0]], rest = rest[1], rest[2:]
            ids = (users[options["-o"]], groups[options["-g"]], int(options["-m"], 8))
            made |= {path: ids for path in rest}
    return made


def image_target(image: str) -> str | None:
    name = image.split(":")[0]
    target: str | None = OCI.IMAGES.get(name)
    return target


def search_allowed(uid: int, gid: int, directory: Directory) -> bool:
    """May a process of ``uid``:``gid`` without capabilities enter the directory? uid 0
    without CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH is held to the mode bits too."""
    owner, group, mode = directory
    shift = 6 if uid == owner else 3 if gid == group else 0
    return bool((mode >> shift) & 1)


def containers_of_our_images() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for workload in (d for d in DOCS if d["kind"] in ("Deployment", "DaemonSet")):
        pod = pod_spec(workload)
        for container in pod["containers"]:
            if image_target(container["image"]) is not None:
                found.append((workload["metadata"]["name"], pod, container))
    return found


def allocated_mounts() -> list[str]:
    """Container paths the device plugin's Allocate mounts into a pod given an NPU."""
    mounts = [a.split("=", 1)[1] for a in device_plugin_args() if a.startswith("--mount=")]
    return [m.split(":")[1] for m in mounts]


def test_the_pods_can_enter_every_directory_above_their_mounts() -> None:
    """edged and the device plugin run the edged image as uid 0 with every capability
    dropped: each directory of the image above one of their mounts must let them through."""
    checked = 0
    for workload, pod, container in containers_of_our_images():
        target = image_target(container["image"])
        assert target is not None
        user = instructions(target, "USER")[-1].split(":")
        security = pod.get("securityContext", {}) | container.get("securityContext", {})
        uid = int(security.get("runAsUser", user[0]))
        gid = int(security.get("runAsGroup", 0 if uid == 0 else user[-1]))
        if uid == 0 and "ALL" not in security.get("capabilities", {}).get("drop", []):
            continue  # root with CAP_DAC_OVERRIDE enters anything
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        if NPU in container["resources"]["limits"]:
            mounts += allocated_mounts()
        made = directories(target)
        for mount in mounts:
            for parent in Path(mount).parents:
                if str(parent) in made:
                    checked += 1
                    assert search_allowed(uid, gid, made[str(parent)]), (
                        f"{workload}: uid {uid} cannot enter {parent} "
                        f"(mode {made[str(parent)][2]:o}) to reach its mount {mount}"
                    )
    assert checked  # the manifests do mount below /var/lib/edgefed


def health_port(target: str) -> int:
    (check,) = instructions(target, "HEALTHCHECK")[-1:]
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", check)
    assert found, check
    return int(found.group(1))


def exposed(target: str) -> set[int]:
    return {int(port) for rest in instructions(target, "EXPOSE") for port in rest.split()}


@pytest.mark.parametrize(
    ("target", "config"), [("edged", "edged.yaml"), ("serverd", "serverd.yaml")]
)
def test_the_health_check_asks_the_port_the_baked_config_serves(target: str, config: str) -> None:
    path = OCI.IMAGE_CONFIGS[config]
    api = (load_edged(path) if target == "edged" else load_serverd(path)).api
    assert api.enabled
    assert api.port == health_port(target)
    assert api.port in exposed(target)
    if target == "serverd":  # reached from other pods (CloudCore's router); edged's API
        assert api.host == "0.0.0.0"  # only on the node's loopback (hostNetwork)


def test_the_serverd_image_starts_no_triton_it_does_not_have() -> None:
    config = load_serverd(OCI.IMAGE_CONFIGS["serverd.yaml"])
    has_triton = any("--from=venv-triton" in copy for copy in instructions("serverd", "COPY"))
    assert not has_triton
    assert config.triton.instances == 0 and config.endpoints


@pytest.mark.slow
def test_the_serverd_images_default_command_starts_and_is_healthy(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD of the serverd image on its baked config (state and port moved
    here): /healthz answers with no broker and no Triton reachable, SIGTERM ends it with 0."""
    entrypoint = json.loads(instructions("serverd", "ENTRYPOINT")[-1])
    command = json.loads(instructions("serverd", "CMD")[-1])
    assert entrypoint == ["serverd"]
    config = str(OCI.IMAGE_CONFIGS["serverd.yaml"])
    argv = [a.replace("/etc/edgefed/serverd.yaml", config) for a in command]
    port = free_port()
    env = {"SERVERD__STATE_DIR": str(tmp_path / "state"), "SERVERD__API__PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serverd", *argv],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as got:
                    assert got.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "no /healthz answer in 60 s"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def documented_run(image: str) -> list[str]:
    """docs/install.md's ``podman run`` of ``image``, as its argv."""
    text = re.sub(r"\\\n\s*", " ", INSTALL_MD.read_text(encoding="utf-8"))
    (line,) = [
        line
        for line in text.splitlines()
        if line.startswith("# podman run ") and f" localhost/{image}:" in line
    ]
    return shlex.split(line.removeprefix("# "))


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


def test_the_documented_podman_run_of_edged_gives_its_user_what_it_uses() -> None:
    """The image's user (USER: uid and gid 10001, no other group) must read the config
    and write the state it is given, and open the camera. The .deb's own paths (what
    postinst makes, ``debcheck.MODES``) are the host edgefed's or root's: uid 10001 gets
    only their "other" bits, and a chown to 10001 would take them from the .deb's edged."""
    uid = int(instructions("edged", "USER")[-1].split(":")[0])
    argv = documented_run("edgefed-edged")
    assert not {"--user", "-u"} & set(argv)  # the image's USER
    for volume in values(argv, "-v"):
        source, _, target = volume.partition(":")
        if source.lstrip("/") in DEBCHECK.MODES:
            mode = DEBCHECK.MODES[source.lstrip("/")][2]
            want = 0o4 if target.endswith(":ro") else 0o2
            assert mode & want, f"uid {uid} cannot use the .deb's {source} (mode {mode:o})"
    added = values(argv, "--group-add")
    for device in values(argv, "--device"):
        (group,) = [g for prefix, g in DEVICE_GROUPS.items() if device.startswith(prefix)]
        assert f"$(getent group {group} | cut -d: -f3)" in added, device  # the host's gid
    chowned = re.findall(rf"chown {uid}\S* (/\S+)", INSTALL_MD.read_text(encoding="utf-8"))
    assert [path for path in chowned if path.lstrip("/") in DEBCHECK.MODES] == []
