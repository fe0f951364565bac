"""Where the real test inputs live (installed by packaging/dev/setup.sh)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = OPENCV_DATA / "vtest.avi"
IMAGES_DIR = Path(os.environ.get("EDGEFED_IMAGES_DIR", REPO / "firmware-images" / "build"))
TRUST_DIR = IMAGES_DIR / "keys"
