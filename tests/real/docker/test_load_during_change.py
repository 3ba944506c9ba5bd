"""Load during a change, on a real Docker engine (the `local` model: Caddy + 3 tenants), as users see it.

Its own deployment (not test_faults_docker.py's, whose fourth tenant sits on a test-only tmpfs volume
that a replacement empties): each tenant has a stored secret and a live conversation, then

- an ``up`` adds and then removes a tenant while the others are under load through Caddy: the proxy's
  container is replaced each time (its networks are fixed at creation), so they see a short window of
  refused connections and their WebSockets drop; nothing else, and nothing is lost;
- a key rotation under load: a call fails only while its own tenant's server restarts, and only as "no
  server yet"; every conversation and stored secret is served after it.

Everything is named ``openhands-tchange*`` and removed by name at the end.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator

import pytest

from components import contract
from tests.harness import real_docker
from tests.harness.load_client import load
from tests.harness.real_docker import Deployment, new_conversation, served
from tests.real.docker.test_faults_docker import (
    LEASE_TTL_SECONDS,
    SECRET,
    assert_secret,
    secret_value,
    wait_conversation,
)

TENANTS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def dep(client, tmp_path_factory) -> Iterator[Deployment]:
    d = real_docker.new_deployment(client, "change", TENANTS, retainData=False)
    try:
        d.up()
        d.fetch_ca(tmp_path_factory.mktemp("ca") / "root.crt")
        for t in TENANTS:
            d.wait_ready(t)
        yield d
    finally:
        if d.applier is not None:
            with contextlib.suppress(Exception):  # the sweep below removes whatever is left
                d.applier.destroy()
        real_docker.remove_stack(client, d.prefix)


@pytest.fixture(scope="module")
def stored(dep: Deployment) -> dict[str, str]:
    ids = {}
    for t in dep.tenants:
        status, body = dep.https(t, "/api/settings/secrets", dep.key(t), method="PUT",
                                 body={"name": SECRET, "value": secret_value(t)})
        assert status == 200, body
        ids[t] = new_conversation(dep, t)
    return ids


def _in_background(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()))
    thread.start()
    return thread, out


def _windows(times: list[float], gap: float = 3.0) -> list[tuple[float, float]]:
    """Failures grouped into windows: a new window starts after ``gap`` seconds without one."""
    out: list[tuple[float, float]] = []
    for x in sorted(times):
        if out and x - out[-1][1] <= gap:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def test_an_up_that_adds_and_removes_a_tenant_under_load_interrupts_the_others_only_briefly(
        dep: Deployment, stored):
    """A new tenant means a new network, volume and server, and the proxy joining that network. The
    proxy's networks are fixed when its container is created (pulumi-docker replaces a container whose
    ``networks_advanced`` change), so adding or removing a tenant **replaces the Caddy container**: every
    tenant is refused for a moment and its WebSockets must reconnect (docs/faults.md). Asserted: the
    other tenants' failures are connection-level only (refused/reset, never 401/404/500), they fall
    in at most two short windows (the add and the remove), and nothing is lost."""
    new = "erin"
    thread, out = _in_background(lambda: load(real_docker.load_targets(dep, TENANTS, "proxy", stored),
                                              clients=3, duration=30, think=0.1, timeout=30))
    time.sleep(2)
    t0 = time.monotonic()
    steps = dep.up(tenants=[*dep.tenants, new])
    dep.wait_ready(new)
    added = time.monotonic() - t0
    assert ("replace", "docker-proxy-caddy") in {(s.op, s.name) for s in steps}  # what the windows come from
    t0 = time.monotonic()
    dep.up()  # back to the module's tenants: erin's server, network and (retainData false) volume go
    removed = time.monotonic() - t0
    thread.join()
    result = out["result"]
    times = [x for s in result.per_target.values() for x in s.error_times]
    windows = _windows(times)
    print(f"\nadd a tenant under load: serving after {added:.1f} s; removed in {removed:.1f} s; the others "
          f"meanwhile: {result.summary()}; failure windows: {[round(b - a, 1) for a, b in windows]} s")
    # Refused or reset connections (and a 502 from a proxy that has just started), never 401/404/500.
    bad = [e for e in result.error_samples if re.match(r"^\S+: \S+ \S+: (?!502\b)\d{3}\b", e)]
    assert not bad, bad
    assert len(windows) <= 2 and all(b - a <= 10 for a, b in windows), windows
    assert not [c for c in dep.agent_containers() if c.endswith(f"-{new}")]
    for t in TENANTS:
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200
        assert_secret(dep, t)


def test_a_rotation_under_load_fails_calls_only_while_each_tenant_restarts(dep: Deployment, stored):
    """Every tenant gets new keys, so every server restarts. Clients keep the key they hold (it stays
    valid as the previous one). A call may fail only while its own tenant's server is down, and only
    as "no server" (a proxy error or a dropped connection): never 401, 404 or 500. Then every
    conversation and stored secret is served again."""
    old_keys = {t: dep.key(t) for t in TENANTS}
    thread, out = _in_background(lambda: load(real_docker.load_targets(dep, TENANTS, "proxy", stored),
                                              clients=3, duration=45, think=0.1, timeout=30, websockets=False))
    time.sleep(3)
    t0 = time.monotonic()
    dep.overrides["keys.rotation"] = dep.overrides.get("keys.rotation", 0) + 1  # later ups keep these keys
    dep.up()
    for t in TENANTS:
        dep.wait_ready(t)
    applied = time.monotonic() - t0
    thread.join()
    result = out["result"]
    gaps = {}
    for t, stats in result.per_target.items():
        bad = [s for s in stats.error_samples if not any(ok in s for ok in (": 502", ": 503", "ConnectionLost",
                                                                               "Connection", "IncompleteRead"))]
        assert not bad, (t, bad)
        gaps[t] = max(stats.error_times) - min(stats.error_times) if stats.error_times else 0.0
        assert stats.error_times == [] or min(stats.error_times) >= t0 - 1, (t, "failed before the rotation")
        assert len(stats.latencies) > 0, t
    print(f"\nrotation under load: applied and ready in {applied:.1f} s; {result.summary()}; "
          f"each tenant's failing window: " + ", ".join(f"{t} {g:.1f} s" for t, g in gaps.items()))
    # The window of failures is one restart of that tenant's server: its stop grace plus a boot.
    for t, gap in gaps.items():
        assert gap <= contract.STOP_GRACE_SECONDS + contract.STARTUP_BUDGET_SECONDS, (t, gap)
    for t in TENANTS:
        assert dep.key(t) != old_keys[t]
        assert dep.https(t, contract.AUTH_CHECK_PATH, old_keys[t])[0] == 200  # the held key still works
        assert_secret(dep, t)
        wait_conversation(dep, t, stored[t], LEASE_TTL_SECONDS + 30)


