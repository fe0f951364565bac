"""The ``edged`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from edged import __version__
from edged.api import client as api_client
from edged.config import dump_config, load_config
from edgefed import certs
from edgefed.config import check_config_command
from edgefed.errors import (
    EXIT_OK,
    run_command,
)
from edgefed.images import cli as image_cli
from edgefed.mqtt.config import check_files
from edgefed.signals import SIGNALS, StopSignals

log = logging.getLogger("edged")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    return check_config_command(
        args.file, load_config, dump_config, lambda config: check_files(config.mqtt)
    )


def cmd_run(args: argparse.Namespace) -> int:
    from edged.app import EdgedApp, summary_line  # heavy imports only when running

    config = load_config(args.config)
    _setup_logging(config.log_level)
    stop = threading.Event()
    signals = StopSignals(log, "edged", stop.set)
    for signum in SIGNALS:
        signal.signal(signum, lambda n, _frame: signals.handle(n))
    app = EdgedApp(config)
    for name, reason in app.models.failures.items():
        log.error("model %s unavailable: %s", name, reason)
    log.info(
        "edged %s running %d models on %d cameras",
        __version__,
        len(app.models.runners),
        len(config.cameras),
    )
    app.run(stop)
    summary = app.final_summary()
    log.info("final %s", summary_line(summary))
    print(json.dumps(summary, indent=None if args.compact else 2))
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from edged.profiler import format_table, profile_images

    rows = profile_images(
        args.images, args.trust, args.iterations, args.allow_unsigned, args.agreement_frames
    )
    print(json.dumps(rows) if args.json else format_table(rows))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="EdgeFed edge appliance daemon")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline until SIGINT/SIGTERM")
    p.add_argument("-c", "--config", type=Path, required=True, help="edged YAML config")
    p.add_argument("--compact", action="store_true", help="print the final summary on one line")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config and print it resolved")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("profile", help="latency, throughput and memory of each model x driver")
    p.add_argument("images", type=Path, nargs="+", help="model image directories")
    p.add_argument("--trust", type=Path, action="append", default=[], help="trusted public key")
    p.add_argument("--allow-unsigned", action="store_true", help="accept unsigned images")
    p.add_argument("--iterations", type=int, default=50, help="timed runs per model x driver")
    p.add_argument(
        "--agreement-frames",
        type=int,
        default=50,
        help="held-out video frames an INT8 variant is compared with fp32 on"
        " (besides crops of the held-out sample stills)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_profile)

    image_cli.add_subparsers(sub)
    api_client.add_subparsers(sub)
    certs.add_subparsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("edged", lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
