"""``python -m drivers.deviceplugin``: advertise one driver's NPUs to the kubelet."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgefed.driver import Driver
from edgefed.errors import EXIT_CONFIG, EXIT_DRIVER, EXIT_OK, ConfigError, DriverError
from edgefed.sdnotify import Notifier

from .. import registry
from . import stubs
from .config import DevicePluginConfig, MountSpec, parse_resources
from .plugin import DevicePlugin

log = logging.getLogger("drivers.deviceplugin")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m drivers.deviceplugin",
        description="Kubernetes device plugin (v1beta1) for the NPUs an EdgeFed driver sees.",
    )
    p.add_argument(
        "--driver-config",
        type=Path,
        required=True,
        help="YAML file with one driver block, e.g. 'type: fake-npu' plus its fields",
    )
    p.add_argument(
        "--socket-dir",
        type=Path,
        default=Path(stubs.DEFAULT_SOCKET_DIR),
        help="the kubelet's device-plugin directory (default: %(default)s)",
    )
    p.add_argument(
        "--resource-domain", default="edgefed.io", help="resource vendor domain (%(default)s)"
    )
    p.add_argument(
        "--resource-prefix",
        default="npu",
        help="resource = <domain>/<prefix>-<device model> (default prefix: %(default)s)",
    )
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="RESOURCE=MODEL",
        help="advertise devices of MODEL as RESOURCE instead of the derived name, e.g. "
        "skt.com/aix_v1=x220 (repeatable; several models may share a resource)",
    )
    p.add_argument(
        "--device-node",
        action="append",
        default=[],
        metavar="TEMPLATE",
        help="host device node per allocated device, '{id}' = device id (repeatable)",
    )
    p.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="HOST:CONTAINER[:ro|rw]",
        help="host path mounted into containers that get a device (repeatable)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between health and kubelet.sock checks (default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def build_config(args: argparse.Namespace) -> DevicePluginConfig:
    """The validated plugin settings; ConfigError names the bad option."""
    try:
        return DevicePluginConfig(
            resource_domain=args.resource_domain,
            resource_prefix=args.resource_prefix,
            resources=parse_resources(args.resource),
            socket_dir=args.socket_dir,
            poll_interval_s=args.poll_interval,
            device_nodes=tuple(args.device_node),
            mounts=tuple(MountSpec.parse(m) for m in args.mount),
        )
    except (ValidationError, ValueError) as exc:
        raise ConfigError(_one_line(exc)) from exc


def check_watchdog(config: DevicePluginConfig, notifier: Notifier) -> None:
    """The poll loop pets systemd's watchdog: it must turn at least twice per interval."""
    interval = notifier.watchdog_s
    if interval is not None and config.poll_interval_s > interval / 2:
        raise ConfigError(
            f"--poll-interval {config.poll_interval_s:g} s is more than half the watchdog "
            f"interval ({interval:g} s, WatchdogSec): the watchdog would fire between polls"
        )


def load_driver(path: Path) -> Driver:
    """Read the driver block and start the driver (ConfigError / DriverError on failure)."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {_one_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a driver 'type'")
    return registry.create(registry.parse_config(raw))


async def _serve(plugin: DevicePlugin) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await plugin.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    notifier = Notifier()  # systemd's, if any
    try:
        config = build_config(args)
        check_watchdog(config, notifier)
        driver = load_driver(args.driver_config)
    except ConfigError as exc:
        log.error("invalid configuration: %s", _one_line(exc))
        return EXIT_CONFIG
    except DriverError as exc:
        log.error("driver failed: %s", _one_line(exc))
        return EXIT_DRIVER
    try:
        plugin = DevicePlugin(driver, config, stubs.load(), notifier)
        asyncio.run(_serve(plugin))
    except DriverError as exc:
        log.error("%s", exc)
        return EXIT_DRIVER
    finally:
        driver.close()
        notifier.close()
    return EXIT_OK
