"""Fixtures the model tests share: each module names its ``STACK`` (and may name its ``THREE``),
and gets that stack rendered with its own tenants (``one``) and with three (``three``), once per module."""

from __future__ import annotations

import pytest

from openhands_cli.render import Rendered, render

THREE = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def one(request: pytest.FixtureRequest) -> Rendered:
    return render(request.module.STACK)


@pytest.fixture(scope="module")
def three(request: pytest.FixtureRequest) -> Rendered:
    return render(request.module.STACK, overrides={"tenants": getattr(request.module, "THREE", THREE)})
