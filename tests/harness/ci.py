"""The one CI guard: under CI a test that needs a real tool (an engine, a validator, root) FAILS when
the tool is missing; elsewhere it skips with one clear reason.

CI mode is ``CI`` set to ``true`` in any case (``CI=true``, ``CI=True``, as GitHub Actions and
``.ci/run`` set it); an empty or unset ``CI`` or any other value is a developer machine.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """A real tool this test needs is missing: fail under CI, skip with ``reason`` elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI must provide it; see scripts/test)", pytrace=False)
    pytest.skip(reason)
