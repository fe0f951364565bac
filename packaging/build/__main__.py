"""``python3 packaging/build {deb,oci,all}``: the .deb packages and the OCI images.

``deb``: the edgefed-edge and edgefed-server .deb packages. Steps, one progress line each:
the edgefed wheel and the pinned dependency wheels (``wheelhouse.py``), a debhelper source
tree under ``artifacts/deb/`` made from ``packaging/debian``, ``packaging/systemd`` and the
example configs, ``dpkg-buildpackage``, and ``lintian --fail-on error``; with
``--install-check``, an install in a clean chroot (``debcheck.py``) while lintian runs.
``oci``: the images edgefed-edged, edgefed-serverd and edgefed-serverd-triton, exported
and checked (``oci.py``). ``all``: ``deb --install-check``, then ``oci``. Run it with the
venv's Python (``.venv/bin/python``): it has the wheel's build requirements. Needs the
Debian packages of packaging/dev/setup.d/60-deb-tools.sh and 61-oci-tools.sh.
"""

from __future__ import annotations

import argparse
import email.utils
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# packaging/build/ is sys.path[0] when run as ``python3 packaging/build``
import debcheck
import oci
from wheelhouse import (
    CONFIGS,
    PACKAGING,
    REPO,
    BuildError,
    Progress,
    build_wheel,
    download_dependencies,
    run,
    version,
)

# which unit goes into which package (dh_installsystemd finds debian/<package>.<unit>)
UNITS = {
    "edgefed-edge": ("edged.service", "edgefed-deviceplugin.service"),
    "edgefed-server": ("serverd.service",),
}


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
    shutil.copy(REPO / "README.md", tree / "README.md")  # debian/edgefed-*.docs
    (tree / "etc" / "edgefed").mkdir(parents=True)
    for name, src in CONFIGS.items():
        shutil.copy(src, tree / "etc" / "edgefed" / name)
    shutil.copytree(out / "wheels", tree / "wheels")
    return tree


def build_debs(out: Path, check: bool) -> list[Path]:
    """The steps run one after another but for two that wait on nothing of theirs: the
    install check's chroot is bootstrapped while the packages build, and lintian reads the
    packages while the install check uses them (docs/install.md has the times)."""
    deb_version = version()
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~]*", deb_version):
        raise BuildError(f"version {deb_version!r} is not a Debian version")
    progress = Progress(8 if check else 5)
    with ThreadPoolExecutor(max_workers=2) as pool:
        base = (
            pool.submit(debcheck.base_chroot, out / f"chroot-base-{debcheck.BASE_TAG}")
            if check
            else None
        )
        wheel = build_wheel(out)
        progress.step(f"wheel {wheel.name}")
        count = download_dependencies(out)
        progress.step(f"dependency wheels of both roles ({count})")
        tree = stage_debian(out, deb_version)
        progress.step(f"debhelper tree {tree.relative_to(REPO)}")
        for old in out.glob("*.deb"):
            old.unlink()
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], tree)
        debs = sorted(out.glob(f"edgefed-*_{deb_version}_*.deb"))
        progress.step("dpkg-buildpackage: " + ", ".join(d.name for d in debs))
        shutil.rmtree(tree)
        lint = pool.submit(run, ["lintian", "--fail-on", "error", *map(str, debs)])
        if base is not None:
            try:
                debcheck.install_check(debs, base.result(), out, progress.step)
            except debcheck.CheckError as exc:
                also = lint.exception()  # said too, not lost behind the first failure
                raise BuildError(
                    f"install check: {exc}" + (f"\nand {also}" if also else "")
                ) from exc
        lint.result()
        progress.step("lintian --fail-on error: clean")
    return debs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__)
    parser.add_argument(
        "target", choices=["deb", "oci", "all"], help="what to build (all: deb, then oci)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "artifacts",
        help="output folder; deb/ and oci/ below it (%(default)s)",
    )
    parser.add_argument(
        "--install-check",
        action="store_true",
        help="deb: then install, use and purge both packages in a clean chroot (debcheck.py)",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        choices=list(oci.IMAGES),
        default=list(oci.IMAGES),
        metavar="NAME",
        help=f"oci: the images to build and check (default: all of {', '.join(oci.IMAGES)})",
    )
    args = parser.parse_args(argv)
    built: list[Path] = []
    try:
        if args.target in ("deb", "all"):
            out = (args.out / "deb").resolve()
            out.mkdir(parents=True, exist_ok=True)
            built += build_debs(out, args.install_check or args.target == "all")
        if args.target in ("oci", "all"):
            out = (args.out / "oci").resolve()
            out.mkdir(parents=True, exist_ok=True)
            built += oci.build_images(out, args.images)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in built:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
