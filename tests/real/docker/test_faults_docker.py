"""Faults and load on a real Docker engine, the `local` model (Caddy + tenants), as a user sees them.

One deployment per module (tests/harness/real_docker.py: the render applied by tests/harness/docker_apply.py):
three tenants on ordinary named volumes and a fourth, ``dora``, on a size-limited volume (a
test-only variant: the local driver's tmpfs, ``size=``; the model itself cannot cap a volume,
see docs/faults.md). Each tenant has a stored secret and a conversation. Each test takes one
fault and asserts what a client notices, then that nothing stored was lost:

- a short load through Caddy: no error, every WebSocket held, nothing lost;
- an agent server's process SIGKILLed by PID (a crash: ``docker kill`` would be an operator stop,
  which ``unless-stopped`` never restarts): restarted, its data served again, and the tenants
  under load through the same Caddy meanwhile see no error;
- an OOM kill (the tenant's memory limit lowered, memory eaten inside the container): restarted;
- Caddy's process SIGKILLed: restarted with the same CA, clients reconnect, healthy again;
- a full volume: writes answer 500 while /ready and the healthcheck stay green; the other
  tenants are unaffected; freeing space recovers at once;
- a bad upgrade: an image the engine does not have changes nothing; an image whose server
  does not start takes every tenant down until the previous image is applied again.

Recovery times are printed (``-s``); docs/faults.md holds the figures. Without an engine or the
images: FAIL under CI=true, one skip reason elsewhere. Everything is named ``openhands-tfault*``
and removed by name at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from components import contract
from tests.harness import real_docker
from tests.harness.docker_apply import VOLUME, ApplyError
from tests.harness.load_client import load
from tests.harness.real_docker import (
    Deployment,
    assert_secret,
    conversation_body,
    new_conversation,
    served,
    wait_conversation,
)

TENANTS = ["alice", "bob", "carol"]
FULL = "dora"  # on a size-limited volume
FULL_VOLUME_MIB = 32
# The Docker model turns leases off, so a restarted server serves a conversation on its first load.
SERVED_AFTER_RESTART_SECONDS = 15
OOM_LIMIT = "600m"


def size_limited(tenant: str, mib: int):
    """A render patch: ``tenant``'s state volume on a tmpfs of ``mib`` MiB owned by the server's user.
    Test-only: a tmpfs volume is emptied whenever no container mounts it."""

    def patch(rendered):
        (vol,) = [v for v in rendered.of_type(VOLUME) if v.name == f"{tenant}-state"]
        vol.inputs["driverOpts"] = {"type": "tmpfs", "device": "tmpfs",
                                    "o": f"size={mib}m,uid={contract.UID},gid={contract.GID},mode=0755"}
        return rendered

    return patch


@pytest.fixture(scope="module")
def dep(client, tmp_path_factory) -> Iterator[Deployment]:
    d = real_docker.new_deployment(client, "fault", [*TENANTS, FULL], retainData=False)
    d.patch = size_limited(FULL, FULL_VOLUME_MIB)
    try:
        d.up()
        d.fetch_ca(tmp_path_factory.mktemp("ca") / "root.crt")
        for t in d.tenants:
            d.wait_ready(t, budget=60)
        yield d
    finally:
        real_docker.tear_down(client, d)
        for image in client.api.images(name=broken_image(d).rsplit(":", 1)[0], quiet=True):
            client.api.remove_image(image, force=True)


@pytest.fixture(scope="module")
def stored(dep: Deployment) -> dict[str, str]:
    """Per tenant: a stored secret and the id of a conversation (live: the server holds its lease)."""
    return real_docker.store_secrets_and_conversations(dep)


def wait_restarted(dep: Deployment, name: str, before: int, budget: float = 30) -> dict:
    deadline = time.monotonic() + budget
    while True:
        info = dep.client.api.inspect_container(name)
        if info["RestartCount"] > before and info["State"]["Running"]:
            return info
        assert time.monotonic() < deadline, f"{name} was not restarted within {budget}s: {info['State']}"
        time.sleep(0.2)


def wait_health(dep: Deployment, name: str, budget: float) -> float:
    t0 = time.monotonic()
    while (status := (dep.client.api.inspect_container(name)["State"].get("Health") or {}).get("Status")) != "healthy":
        assert status in ("starting", "healthy", None) and time.monotonic() - t0 < budget, f"{name}: {status}"
        time.sleep(0.5)
    return time.monotonic() - t0


def crash(dep: Deployment, name: str) -> None:
    """A crash: SIGKILL to the container's first process, as the kernel would. `docker kill` is
    an operator stop instead: the engine marks the container stopped and never restarts it."""
    os.kill(dep.client.api.inspect_container(name)["State"]["Pid"], signal.SIGKILL)


# ----------------------------------------------------------------- load


def test_load_through_caddy_has_no_errors_and_loses_nothing(dep: Deployment, stored):
    before = {t: dep.https(t, contract.AUTH_CHECK_PATH, dep.key(t)) for t in TENANTS}
    targets = real_docker.load_targets(dep, TENANTS, "proxy", stored)
    result = load(targets, clients=5, duration=5, think=0.05, timeout=30)
    print(f"\nload through Caddy, 3 tenants x 5 clients x 5 s: {result.summary()}")
    assert result.errors == 0, result.error_samples
    for t, stats in result.per_target.items():
        assert stats.ws_opened == 5, t  # every client held its WebSocket to the end
        assert len(stats.latencies) >= 5 * 10, (t, len(stats.latencies))  # real load, not a trickle
    for t in TENANTS:
        assert dep.https(t, contract.AUTH_CHECK_PATH, dep.key(t)) == before[t]
        assert_secret(dep, t)
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200


# ----------------------------------------------------------------- an agent server crashes


def test_a_crashed_agent_server_is_restarted_and_serves_its_data(dep: Deployment, stored):
    """Bob's server crashes while alice and carol are under load through the same Caddy."""
    name = f"{dep.prefix}-bob"
    others = ["alice", "carol"]
    neighbours: dict = {}
    background = threading.Thread(target=lambda: neighbours.update(result=load(
        real_docker.load_targets(dep, others, "proxy", stored), clients=3, duration=12, think=0.1, timeout=30)))
    before = dep.container("bob")["RestartCount"]
    background.start()
    time.sleep(1)
    t0 = time.monotonic()
    crash(dep, name)
    wait_restarted(dep, name, before)
    dep.wait_ready("bob")
    ready = time.monotonic() - t0
    assert_secret(dep, "bob")  # on the first request once ready
    # No conversation leases on Docker (components/docker/local.py): the restarted server serves its
    # conversations at once, not after the crashed one's 45 s lease expires.
    conversation = wait_conversation(dep, "bob", stored["bob"], SERVED_AFTER_RESTART_SECONDS)
    background.join()
    print(f"\ncrash (SIGKILL by PID): /ready through Caddy after {ready:.1f} s, the conversation "
          f"{conversation:.1f} s later; neighbours under load meanwhile: {neighbours['result'].summary()}")
    # The other tenants never noticed.
    assert neighbours["result"].errors == 0, neighbours["result"].error_samples
    for t in others:
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200


