"""``python -m bench NAME [args]``: run bench/NAME.py's ``main(argv)`` (dashes -> underscores)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    """The modules with a ``main`` (a helper module such as crops.py has none)."""
    here = Path(__file__).parent
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules([str(here)])
        if not m.name.startswith("_")
        and not m.ispkg
        and "\ndef main(" in (here / f"{m.name}.py").read_text()
    )


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: python -m bench NAME [args]\nbenchmarks: {', '.join(available())}")
        return 0 if len(sys.argv) >= 2 else 2
    name = sys.argv[1].replace("-", "_")
    if name.replace("_", "-") not in available():
        print(
            f"unknown benchmark {sys.argv[1]!r}; known: {', '.join(available())}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(f"bench.{name}")
    result: int | None = module.main(sys.argv[2:])
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
