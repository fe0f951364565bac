"""``python -m edgefed.images build|verify|install|rollback``."""

import sys

from .cli import main

sys.exit(main())
