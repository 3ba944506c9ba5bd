"""Load during a change, on a real Docker engine (the `local` model: Caddy + 3 tenants), as users see it.

Its own deployment (not test_faults_docker.py's, whose fourth tenant sits on a test-only tmpfs volume
that a replacement empties): each tenant has a stored secret and a live conversation, then

- an ``up`` adds and then removes a tenant while the others are under load through Caddy: the proxy
  joins and leaves the tenant's network in place and reloads its config, so the others see no error;
- a key rotation under load: a call fails only while its own tenant's server restarts, and only as "no
  server yet"; every conversation and stored secret is served after it.

Everything is named ``openhands-tchange*`` and removed by name at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from components import contract
from tests.harness import real_docker
from tests.harness.load_client import load
from tests.harness.real_docker import (
    LEASE_TTL_SECONDS,
    Deployment,
    assert_secret,
    served,
    wait_conversation,
)

TENANTS = ["alice", "bob", "carol"]
# A reload makes Caddy < 2.7 close every proxied WebSocket; from 2.7 `stream_close_delay` keeps them.
WEBSOCKETS_SURVIVE_RELOAD = True


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
        real_docker.tear_down(client, d)


@pytest.fixture(scope="module")
def stored(dep: Deployment) -> dict[str, str]:
    return real_docker.store_secrets_and_conversations(dep)


def _in_background(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()))
    thread.start()
    return thread, out


def test_an_up_that_adds_and_removes_a_tenant_under_load_leaves_the_others_alone(dep: Deployment, stored):
    """A new tenant means a new network, volume and server, and the proxy joining that network and
    serving its site. The proxy container is not replaced: ProxyRoutes connects it to the network and
    Caddy reloads its config gracefully (components/docker/routes.py). Asserted: the other tenants see
    no failed call and no refused connection while the tenant is added and removed, the new tenant is
    served through the proxy, and nothing is lost."""
    new = "erin"
    proxy_id = dep.client.api.inspect_container(f"{dep.prefix}-proxy")["Id"]
    thread, out = _in_background(lambda: load(real_docker.load_targets(dep, TENANTS, "proxy", stored),
                                              clients=3, duration=30, think=0.1, timeout=30,
                                              websockets=WEBSOCKETS_SURVIVE_RELOAD))
    t_start = time.monotonic()
    time.sleep(2)
    t0 = time.monotonic()
    steps = dep.up(tenants=[*dep.tenants, new])
    marks = {"add-start": round(t0 - t_start, 2), "add-steps": [(s.op, s.name, round(s.seconds, 2)) for s in steps
                                                              if s.op != "same"],
             "add-done": round(time.monotonic() - t_start, 2)}
    dep.wait_ready(new)
    assert dep.https(new, contract.AUTH_CHECK_PATH, dep.key(new))[0] == 200  # served through the proxy
    added = time.monotonic() - t0
    ops = {(s.op, s.name) for s in steps}
    assert ("update", "docker-proxy-routes") in ops, sorted(ops)
    t0 = time.monotonic()
    steps = dep.up()  # back to the module's tenants: erin's server, network and (retainData false) volume go
    removed = time.monotonic() - t0
    marks |= {"remove-start": round(t0 - t_start, 2), "remove-done": round(time.monotonic() - t_start, 2)}
    assert ("update", "docker-proxy-routes") in {(s.op, s.name) for s in steps}
    thread.join()
    result = out["result"]
    print(f"\nadd a tenant under load: serving after {added:.1f} s; removed in {removed:.1f} s; the others "
          f"meanwhile: {result.summary()}")
    for t, st in result.per_target.items():
        for e, at in zip(st.error_samples, st.error_times, strict=False):
            print(f"  {t} +{at - t_start:.2f}s {e[:160]}")
    print(f"  marks: {marks}")
    assert result.errors == 0, [(t, e) for t, st in result.per_target.items() for e in st.error_samples]
    assert all(s.latencies for s in result.per_target.values())
    # One proxy container throughout, now on the module's tenant networks (and its own) only.
    info = dep.client.api.inspect_container(f"{dep.prefix}-proxy")
    assert info["Id"] == proxy_id
    assert set(info["NetworkSettings"]["Networks"]) == {f"{dep.prefix}-proxy-net",
                                                        *(f"{dep.prefix}-{t}-net" for t in TENANTS)}
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


