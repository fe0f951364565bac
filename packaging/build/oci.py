"""``python3 packaging/build oci``: the OCI images, built without a Docker engine, and checked.

``IMAGES`` names what is built: ``<name>:<version>`` with the project version of
pyproject.toml, the names the KubeEdge manifests use (tests/packaging/test_image_names.py
holds them to this table). Steps, one progress line each: the wheels (``wheelhouse.py``,
plus Triton's lock), the base image (a minbase bookworm made once with debootstrap and
imported: no registry is needed), the build context, then per image ``buildah bud
--isolation chroot --format docker`` (the docker format keeps the HEALTHCHECK), an export
with ``skopeo copy`` to an OCI layout in ``artifacts/oci/layouts/<name>`` and an offline
check of it (``skopeo inspect``: digest, layers, and the config's Entrypoint, non-root User
and org.opencontainers.image labels). Last, edged runs in its image under runc (unpacked
with umoci, read-only root) on the sample video for 20 s and must exit 0 within 5 s of
SIGTERM, having written results. Needs the Debian packages of
packaging/dev/setup.d/61-oci-tools.sh and root (buildah and runc as root, no daemon).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import debcheck
import yaml
from wheelhouse import (
    CONFIGS,
    PACKAGING,
    REPO,
    BuildError,
    Progress,
    build_wheel,
    download_dependencies,
    project,
    run,
    version,
)

# image name -> its target in packaging/oci/Containerfile
IMAGES = {
    "edgefed-edged": "edged",
    "edgefed-serverd": "serverd",
    "edgefed-serverd-triton": "serverd-triton",
}
RUN_CHECKED = "edgefed-edged"  # the image that runs on the sample video
CONTAINERFILE = PACKAGING / "oci" / "Containerfile"
TRITON_LOCK = REPO / "serverd" / "triton" / "requirements.txt"
# python3-venv builds the venvs, libpython3.11 is what Triton's python backend stub links,
# tini is PID 1 of the Triton image
BASE_PACKAGES = "python3.11,python3-venv,libpython3.11,tini"
BASE_TAG = hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:8]
BASE_IMAGE = f"localhost/edgefed-base:{debcheck.SUITE}-{BASE_TAG}"
LABEL_PREFIX = "org.opencontainers.image."
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian's opencv-doc
RUN_S = 20.0
STOP_WITHIN_S = 5.0
CONTAINER_UID = 10001  # the edgefed user of the images (and of the manifests)
# /etc/edgefed/ of the images: the .debs' configs, but serverd's own (no Triton in its image,
# the API on the port its HEALTHCHECK asks)
IMAGE_CONFIGS = CONFIGS | {"serverd.yaml": PACKAGING / "oci" / "serverd.yaml"}


def image_ref(name: str, tag: str) -> str:
    """``name:tag`` as the manifests write it; containers-storage holds it as localhost/..."""
    return f"{name}:{tag}"


def revision() -> str:
    """The commit the images are built from; ``-dirty`` when the checkout has edits (the
    wheel carries them)."""
    commit = run(["git", "rev-parse", "HEAD"]).strip()
    dirty = run(["git", "status", "--porcelain", "--untracked-files=normal"]).strip()
    return commit + ("-dirty" if dirty else "")


def source() -> str:
    """Where the source is: the checkout's origin remote, else the checkout itself."""
    proc = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=REPO, capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else REPO.as_uri()


def licenses() -> str:
    """pyproject's license (an SPDX expression), for org.opencontainers.image.licenses."""
    found = project()["license"]
    return str(found["text"] if isinstance(found, dict) else found)


