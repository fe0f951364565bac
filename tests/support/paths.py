"""Where the real test inputs live (installed by packaging/dev/setup.sh)."""

from __future__ import annotations

from pathlib import Path

from edgefed import paths

REPO = Path(__file__).resolve().parents[2]
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = OPENCV_DATA / "vtest.avi"
IMAGES_DIR = REPO / paths.images_dir()  # $EDGEFED_IMAGES_DIR or the checkout's build dir
TRUST_DIR = IMAGES_DIR / "keys"
