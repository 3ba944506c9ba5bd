from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import agent_server as _agent_server  # noqa: E402


@pytest.fixture
def start_agent_server(tmp_path: Path) -> Iterator:
    """Factory: ``start_agent_server(env, args, workdir=None)`` boots the real server.

    Every server it started is stopped by PID when the test ends.
    """
    started: list[_agent_server.RunningServer] = []

    def _start(env, args, workdir: Path | None = None, **kw):
        server = _agent_server.start(env, args, workdir or tmp_path / f"srv{len(started)}", **kw)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def run_caddy(tmp_path: Path) -> Iterator:
    """Factory: ``run_caddy(caddyfile, upstreams=..., files=...)`` runs the real Caddy (scripts/caddy) on loopback.

    See tests/harness/caddy_proxy.py; every caddy it started is stopped by PID at teardown.
    """
    from tests.harness import caddy_proxy

    started: list = []

    def _run(caddyfile: str, **kw):
        kw.setdefault("workdir", tmp_path / f"caddy{len(started)}")
        server = caddy_proxy.serve(caddyfile, **kw)
        started.append(server)
        return server

    yield _run
    for server in started:
        server.stop()
