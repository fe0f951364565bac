"""A running edged on the real video with the real demo models and the API on a free port.

One daemon serves the whole package (loading four models costs seconds) and stops when
the package's tests end; tests that change runtime settings restore them through the
``restore_settings`` fixture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edged.api.config import ApiConfig
from edged.api.preview import PreviewSink
from edged.api.server import ApiServer
from edged.api.sources import ApiSources
from edged.app import EdgedApp
from edged.config import parse_config
from edged.pipeline import Pipeline
from edged.settings import RuntimeConfig, RuntimeSettings
from tests.support.configs import demo_config
from tests.support.paths import IMAGES_DIR, VTEST

TOKEN = "test-token-0123456789abcdef"
DEMO_IMAGES = ("pose_detector", "pose_landmarks", "face_detector", "efficientnet_lite0")


@dataclass
class Daemon:
    app: EdgedApp
    api: ApiServer
    runtime: RuntimeConfig
    preview: PreviewSink
    sources: ApiSources
    url: str
    refuse: set[str]  # runtime settings whose setter fails (to test the rollback)


def runtime_for(pipeline: Pipeline, refuse: set[str]) -> RuntimeConfig:
    """Runtime settings wired to a pipeline's setters; setters named in ``refuse`` raise."""
    cfg = pipeline.config

    def set_fps(value: Any) -> None:
        pipeline.target_fps = value

    setters = {
        "motion_threshold": lambda v: pipeline.set_motion(threshold=v),
        "motion_min_pixels": lambda v: pipeline.set_motion(min_pixels=v),
        "target_fps": set_fps,
        "enabled_models": pipeline.set_enabled,
        "offload_policy": lambda v: None,
        "log_level": lambda v: logging.getLogger("edged").setLevel(v),
        "federated_training": lambda v: None,
    }

    def guarded(key: str, setter: Callable[[Any], None]) -> Callable[[Any], None]:
        def set_value(value: Any) -> None:
            if key in refuse:
                raise RuntimeError(f"{key} refused by the test")
            setter(value)

        return set_value

    initial = RuntimeSettings(
        motion_threshold=cfg.motion.threshold,
        motion_min_pixels=cfg.motion.min_pixels,
        target_fps=cfg.pipeline.target_fps,
        enabled_models=sorted(pipeline.enabled),
        offload_policy="never",
        log_level=cfg.log_level,
    )
    guarded_setters = {k: guarded(k, fn) for k, fn in setters.items()}
    return RuntimeConfig(initial, guarded_setters, known_models=lambda: pipeline.workers)


def start_daemon(tmp: Path, api: dict[str, Any] | None = None, **sections: Any) -> Daemon:
    """Build and start EdgedApp + ApiServer on a free port (the caller stops ``app``)."""
    missing = [name for name in DEMO_IMAGES if not (IMAGES_DIR / name).is_dir()]
    if missing or not VTEST.is_file():
        pytest.fail(
            f"demo images or the test video are missing: {missing or VTEST}; run "
            "packaging/dev/setup.sh",
            pytrace=False,
        )
    raw = demo_config(tmp, **sections)
    raw["cameras"][0]["loop"] = True
    raw["api"] = {
        "enabled": False
    }  # the test serves its own ApiServer with a fault-injecting runtime
    config = parse_config(raw, env={})
    preview = PreviewSink()
    app = EdgedApp(config, extra_sinks=(preview,))
    refuse: set[str] = set()
    runtime = runtime_for(app.pipeline, refuse)
    sources = ApiSources(
        pipeline=app.pipeline,
        events=app.events,
        objects=app.objects,
        preview=preview,
        device_id=config.device_id,
        model_failures=app.models.failures,
        runtime=runtime,
        stalled=app.stalled,
    )
    server = ApiServer(ApiConfig(port=0, token=TOKEN, **(api or {})), sources, env={})
    app.add_service(server)
    try:
        app.start()
    except BaseException:
        app.stop()
        raise
    return Daemon(app, server, runtime, preview, sources, server.url, refuse)


@pytest.fixture(scope="package")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("edged-api"))
    try:
        yield d
    finally:
        d.app.stop()


@pytest.fixture
def restore_settings(daemon: Daemon) -> Iterator[RuntimeSettings]:
    before = daemon.runtime.current()
    try:
        yield before
    finally:
        daemon.runtime.apply(before.model_dump())