def base_image(out: Path) -> str:
    """The base image in containers-storage, imported once from a debootstrapped rootfs."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
        return BASE_IMAGE
    try:
        rootfs = debcheck.base_chroot(out / f"base-rootfs-{BASE_TAG}", BASE_PACKAGES)
    except debcheck.CheckError as exc:
        raise BuildError(str(exc)) from exc
    leftovers = ["--exclude=./var/cache/apt/archives/*.deb", "--exclude=./var/lib/apt/lists/*"]
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), *leftovers, "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
    )
    try:
        imported = subprocess.run(
            ["podman", "import", "-q", "-", BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise BuildError(f"podman import of {rootfs} failed: {imported.stderr.strip()}")
    return BASE_IMAGE


def stage_context(out: Path) -> Path:
    """The build context: wheels (hard links), make-venv, model images, key and configs."""
    context = out / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    shutil.copytree(out / "wheels", context / "wheels", copy_function=os.link)
    shutil.copy(PACKAGING / "debian" / "make-venv", context / "make-venv")
    for name, src in IMAGE_CONFIGS.items():
        shutil.copy(src, context / name)
    built = REPO / "firmware-images" / "build"
    shutil.copy(built / "keys" / "dev-signing.pub", context / "image-signing.pub")
    for manifest in sorted(built.glob("*/manifest.yaml")):
        shutil.copytree(manifest.parent, context / "images" / manifest.parent.name)
    if not (context / "images").is_dir():
        raise BuildError(f"no signed model images in {built}: run bash packaging/dev/setup.sh")
    return context


def build(name: str, tag: str, context: Path, base: str, labels: dict[str, str]) -> None:
    args = [f"BASE={base}", f"VERSION={tag}"]
    args += [f"{key.upper()}={value}" for key, value in labels.items()]
    run(
        [
            "buildah",
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "--layers",
            "-f",
            str(CONTAINERFILE),
            "--target",
            IMAGES[name],
            *(f"--build-arg={a}" for a in args),
            "-t",
            f"localhost/{image_ref(name, tag)}",
            str(context),
        ]
    )


def export(name: str, tag: str, out: Path) -> Path:
    layout = out / "layouts" / name
    shutil.rmtree(layout, ignore_errors=True)
    layout.parent.mkdir(parents=True, exist_ok=True)
    ref = image_ref(name, tag)
    run(["skopeo", "copy", "-q", f"containers-storage:localhost/{ref}", f"oci:{layout}:{tag}"])
    return layout


def check_layout(layout: Path, name: str, tag: str, labels: dict[str, str]) -> dict[str, Any]:
    """Inspect the OCI layout offline; BuildError names what is wrong, else its figures."""
    where = f"oci:{layout}:{tag}"
    manifest: dict[str, Any] = json.loads(run(["skopeo", "inspect", where]))
    raw: dict[str, Any] = json.loads(run(["skopeo", "inspect", "--raw", where]))
    config: dict[str, Any] = json.loads(run(["skopeo", "inspect", "--config", where]))
    settings = config.get("config", {})
    problems = []
    if not settings.get("Entrypoint"):
        problems.append("no Entrypoint")
    user = str(settings.get("User", ""))
    if user.split(":")[0] in ("", "0", "root"):
        problems.append(f"User {user!r} is root")
    found = settings.get("Labels") or {}
    want = {LABEL_PREFIX + key: value for key, value in labels.items()}
    want |= {LABEL_PREFIX + "title": name, LABEL_PREFIX + "version": tag}
    problems += [
        f"label {k}={found.get(k)!r}, not {v!r}" for k, v in want.items() if found.get(k) != v
    ]
    if problems:
        raise BuildError(f"{where}: {'; '.join(problems)}")
    return {
        "digest": manifest["Digest"],
        "layers": len(raw["layers"]),
        "compressed_mb": round(sum(int(layer["size"]) for layer in raw["layers"]) / 1e6, 1),
        "user": user,
        "entrypoint": " ".join(settings["Entrypoint"]),
    }


def check_config() -> dict[str, Any]:
    """The image's own edged.yaml with the sample video as its camera and a results file."""
    config: dict[str, Any] = yaml.safe_load(IMAGE_CONFIGS["edged.yaml"].read_text(encoding="utf-8"))
    config["cameras"] = [
        {"name": "vtest", "source": "/video/vtest.avi", "loop": True, "pace": "native"}
    ]
    config["output"]["results"] = "/var/lib/edgefed/edged/results.jsonl"
    return config


def bundle_config(bundle: Path, state: Path) -> None:
    """Point the unpacked bundle at the check: read-only root, video, config, state, /tmp."""
    path = bundle / "config.json"
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    spec["process"]["args"] = ["edged", "run", "-c", "/etc/edgefed/check.yaml", "--compact"]
    spec["process"]["terminal"] = False
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    spec["root"]["readonly"] = True

    def bind(source: Path, target: str, mode: str) -> dict[str, Any]:
        return {
            "destination": target,
            "type": "bind",
            "source": str(source),
            "options": ["rbind", mode],
        }

    spec["mounts"] += [
        bind(VIDEO, "/video/vtest.avi", "ro"),
        bind(state / "check.yaml", "/etc/edgefed/check.yaml", "ro"),
        bind(state / "edged", "/var/lib/edgefed/edged", "rw"),
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
    ]
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")


