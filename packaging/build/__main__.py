"""``python3 packaging/build deb``: the edgefed-edge and edgefed-server .deb packages.

Steps, one progress line each: the edgefed wheel from the checkout's files (tracked and new,
never generated or ignored ones), the pinned dependency wheels of both roles (pip download,
binary only; kept between runs), a debhelper source tree under ``artifacts/deb/`` made from
``packaging/debian``, ``packaging/systemd`` and the example configs, ``dpkg-buildpackage``,
and ``lintian --fail-on error``; with ``--install-check``, an install in a clean chroot
(``debcheck.py``). Run it with the venv's Python (``.venv/bin/python``):
it has the wheel's build requirements. Needs the Debian packages debhelper, lintian and
python3-venv (packaging/dev/setup.d/60-deb-tools.sh).
"""

from __future__ import annotations

import argparse
import email.utils
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import debcheck  # packaging/build/ is sys.path[0] when run as ``python3 packaging/build``

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
# which unit goes into which package (dh_installsystemd finds debian/<package>.<unit>)
UNITS = {
    "edgefed-edge": ("edged.service", "edgefed-deviceplugin.service"),
    "edgefed-server": ("serverd.service",),
}
CONFIGS = {
    "edged.yaml": REPO / "edged" / "example-config.yaml",
    "serverd.yaml": REPO / "serverd" / "example-config.yaml",
    "npu-driver.yaml": PACKAGING / "debian" / "npu-driver.yaml",
}


class BuildError(Exception):
    """A step failed; the message says which and what it printed."""


class Progress:
    def __init__(self, steps: int) -> None:
        self._steps = steps
        self._done = 0
        self._start = time.monotonic()

    def step(self, what: str) -> None:
        self._done += 1
        elapsed = time.monotonic() - self._start
        print(f"[{self._done}/{self._steps}] {what} (+{elapsed:.1f} s)", flush=True)


def run(argv: list[str], cwd: Path = REPO) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        tail = "\n".join(line if len(line) < 300 else line[:297] + "..." for line in lines)
        raise BuildError(f"{' '.join(argv[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def project() -> dict[str, object]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data["project"])


def pinned_requirements() -> list[str]:
    """The base requirements and those of the edge and server extras (``dev`` is not shipped)."""
    meta = project()
    extras = meta["optional-dependencies"]
    assert isinstance(extras, dict)
    reqs = [*meta["dependencies"], *extras["edge"], *extras["server"]]  # type: ignore[misc]
    return sorted(set(reqs))


def source_tree(dest: Path) -> Path:
    """The checkout's tracked and new files (what a clean clone plus your edits holds)."""
    names = run(["git", "ls-files", "-co", "--exclude-standard", "-z"]).split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def build_wheel(out: Path) -> Path:
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    source_tree(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for old in out.glob("wheels/edgefed-*.whl"):
        old.unlink()
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out / "wheels"), "."], src)
    shutil.rmtree(src)
    (wheel,) = out.glob("wheels/edgefed-*.whl")
    return wheel


def download_dependencies(out: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = str(out / "wheels")
    run([*pip, "download", "--only-binary=:all:", "-d", wheels, *pinned_requirements()])


def changelog(version: str) -> str:
    date = email.utils.formatdate(localtime=False)
    return (
        f"edgefed ({version}) unstable; urgency=medium\n\n"
        f"  * Release {version}; see CHANGELOG.md of the source.\n\n"
        f" -- EdgeFed maintainers <maintainers@edgefed.invalid>  {date}\n"
    )


def stage_debian(out: Path, version: str) -> Path:
    tree = out / f"edgefed-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(PACKAGING / "debian", tree / "debian")
    (tree / "debian" / "npu-driver.yaml").unlink()  # a config, staged below
    (tree / "debian" / "changelog").write_text(changelog(version), encoding="utf-8")
    for package, units in UNITS.items():
        for unit in units:
            shutil.copy(PACKAGING / "systemd" / unit, tree / "debian" / f"{package}.{unit}")
    (tree / "etc" / "edgefed").mkdir(parents=True)
    for name, src in CONFIGS.items():
        shutil.copy(src, tree / "etc" / "edgefed" / name)
    shutil.copytree(out / "wheels", tree / "wheels")
    return tree


def build_debs(out: Path, check: bool) -> list[Path]:
    version = str(project()["version"])
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~]*", version):
        raise BuildError(f"version {version!r} is not a Debian version")
    progress = Progress(8 if check else 5)
    wheel = build_wheel(out)
    progress.step(f"wheel {wheel.name}")
    download_dependencies(out)
    progress.step(f"dependency wheels of both roles ({len(list(out.glob('wheels/*.whl')))})")
    tree = stage_debian(out, version)
    progress.step(f"debhelper tree {tree.relative_to(REPO)}")
    for old in out.glob("*.deb"):
        old.unlink()
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], tree)
    debs = sorted(out.glob(f"edgefed-*_{version}_*.deb"))
    progress.step("dpkg-buildpackage: " + ", ".join(d.name for d in debs))
    run(["lintian", "--fail-on", "error", *map(str, debs)])
    progress.step("lintian --fail-on error: clean")
    shutil.rmtree(tree)
    if check:
        try:
            debcheck.install_check(debs, out, progress.step)
        except debcheck.CheckError as exc:
            raise BuildError(f"install check: {exc}") from exc
    return debs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__)
    parser.add_argument("target", choices=["deb"], help="what to build")
    parser.add_argument(
        "--out", type=Path, default=REPO / "artifacts" / "deb", help="output folder (%(default)s)"
    )
    parser.add_argument(
        "--install-check",
        action="store_true",
        help="then install, use and purge both packages in a clean chroot (debcheck.py)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        debs = build_debs(args.out.resolve(), args.install_check)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for deb in debs:
        print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
