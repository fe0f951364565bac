import sys

from serverd.cli import main

sys.exit(main())
