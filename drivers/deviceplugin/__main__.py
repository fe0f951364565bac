"""``python -m drivers.deviceplugin --driver-config FILE [--socket-dir DIR] ...``."""

import sys

from .cli import main

sys.exit(main())
