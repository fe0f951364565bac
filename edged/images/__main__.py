"""``python -m edged.images build|verify|install|rollback``."""

import sys

from .cli import main

sys.exit(main())
