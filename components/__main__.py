"""``python -m components check|smoke``: kept for one release; use ``openhands check|smoke``."""

import sys

from openhands_cli.main import main

if len(sys.argv) > 1 and sys.argv[1] in ("check", "smoke"):
    print(f"note: `python -m components {sys.argv[1]}` is now `openhands {sys.argv[1]}`", file=sys.stderr)
sys.exit(main(sys.argv[1:]))
