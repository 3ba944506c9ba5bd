"""The cluster with its real node, shared by the real-pod tests here (tests/harness/real_node.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import real_node


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[real_node.NodeCluster]:
    """Found or started once per session (and stopped by PID if started); fails under CI=true, skips elsewhere."""
    with real_node.node_cluster() as cluster:
        yield cluster