# ----------------------------------------------------------------- an OOM kill


def _eat_memory(dep: Deployment, name: str) -> None:
    """Make the server the OOM killer's choice (the host may raise its score), then eat memory
    inside the container's cgroup until the kernel kills it; the container dies with it."""
    api = dep.client.api
    tini = api.inspect_container(name)["State"]["Pid"]
    with contextlib.suppress(OSError):  # not root, or another PID namespace: the server is the biggest anyway
        for child in Path(f"/proc/{tini}/task/{tini}/children").read_text().split():
            Path(f"/proc/{child}/oom_score_adj").write_text("1000")
    ex = api.exec_create(name, ["timeout", "60", "tail", "/dev/zero"])  # a line that never ends
    with contextlib.suppress(docker.errors.APIError):
        api.exec_start(ex["Id"])


def test_an_oom_killed_agent_server_is_restarted_and_serves_its_data(dep: Deployment, stored):
    name = f"{dep.prefix}-carol"
    api = dep.client.api
    host = dep.container("carol")["HostConfig"]
    limits = {"Memory": host["Memory"], "MemorySwap": host["MemorySwap"]}
    since = int(time.time()) - 1
    before = dep.container("carol")["RestartCount"]
    api.update_container(name, mem_limit=OOM_LIMIT, memswap_limit=OOM_LIMIT)
    try:
        t0 = time.monotonic()
        _eat_memory(dep, name)
        info = wait_restarted(dep, name, before)
        assert info["State"]["OOMKilled"] is True
        events = api.events(since=since, until=int(time.time()) + 1, decode=True,
                            filters={"container": name, "type": "container"})
        seen = [e["status"] for e in events]
        assert "oom" in seen and "die" in seen and "start" in seen, seen
        dep.wait_ready("carol")
        assert_secret(dep, "carol")
        conversation = wait_conversation(dep, "carol", stored["carol"], SERVED_AFTER_RESTART_SECONDS)
        print(f"\nOOM kill: served again {time.monotonic() - t0:.1f} s after the memory was eaten "
              f"(conversation {conversation:.1f} s after /ready)")
    finally:
        api.update_container(name, mem_limit=limits["Memory"], memswap_limit=limits["MemorySwap"])
    for t in ("alice", "bob"):
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200


