"""Rollouts of the `local` stack on the real engine (issue 21), as ordering facts, never timings (those
are in bench/docker_bench.py and docs/performance.md): the engine's own event stream shows a first
`up` and a key rotation taking the tenants one after the other, each next one only once the previous
one is healthy, so at most one tenant is down at any moment; and the 20.10 probe marks a ready server
in /dev/shm, which a restart clears. Without an engine or images: FAIL under CI=true, skip elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from components import contract
from components.docker import local
from tests.harness import real_docker
from tests.harness.real_docker import Deployment

TENANTS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def dep(client) -> Iterator[Deployment]:
    d = real_docker.new_deployment(client, "roll", TENANTS, retainData=False)
    try:
        yield d
    finally:
        if d.applier is not None:
            try:
                d.applier.destroy()
            except Exception:  # noqa: BLE001 - remove_stack below cleans up whatever is left
                pass
        real_docker.remove_stack(client, d.prefix)


def _events(dep: Deployment, since: float, until: float) -> list[dict]:
    """The engine's container events of this stack between two moments, in order."""
    label = f"{contract.STACK_LABEL}=openhands/{dep.stack}"
    stream = dep.client.events(since=since, until=until, decode=True, filters={"type": "container", "label": label})
    return sorted(stream, key=lambda e: e["timeNano"])


def _tenant(dep: Deployment, event: dict) -> str | None:
    name = event["Actor"]["Attributes"].get("name", "")
    return name.removeprefix(f"{dep.prefix}-") if name.removeprefix(f"{dep.prefix}-") in TENANTS else None


def _windows(dep: Deployment, events: list[dict]) -> dict[str, tuple[int, int]]:
    """Per tenant: (its old server's stop signal, or its container's create on a first up; its new
    container's first ``healthy``), in nanoseconds."""
    out: dict[str, list[int | None]] = {}
    for e in events:
        t = _tenant(dep, e)
        if t is None:
            continue
        w = out.setdefault(t, [None, None])
        if e["Action"] in ("kill", "create") and w[0] is None:
            w[0] = e["timeNano"]
        elif e["Action"] == "health_status: healthy" and w[1] is None:
            w[1] = e["timeNano"]
    assert set(out) == set(TENANTS), out
    assert all(a is not None and b is not None for a, b in out.values()), out
    return {t: (a, b) for t, (a, b) in out.items()}  # type: ignore[misc]


def _one_at_a_time(windows: dict[str, tuple[int, int]]) -> None:
    chain = [windows[t] for t in TENANTS]  # config order: the rollout chain (docker.rolloutWidth 1)
    for (_, prev_healthy), (next_down, _) in zip(chain, chain[1:], strict=False):
        assert next_down >= prev_healthy, windows


@pytest.fixture(scope="module")
def first_up(dep: Deployment) -> dict[str, tuple[int, int]]:
    """The stack's first `up` and each tenant's window in it. A fixture, not a test's side effect: xdist may
    hand this module's tests to different workers, each of which then has its own deployment."""
    since = time.time() - 1
    dep.up()
    return _windows(dep, _events(dep, since, time.time() + 1))


def test_a_first_up_creates_each_tenant_once_the_previous_one_is_healthy(first_up):
    _one_at_a_time(first_up)


def test_a_rotation_takes_one_tenant_down_at_a_time(client, dep: Deployment, first_up, tmp_path):
    dep.fetch_ca(tmp_path / "ca.crt")
    for t in TENANTS:
        dep.wait_ready(t)
    old_ids = {t: dep.container(t)["Id"] for t in TENANTS}
    since = time.time() - 1
    dep.up(**{"keys.rotation": 1})
    events = _events(dep, since, time.time() + 1)
    windows = _windows(dep, events)
    _one_at_a_time(windows)
    # Each old server got SIGTERM (a graceful stop, leases released) before its replacement was created.
    for t in TENANTS:
        kill = [e for e in events if e["Action"] == "kill" and e["Actor"]["ID"] == old_ids[t]]
        assert kill and kill[0]["Actor"]["Attributes"].get("signal") == "15", kill
        assert dep.container(t)["Id"] != old_ids[t]
        assert dep.https(t, contract.AUTH_CHECK_PATH, dep.key(t))[0] == 200


def test_the_20_10_probe_marks_a_ready_server_and_a_restart_clears_the_mark(client, dep: Deployment, first_up):
    dep.wait_healthy("alice")
    code, _ = dep.exec("alice", f"test -e {local.READY_MARK}")
    assert code == 0  # healthy, so the probe has seen /ready answer
    assert dep.container("alice")["Config"]["Healthcheck"]["Interval"] == local.STARTING_PROBE_SECONDS * 10**9
    client.api.restart(f"{dep.prefix}-alice", timeout=contract.STOP_GRACE_SECONDS)
    code, _ = dep.exec("alice", f"test -e {local.READY_MARK}")
    state = dep.container("alice")["State"]
    # Right after the restart the mark is gone (the probe polls again) unless the server was already
    # ready and the first probe (1 s after start) has run: then the status is healthy again.
    assert code != 0 or (state.get("Health") or {}).get("Status") == "healthy"
    dep.wait_healthy("alice")
    assert dep.exec("alice", f"test -e {local.READY_MARK}")[0] == 0
