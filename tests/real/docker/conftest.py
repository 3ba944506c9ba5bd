"""The real Docker engine the tests in this folder share (tests/harness/real_docker.py)."""

from __future__ import annotations

import pytest

from tests.harness import real_docker


@pytest.fixture(scope="module")
def client():
    """The engine, with the local images built (never pulled); fails under CI=true, skips elsewhere."""
    c = real_docker.engine()
    real_docker.images()
    return c
