"""Pre-processing: geometry of each resize mode, the way back to frame pixels, tensor format."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import numpy as np
import pytest

from edgefed import paths
from edgefed.errors import ModelError
from edgefed.images.manifest import InputSpec
from edgefed.models.preprocess import Preprocessor
from edgefed.models.types import Box
from tests.support.paths import REPO


def spec(**fields: Any) -> InputSpec:
    base: dict[str, Any] = {"name": "x", "width": 128, "height": 96, "layout": "NHWC"}
    return InputSpec(**(base | fields))


def frame_with_square(h: int, w: int, square: Box) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = (int(v) for v in square)
    frame[y1:y2, x1:x2] = 255
    return frame


def found_square(tensor: np.ndarray) -> Box:
    """Bounds (input pixels, exclusive end) of the bright pixels of an NHWC float tensor."""
    bright = np.argwhere(tensor[0, :, :, 0] > 0.5)
    (y1, x1), (y2, x2) = bright.min(axis=0), bright.max(axis=0) + 1
    return float(x1), float(y1), float(x2), float(y2)


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize(
    ("shape", "region"),
    [((480, 640), None), ((300, 200), None), ((480, 640), (100.0, 50.0, 500.0, 450.0))],
)
def test_a_square_maps_back_to_where_it_was(
    resize: str, shape: tuple[int, int], region: Box | None
) -> None:
    h, w = shape
    square = (w * 0.4, h * 0.4, w * 0.6, h * 0.6)
    pre = Preprocessor(spec(resize=resize))
    tensor, t = pre(frame_with_square(h, w, square), region)
    assert tensor.shape == (1, 96, 128, 3)
    assert tensor.dtype == np.float32
    x1, y1, x2, y2 = found_square(tensor)
    back = t.box((x1 / 128, y1 / 96, x2 / 128, y2 / 96))
    # one input pixel of tolerance, in frame pixels
    tolerance = max(abs(t.ax) / 128, abs(t.ay) / 96) * 1.5
    assert back == pytest.approx(square, abs=tolerance)


def test_letterbox_pads_top_and_bottom_with_black() -> None:
    pre = Preprocessor(spec(width=224, height=224, resize="letterbox"))
    tensor, t = pre(np.full((480, 640, 3), 200, np.uint8))
    rows = tensor[0, :, :, 0].mean(axis=1)
    assert np.all(rows[:27] == 0) and np.all(rows[197:] == 0)
    assert np.all(rows[29:195] == pytest.approx(200 / 255))
    assert t.point(0.0, 0.0) == pytest.approx((0.0, -80.0))  # the pad row is above the frame
    assert t.point(1.0, 1.0) == pytest.approx((640.0, 560.0))


def test_center_crop_keeps_the_middle_at_shorter_side_over_crop_fraction() -> None:
    pre = Preprocessor(spec(width=224, height=224, resize="center_crop", crop_fraction=0.875))
    _, t = pre(np.zeros((300, 400, 3), np.uint8))
    # shorter side 300 -> 256, so the 224 crop covers 224 * 300 / 256 frame pixels
    side = 224 * 300 / 256
    assert t.box((0, 0, 1, 1)) == pytest.approx(
        (200 - side / 2, 150 - side / 2, 200 + side / 2, 150 + side / 2), abs=1.5
    )


def test_region_reaching_outside_the_frame_is_padded_not_shifted() -> None:
    frame = np.full((100, 100, 3), 255, np.uint8)
    pre = Preprocessor(spec(width=100, height=100, resize="stretch"))
    tensor, t = pre(frame, (-50.0, 0.0, 50.0, 100.0))
    assert np.all(tensor[0, :, :49, :] == 0)
    assert np.all(tensor[0, :, 51:, :] == 1)
    assert t.point(0.5, 0.5) == pytest.approx((0.0, 50.0), abs=0.6)


def test_channel_order_normalisation_and_layout() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR
    rgb = Preprocessor(spec(width=4, height=4, layout="NCHW", mean=(10, 20, 30), std=(2, 4, 5)))(
        frame
    )[0]
    assert rgb.shape == (1, 3, 4, 4)
    assert rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb[0, :, 0, 0], [(0 - 10) / 2, (0 - 20) / 4, (255 - 30) / 5])
    bgr = Preprocessor(spec(width=4, height=4, color="BGR", dtype="uint8"))(frame)[0]
    assert bgr.dtype == np.uint8
    assert bgr.shape == (1, 4, 4, 3)
    assert bgr[0, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("frame", "region", "cause"),
    [
        (np.zeros((10, 10), np.uint8), None, "expected a BGR uint8 frame"),
        (np.zeros((10, 10, 3), np.float32), None, "expected a BGR uint8 frame"),
        (np.zeros((10, 10, 3), np.uint8), (5.0, 5.0, 5.0, 9.0), "empty"),
        (np.zeros((10, 10, 3), np.uint8), (20.0, 20.0, 40.0, 40.0), "outside the 10x10 frame"),
        (np.zeros((10, 10, 3), np.uint8), (0.0, 0.0, float("nan"), 4.0), "not finite"),
    ],
)
def test_bad_frames_and_regions_are_model_errors(
    frame: np.ndarray, region: Box | None, cause: str
) -> None:
    with pytest.raises(ModelError, match=cause):
        Preprocessor(spec())(frame, region)


LEAK_PROBE = """
import tracemalloc
import numpy as np
from edgefed.images.manifest import InputSpec
from edgefed.models.preprocess import Preprocessor
spec = InputSpec(name="x", width=64, height=64, layout="NHWC", mean=[127.5] * 3, std=[127.5] * 3)
pre, frame = Preprocessor(spec), np.zeros((96, 128, 3), np.uint8)
for _ in range(200):
    pre(frame)
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for _ in range(5000):
    pre(frame)
print(tracemalloc.get_traced_memory()[0] - before)
"""


def test_preprocessing_keeps_no_memory_under_the_opencv_of_tritons_stub() -> None:
    """serverd's scan runs the detector ~100 times a hard example in Triton's Python stub,
    whose OpenCV (4.11, numpy < 2) leaked four Python floats converting each 1-D scalar
    array (opencv/opencv#27171): 960 KB per 5,000 calls here, +14 MB/h in the soak."""
    run = subprocess.run(
        [str(REPO / paths.triton_venv() / "bin" / "python"), "-c", LEAK_PROBE],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 50_000, f"{run.stdout.strip()} bytes kept by 5,000 calls"
