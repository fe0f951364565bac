"""The NPU backend's core: JPEG bytes in, JSON results out, through the project's runtime.

``backends/npu/model.py`` (run by Triton's python backend stub in ``.venv-triton``) is a
thin wrapper around ``NpuModel``: the model image is verified and loaded by
``edgefed.models.runner.open_runner`` on a driver from ``drivers.registry``, exactly as on
the edge, so the server runs the same pre-processing, model and decoder.

Triton hands the model config's ``parameters`` as ``{key: {"string_value": str}}``;
``NpuSettings.from_parameters`` reads them (``serverd.triton.settings``).
"""

from __future__ import annotations

import json
import time

import cv2
import numpy as np

from drivers import registry
from edgefed.driver import Driver
from edgefed.errors import ModelError, ProtocolError
from edgefed.images.verify import read_manifest
from edgefed.models.runner import ModelRunner, open_runner
from edgefed.models.scan import scan
from edgefed.models.types import result_to_dict
from edgefed.wire import check_jpeg_pixels
from serverd.triton.settings import NpuSettings, Regions


def decode_jpeg(data: bytes) -> np.ndarray:
    """A BGR frame from JPEG bytes; ModelError if unreadable or larger than the wire's
    pixel limit, which is checked from the header before any pixel is decoded."""
    try:
        check_jpeg_pixels(data)
    except ProtocolError as exc:
        raise ModelError(f"input of {len(data)} bytes is not a decodable image: {exc}") from None
    buffer = np.frombuffer(data, dtype=np.uint8)
    frame = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if frame is None:
        raise ModelError(f"input of {len(data)} bytes is not a decodable image")
    return frame


class NpuModel:
    """One model image on one driver, answering ``run(jpeg) -> JSON``."""

    def __init__(self, runner: ModelRunner, driver: Driver, regions: Regions = "full") -> None:
        self.runner = runner
        self._driver = driver
        self._scan = regions == "scan" and runner.manifest.task == "detection"

    @classmethod
    def open(cls, name: str, settings: NpuSettings) -> NpuModel:
        """Verify and load the image; ImageError/DriverError/ConfigError name the cause."""
        block = dict(settings.driver)
        block.setdefault("type", read_manifest(settings.image_dir).driver)
        driver = registry.create(registry.parse_config(block))
        try:
            runner = open_runner(
                name,
                settings.image_dir,
                driver,
                settings.device,
                settings.trusted_keys,
                settings.allow_unsigned,
            )
        except Exception:
            driver.close()
            raise
        return cls(runner, driver, settings.regions)

    def run(self, data: bytes) -> bytes:
        """JSON ``{"results": [...], "timings_ms": {...}}`` for one encoded frame or crop."""
        t0 = time.perf_counter()
        frame = decode_jpeg(data)
        t1 = time.perf_counter()
        results = scan(self.runner, frame) if self._scan else self.runner.infer(frame, [None])
        t2 = time.perf_counter()
        reply = {
            "results": [result_to_dict(r) for r in results],
            "timings_ms": {
                "decode": round((t1 - t0) * 1000, 3),
                "infer": round((t2 - t1) * 1000, 3),
            },
        }
        return json.dumps(reply, separators=(",", ":")).encode()

    def close(self) -> None:
        self.runner.close()
        self._driver.close()
