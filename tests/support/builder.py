"""The packaging builder's own modules (``packaging/build``), for tests that read its tables."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.paths import REPO

BUILD = REPO / "packaging" / "build"


def builder_module(name: str, file: str) -> ModuleType:
    """``packaging/build/<file>`` imported as ``name``, as the builder runs it (its folder on
    ``sys.path`` while it loads)."""
    sys.path.insert(0, str(BUILD))
    try:
        spec = importlib.util.spec_from_file_location(name, BUILD / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BUILD))
