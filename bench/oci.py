"""``python -m bench oci [--images NAME ...]``: build, export and check the OCI images, timed.

Runs ``packaging/build oci`` (all three images unless ``--images`` names some; as root,
with the tools of packaging/dev/setup.d/61-oci-tools.sh), its progress lines on stderr,
then prints the builder's report as one JSON line: ``total_s`` (wheels, base image,
builds, exports, checks), per image ``build_s``, ``compressed_mb`` and the digest, and
``run_check`` (edged on vtest.avi under runc: ``stop_s`` from SIGTERM to exit 0). The first
run on a machine also makes the base image (debootstrap) and downloads the wheels: run it
twice to see a warm build. docs/install.md quotes both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench oci", description=__doc__)
    parser.add_argument("--images", nargs="+", default=[], help="image names (default: all)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "artifacts", help="build output (%(default)s)"
    )
    args = parser.parse_args(argv)
    command = [sys.executable, str(REPO / "packaging" / "build"), "oci", "--out", str(args.out)]
    if args.images:
        command += ["--images", *args.images]
    started = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, stdout=sys.stderr)
    if proc.returncode != 0:
        print(f"packaging/build oci failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    report = json.loads((args.out / "oci" / "report.json").read_text(encoding="utf-8"))
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, separators=(",", ":")))
    return 0