# ----------------------------------------------------------------- the proxy dies


@contextlib.contextmanager
def websocket(dep: Deployment, tenant: str) -> Iterator:
    """An authenticated WebSocket through Caddy (first-frame auth: the server then stays silent)."""
    import socket

    from websockets.sync.client import connect

    ctx = ssl.create_default_context(cafile=str(dep.ca))
    sock = socket.create_connection(("127.0.0.1", dep.https_port), timeout=10)
    with connect(f"wss://{dep.host(tenant)}:{dep.https_port}{contract.WS_CHECK_PATH}", sock=sock, ssl=ctx,
                 server_hostname=dep.host(tenant), open_timeout=10, close_timeout=2) as ws:
        ws.send(json.dumps(contract.ws_auth_frame(dep.key(tenant))))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)
        yield ws


def test_caddy_killed_is_restarted_with_its_ca_and_clients_reconnect(dep: Deployment, stored, tmp_path):
    from websockets.exceptions import ConnectionClosed

    api = dep.client.api
    wait_health(dep, dep.proxy, budget=60)  # the proxy's own healthcheck passes
    ca_before = dep.ca.read_bytes()
    before = api.inspect_container(dep.proxy)["RestartCount"]
    with websocket(dep, "alice") as ws:
        t0 = time.monotonic()
        crash(dep, dep.proxy)
        with pytest.raises(ConnectionClosed):  # what a connected client notices: its socket closes
            ws.recv(timeout=10)
    wait_restarted(dep, dep.proxy, before)
    for t in TENANTS:
        dep.wait_ready(t, budget=30)  # with the CA the clients already trust
    back = time.monotonic() - t0
    assert dep.fetch_ca(tmp_path / "root.crt").read_bytes() == ca_before  # the data volume kept the CA
    with websocket(dep, "alice"):  # a client reconnects
        pass
    for t in TENANTS:
        assert_secret(dep, t)
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200  # servers untouched
    healthy = wait_health(dep, dep.proxy, budget=contract.HEALTHCHECK_INTERVAL_SECONDS * 2 + 10)
    print(f"\nCaddy SIGKILLed: every tenant served through it again after {back:.1f} s; healthy "
          f"{healthy:.1f} s after that (first check one {contract.HEALTHCHECK_INTERVAL_SECONDS} s interval in)")


# ----------------------------------------------------------------- a full volume


def test_a_full_volume_fails_writes_keeps_reads_and_recovers(dep: Deployment, stored):
    key = dep.key(FULL)
    code, out = dep.exec(FULL, f"dd if=/dev/zero of={contract.DATA_DIR}/.fill bs=1M; df -m {contract.DATA_DIR}")
    assert "No space left on device" in out, out
    try:
        # Writes fail with a 500; the body names the cause.
        status, body = dep.https(FULL, "/api/settings/secrets", key, method="PUT",
                                 body={"name": "OTHER", "value": "x"})
        assert status == 500, body
        status, body = dep.https(FULL, "/api/conversations", key, method="POST", body=conversation_body())
        assert status == 500 and "No space left on device" in body, body
        print(f"\nfull volume: PUT secret -> 500, POST conversation -> 500 {body}")
        # ... while readiness and the healthcheck's own command stay green: no signal there.
        assert dep.https(FULL, contract.READINESS_PROBE.path) == (200, '{"status":"ready"}')
        code, out = dep.exec(FULL, contract.HEALTHCHECK_SCRIPT)
        assert code == 0, out
        assert dep.container(FULL)["State"]["Health"]["Status"] == "healthy"
        # Reads work: what was stored is served.
        assert_secret(dep, FULL)
        assert dep.https(FULL, served(stored[FULL]), key)[0] == 200
        # The other tenants write as usual (their volumes are not this one).
        for t in TENANTS:
            status, body = dep.https(t, "/api/settings/secrets", dep.key(t), method="PUT",
                                     body={"name": "OTHER", "value": "x"})
            assert status == 200, (t, body)
    finally:
        code, out = dep.exec(FULL, f"rm -f {contract.DATA_DIR}/.fill")
        assert code == 0, out
    # Space freed: writes work at once, and the conversation is intact.
    status, body = dep.https(FULL, "/api/settings/secrets", key, method="PUT", body={"name": "OTHER", "value": "x"})
    assert status == 200, body
    new_conversation(dep, FULL)
    status, body = dep.https(FULL, f"/api/conversations/{stored[FULL]}", key)
    assert status == 200 and json.loads(body)["id"] == stored[FULL], body[:300]
    assert dep.https(FULL, served(stored[FULL]), key)[0] == 200
    assert_secret(dep, FULL)


