"""The ``serverd`` command line: a thin layer over ``serverd.app``.

``serverd run -c serverd.yaml`` runs until SIGTERM/SIGINT; ``serverd check-config FILE``
validates a config and prints it resolved; ``serverd tritonserver [TRITON OPTIONS]`` execs
the bundled ``tritonserver`` of a Triton environment with EdgeFed's backends (the entry
point of the edgefed-serverd-triton image: Triton on its own, e.g. one Deployment per
replica, where serverd otherwise starts it), its API groups restricted to a key
(``serverd.triton.access``). Exit codes are those of ``edgefed.errors``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from edgefed import paths
from edgefed.config import check_config_command
from edgefed.errors import (
    EXIT_OK,
    run_command,
)
from edgefed.mqtt.config import check_files
from edgefed.signals import SIGNALS, StopSignals
from serverd import __version__, statuscli
from serverd.config import dump_config, load_config
from serverd.federation import cli as federation_cli

log = logging.getLogger("serverd")


def cmd_check_config(args: argparse.Namespace) -> int:
    return check_config_command(
        args.file, load_config, dump_config, lambda config: check_files(config.mqtt)
    )


async def _serve(config_path: Path) -> None:
    from serverd.app import ServerdApp  # heavy imports only when running

    config = load_config(config_path)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = StopSignals(log, "serverd", stop.set)
    for signum in SIGNALS:
        loop.add_signal_handler(signum, signals.handle, signum)
    await ServerdApp(config).run(stop)


def cmd_run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args.config))
    return EXIT_OK


def cmd_tritonserver(args: argparse.Namespace, triton_args: list[str]) -> int:
    """Replace this process with ``tritonserver`` (same pid: it gets the signals)."""
    from serverd.triton import access
    from serverd.triton.install import TritonInstall

    restriction = access.entry_point_restriction(args.key_file)
    install = TritonInstall.locate(args.venv)
    argv = [
        str(install.binary),
        f"--backend-directory={install.backend_dir(args.workdir)}",
        f"--cache-directory={install.cache_dir}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        *restriction,
        *triton_args,
    ]
    os.execve(argv[0], argv, install.environment(os.environ))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serverd", description="EdgeFed server daemon: Triton host and offload scheduler"
    )
    parser.add_argument("--version", action="version", version=f"serverd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve offload requests until SIGTERM/SIGINT")
    p.add_argument("-c", "--config", type=Path, required=True, help="serverd YAML config")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config and print it resolved")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)
    statuscli.add_subparser(sub)
    federation_cli.add_subparser(sub)
    p = sub.add_parser(
        "tritonserver",
        help="exec Triton with EdgeFed's backends; other options go to tritonserver",
    )
    p.add_argument(
        "--venv",
        type=Path,
        default=paths.triton_venv(),
        help="the Triton environment (serverd/triton/setup_env.sh; default %(default)s)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edgefed-triton",
        help="where the backend directory is laid out (default %(default)s)",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        help="every API but health then needs this file's key in the header "
        "edgefed-triton-key (serverd's endpoint key_file); without it, only the APIs "
        "serverd never calls are refused (docs/triton.md)",
    )
    p.set_defaults(func=cmd_tritonserver)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.func is cmd_tritonserver:
        return run_command("serverd", lambda: cmd_tritonserver(args, rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_command("serverd", lambda: int(args.func(args)))
