"""Command line: ``python -m components <command>``.

Commands are imported lazily so each one loads only what it needs.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "check": ("components.check", "render a stack offline, run the policy pack and the validators"),
    "smoke": ("components.smoke", "smoke-test a deployed stack from its outputs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m components <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<8}{text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
