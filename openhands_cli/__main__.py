"""``python -m openhands_cli <command>``: the same as ``openhands <command>``."""

import sys

from openhands_cli.main import main

sys.exit(main())
