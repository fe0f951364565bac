"""``edged image ...`` and ``python -m edgefed.images ...``: build, verify, install, rollback.

A thin layer over the library; every command returns an exit code and lets
ImageError propagate to the caller, which prints it and exits with EXIT_IMAGE.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from edgefed.errors import EXIT_IMAGE, EXIT_OK, ImageError
from edgefed.paths import checkout_path

from . import health, quantize, signing
from .build import ImageBuilder
from .export import ExportCache, ExportVenv
from .install import install_image, rollback_image
from .recipe import recipe_paths
from .verify import read_manifest, verify_image
from .wheels import PipDownloader, WheelCache

# A checkout's firmware-images/ by default; installed from a wheel there is none, so the
# build command then needs --recipes, --out and --cache.
DEFAULT_RECIPES = checkout_path("firmware-images/recipes")
DEFAULT_OUT = checkout_path("firmware-images/build")
DEFAULT_CACHE = checkout_path("firmware-images/cache")
DEV_KEY = Path("keys/dev-signing.key")  # under --out
DEV_PUB = Path("keys/dev-signing.pub")


def signing_key(args: argparse.Namespace) -> signing.Ed25519PrivateKey:
    """The ``--key`` given, or the dev key under ``--out`` (generated on first use)."""
    if args.key is not None:
        return signing.load_private_key(args.key)
    private, public = args.out / DEV_KEY, args.out / DEV_PUB
    if private.is_file():
        return signing.load_private_key(private)
    print(f"generating dev signing key {private} (public key {public})", file=sys.stderr)
    return signing.generate_key_pair(private, public)


def cmd_build(args: argparse.Namespace) -> int:
    if not args.all and not args.names:
        raise ImageError("name the recipes to build or pass --all")
    paths = recipe_paths(args.recipes, None if args.all else args.names)
    key = signing_key(args)
    builder = ImageBuilder(
        out=args.out,
        wheels=WheelCache(args.cache / "wheels", PipDownloader(extra_args=args.pip_arg)),
        exports=ExportCache(args.cache / "exports"),
        export_venv=ExportVenv(args.cache / "export-venv", pip_args=args.pip_arg),
        key=key,
    )
    for path in paths:
        result = builder.build(path, force=args.force)
        print(f"{result.name}: {'built' if result.built else 'up to date'} {result.path}")
        if args.quantize is None:
            continue
        if not read_manifest(result.path).model_file.endswith(".onnx"):
            print(f"{result.name}: not ONNX, no {args.quantize} variant")
            continue
        variant, built = quantize.quantize_image(
            result.path,
            key,
            [key.public_key()],
            frames=args.calibration_frames,
            force=args.force,
        )
        print(f"{variant.name}: {'built' if built else 'up to date'} {variant}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.paths:
        try:
            manifest = verify_image(path, args.trust, args.allow_unsigned)
        except ImageError as exc:
            print(f"FAIL {path}: {exc}", file=sys.stderr)
            failed += 1
        else:
            print(
                f"ok {path}: {manifest.name} {manifest.version} ({manifest.task}, "
                f"{manifest.driver}, {len(manifest.files)} files)"
            )
    return EXIT_IMAGE if failed else EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    checks = []
    if args.health_cmd:
        checks.append(health.command(shlex.split(args.health_cmd), args.health_timeout))
    if args.health_url:
        checks.append(health.http(args.health_url, args.health_timeout))
    manifest, state = install_image(
        args.path,
        args.root,
        args.trust,
        args.allow_unsigned,
        force=args.force,
        health=health.chain(checks),
    )
    print(f"installed {manifest.name} {manifest.version} into slot {state.active}: {state.path}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    manifest, state = rollback_image(args.root, args.name, args.trust, args.allow_unsigned)
    print(f"rolled back {args.name} to {manifest.version} in slot {state.active}: {state.path}")
    return EXIT_OK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="KEY",
        help="trusted Ed25519 public key (PEM or raw 32 bytes); repeatable",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept images without a valid signature (development only)",
    )


def add_commands(sub: Any) -> None:
    """Add build/verify/install/rollback to an argparse sub-parsers object."""
    p = sub.add_parser("build", help="build signed images from recipes (idempotent)")
    p.add_argument("names", nargs="*", help="recipe names (file stems under --recipes)")
    p.add_argument("--all", action="store_true", help="build every recipe")
    for option, default, what in (
        ("--recipes", DEFAULT_RECIPES, "recipe folder"),
        ("--out", DEFAULT_OUT, "output folder of images"),
        ("--cache", DEFAULT_CACHE, "wheel, export and export-venv cache"),
    ):
        where = f"default: {default}" if default else "required outside a checkout"
        p.add_argument(
            option, type=Path, default=default, required=default is None, help=f"{what} ({where})"
        )
    p.add_argument(
        "--key",
        type=Path,
        default=None,
        help=f"Ed25519 private key (default: OUT/{DEV_KEY}, generated if absent)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also make a signed statically quantised NAME_int8 variant of each ONNX image",
    )
    p.add_argument(
        "--calibration-frames",
        type=_positive,
        default=quantize.DEFAULT_CALIBRATION_FRAMES,
        metavar="N",
        help=f"frames of {quantize.SAMPLE_VIDEO.name} to calibrate on, besides the sample"
        " stills next to it (default: %(default)s)",
    )
    p.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for pip (e.g. --pip-arg=--no-index); repeatable",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify", help="check an image's signature and file hashes")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image directories")
    _trust_options(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("install", help="install a verified image into its A/B slots")
    p.add_argument("path", type=Path, help="image directory to install")
    p.add_argument("--root", type=Path, required=True, help="images root (edged images.dir)")
    _trust_options(p)
    p.add_argument("--force", action="store_true", help="install even an older version")
    p.add_argument(
        "--health-cmd",
        metavar="CMD",
        help="after the switch run CMD (no shell; e.g. 'systemctl restart edged'); "
        "failure rolls back",
    )
    p.add_argument(
        "--health-url",
        metavar="URL",
        help="after the switch (and CMD) poll URL until 200, e.g. "
        "http://127.0.0.1:8080/readyz; failure rolls back",
    )
    p.add_argument(
        "--health-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the command and the URL each get (default: %(default)s)",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("rollback", help="switch an installed image back to its other slot")
    p.add_argument("name", help="image name")
    p.add_argument("--root", type=Path, required=True, help="images root (edged images.dir)")
    _trust_options(p)
    p.set_defaults(func=cmd_rollback)


def add_subparsers(subparsers: Any) -> None:
    """Add ``image`` with its commands to the ``edged`` command line."""
    p = subparsers.add_parser("image", help="build, verify, install and roll back model images")
    add_commands(p.add_subparsers(dest="image_command", required=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgefed.images", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IMAGE
    return code
