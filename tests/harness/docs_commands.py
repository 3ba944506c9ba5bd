"""Run the commands a docs page gives, as written (tests/real/engine/: test_engine.py, test_kube_up.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def section_commands(title: str) -> list[str]:
    """Every command of the ```bash blocks of the docs page whose title is `# <title>`, up to its next section."""
    (page,) = [p for p in (ROOT / "docs").glob("*.md") if p.read_text().startswith(f"# {title}\n")]
    section = page.read_text().split("\n## ", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for ln in block.splitlines()]
    return [ln for ln in lines if ln]


def run_as_written(project: Any, command: str, stack: str = "local") -> subprocess.CompletedProcess:
    """``project``: a tests.harness.real_engine.EngineProject. `uv run openhands` runs from the checkout on the
    project copy; plain `pulumi` works on the operator's backend with the two exports docs/operator.md gives."""
    command = command.replace("<stack>", stack).replace(" N ", " 2 ")
    operator = command.startswith("uv run openhands")
    return subprocess.run(command, shell=True, cwd=ROOT if operator else project.dir,
                          env=project.env if operator else project.cli_env, capture_output=True, text=True,
                          timeout=600)
