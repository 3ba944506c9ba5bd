"""What the tests share that is not a pytest fixture: the real engines' harnesses (one module each),
and two small helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository


def env_of(container: Any) -> dict[str, str]:
    """A rendered Docker container's environment (``envs`` is a list of ``NAME=value``)."""
    return dict(e.split("=", 1) for e in container.inputs["envs"])