# ----------------------------------------------------------------- a bad upgrade


def broken_image(dep: Deployment) -> str:
    return f"localhost/{dep.prefix}-broken:1.58.1-python"


def _build_broken_image(dep: Deployment) -> str:
    """The agent-server image with an entrypoint that exits at once: a release that cannot start."""
    api = dep.client.api
    ref = broken_image(dep)
    repo, tag = ref.rsplit(":", 1)
    src = api.create_container(contract.DEFAULT_IMAGE, name=f"{dep.prefix}-broken-src", command=["true"])
    try:
        api.commit(src["Id"], repository=repo, tag=tag,
                   changes=['ENTRYPOINT ["bash", "-c", "echo agent-server: broken build >&2; exit 3"]'])
    finally:
        api.remove_container(src["Id"], force=True)
    return ref


def test_an_image_the_engine_lacks_changes_nothing(dep: Deployment, stored):
    ids = {t: dep.container(t)["Id"] for t in dep.tenants}
    missing = "ghcr.io/openhands/agent-server:0.0.1-python"
    good = dep.rendered
    with pytest.raises(ApplyError, match=r"0\.0\.1-python is not on this engine"):
        dep.up(image=missing)
    dep.rendered = good
    assert {t: dep.container(t)["Id"] for t in dep.tenants} == ids  # nothing replaced
    for t in TENANTS:
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200
    # And the stack applies as before: nothing to do.
    assert {s.op for s in dep.up()} == {"same"}


def test_an_image_that_cannot_start_takes_the_first_tenant_down_until_the_previous_is_applied(dep: Deployment, stored):
    ref = _build_broken_image(dep)
    ids = {t: dep.container(t)["Id"] for t in dep.tenants}
    failures: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # what alice's client sees during the bad upgrade
        while not stop.is_set():
            try:
                failures.append(dep.https("alice", contract.READINESS_PROBE.path, timeout=3)[0])
            except (OSError, ssl.SSLError):
                failures.append(0)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        t0 = time.monotonic()
        # `up` fails on the first new container, with its log (the line its entrypoint printed, unless
        # the engine reports the exit before the log is copied).
        with pytest.raises(ApplyError, match=rf"container {dep.prefix}-\w+ (is unhealthy|exited)") as err:
            dep.up(image=ref)
        failed_after = time.monotonic() - t0
        # The old server was stopped first (fixed names: delete before replace): the tenant is down.
        assert dep.https("alice", contract.READINESS_PROBE.path)[0] == 502
        # The others wait in the rollout chain for alice's replacement to be healthy: never touched.
        for t in dep.tenants[1:]:
            assert dep.container(t)["Id"] == ids[t], t
            assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200
        # One command rolls back: `up` with the previous image (here: the stack's default again).
        t1 = time.monotonic()
        dep.up()
        rollback = time.monotonic() - t1
    finally:
        stop.set()
        watcher.join()
    print(f"\nbad image: `up` failed after {failed_after:.1f} s ({str(err.value).splitlines()[0][:120]}); "
          f"rollback `up` {rollback:.1f} s")
    assert 502 in failures and failures[-1] == 200
    for t in TENANTS:  # nothing lost: a graceful stop released the leases, served on the first request
        assert_secret(dep, t)
        assert dep.https(t, served(stored[t]), dep.key(t))[0] == 200