def run_check(layout: Path, tag: str, out: Path) -> dict[str, Any]:
    """edged in its image under runc on the sample video; exit 0 within 5 s of SIGTERM."""
    if not VIDEO.is_file():
        raise BuildError(f"{VIDEO} is missing: install opencv-doc (packaging/dev/setup.sh)")
    work = out / "run-check"
    shutil.rmtree(work, ignore_errors=True)
    bundle, state = work / "bundle", work / "state"
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    (state / "edged").mkdir(parents=True)
    os.chown(state / "edged", CONTAINER_UID, CONTAINER_UID)
    (state / "check.yaml").write_text(yaml.safe_dump(check_config()), encoding="utf-8")
    bundle_config(bundle, state)
    runc = ["runc", "--root", str(work / "runc")]
    container = f"edgefed-oci-check-{os.getpid()}"
    log = work / "edged.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*runc, "run", "--bundle", str(bundle), container], stdout=sink, stderr=sink
        )
    try:
        try:
            proc.wait(RUN_S)
            raise BuildError(f"edged exited {proc.returncode} early:\n{_tail(log)}")
        except subprocess.TimeoutExpired:
            pass
        run([*runc, "kill", container, "TERM"])
        signalled = time.monotonic()
        try:
            code = proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise BuildError(f"edged still runs {STOP_WITHIN_S:.0f} s after SIGTERM") from None
        stopped = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            subprocess.run([*runc, "kill", container, "KILL"], capture_output=True)
            proc.wait()
        subprocess.run([*runc, "delete", "--force", container], capture_output=True)
    if code != 0:
        raise BuildError(f"edged exited {code} on SIGTERM:\n{_tail(log)}")
    results = state / "edged" / "results.jsonl"
    lines = results.read_text(encoding="utf-8").splitlines() if results.is_file() else []
    if not lines:
        raise BuildError(f"edged wrote no results in {RUN_S:.0f} s:\n{_tail(log)}")
    shutil.rmtree(bundle)
    return {
        "ran_s": RUN_S,
        "result_lines": len(lines),
        "exit_code": code,
        "stop_s": round(stopped, 2),
    }


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])


def build_images(out: Path, names: list[str]) -> list[Path]:
    """Build, export and check ``names`` (keys of IMAGES); returns their OCI layouts.
    The figures go to ``out/report.json`` (``python -m bench oci`` prints them)."""
    started = time.monotonic()
    tag = version()
    progress = Progress(4 + 2 * len(names) + (RUN_CHECKED in names))
    wheel = build_wheel(out)
    progress.step(f"wheel {wheel.name}")
    count = download_dependencies(out, TRITON_LOCK)
    progress.step(f"dependency wheels of both roles and Triton's lock ({count})")
    base = base_image(out)
    progress.step(f"base image {base} ({debcheck.SUITE} minbase: {BASE_PACKAGES})")
    context = stage_context(out)
    progress.step(f"build context {context}")
    labels = {"revision": revision(), "source": source(), "licenses": licenses()}
    report: dict[str, Any] = {"version": tag, "revision": labels["revision"], "images": {}}
    layouts = []
    for name in names:
        began = time.monotonic()
        build(name, tag, context, base, labels)
        build_s = time.monotonic() - began
        progress.step(f"built {image_ref(name, tag)} in {build_s:.0f} s")
        layout = export(name, tag, out)
        found = check_layout(layout, name, tag, labels)
        report["images"][name] = {"build_s": round(build_s, 1), **found}
        progress.step(
            f"exported to {layout} and inspected offline: {found['digest'][:19]}, "
            f"{found['layers']} layers, {found['compressed_mb']:.0f} MB compressed, "
            f"user {found['user']}, entrypoint {found['entrypoint']}"
        )
        layouts.append(layout)
    if RUN_CHECKED in names:
        ran = run_check(out / "layouts" / RUN_CHECKED, tag, out)
        report["run_check"] = {"image": RUN_CHECKED, **ran}
        progress.step(
            f"edged ran {ran['ran_s']:.0f} s on {VIDEO.name} under runc "
            f"({ran['result_lines']} result lines), exit 0 {ran['stop_s']:.1f} s after SIGTERM"
        )
    shutil.rmtree(context)
    report["total_s"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return layouts
