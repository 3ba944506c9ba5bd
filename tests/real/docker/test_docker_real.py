"""The `local` stack on a real Docker engine: created, used, rotated, torn down and re-attached.

What ``render("local")`` registers is applied by tests/harness/docker_apply.py (pulumi-docker's
behaviour through the Engine API) with the images of scripts/docker-images, under a unique
stack name on free loopback ports. One three-tenant deployment is shared by the module, in
the order a user lives through: up, use, restart/crash/recreate, rotate, destroy, re-apply.
Without an engine or images: FAIL under CI=true, one skip reason elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import contract
from components.contract import DOCKER_MIN_API
from components.docker import cloud_init
from tests.harness import real_docker
from tests.harness.caddy_proxy import http_redirect
from tests.harness.docker_apply import CONTAINER, NETWORK, VOLUME, _version
from tests.harness.real_docker import Deployment, new_conversation, served

ROOT = Path(__file__).resolve().parents[3]
TENANTS = ["alice", "bob", "carol"]
SECRET = ("GITHUB_TOKEN", "ghp_state_survives_0123456789")
LEASE_TTL_SECONDS = 45  # the server's OH_LEASE_TTL_SECONDS default (agent_server_facts.md)


@pytest.fixture(scope="module")
def dep(client, tmp_path_factory) -> Iterator[Deployment]:
    d = real_docker.new_deployment(client, "real", TENANTS)
    try:
        d.up()
        d.first_steps = list(d.last_steps)
        d.fetch_ca(tmp_path_factory.mktemp("ca") / "root.crt")
        for t in TENANTS:
            d.wait_ready(t, budget=30)
        yield d
    finally:
        if d.applier is not None:
            try:
                d.applier.destroy()
            except Exception:  # noqa: BLE001 - the sweep below removes whatever is left
                pass
        real_docker.remove_stack(client, d.prefix)


@pytest.fixture(scope="module")
def stored(dep: Deployment) -> dict[str, str]:
    """Per tenant: a secret stored through the API and the id of a conversation."""
    ids = {}
    for t in TENANTS:
        key = dep.key(t)
        status, body = dep.https(t, "/api/settings/secrets", key, method="PUT",
                                 body={"name": SECRET[0], "value": f"{SECRET[1]}-{t}"})
        assert status == 200, body
        ids[t] = new_conversation(dep, t)
    return ids




class Watch:
    """Polls one path through the proxy in a thread (every 0.2 s) and keeps the statuses:
    what a client sees while containers are replaced (502 while none listens)."""

    def __init__(self, dep: Deployment, tenant: str, path: str, key: str):
        self.statuses: list[int] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.statuses.append(dep.https(tenant, path, key, timeout=3)[0])
                except (OSError, ssl.SSLError):
                    self.statuses.append(0)
                time.sleep(0.2)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.statuses




def assert_state(dep: Deployment, stored: dict[str, str], tenants=TENANTS, key_of=None) -> None:
    """The secret and the conversation are served on the FIRST request (no retry loop)."""
    for t in tenants:
        key = (key_of or dep.key)(t)
        assert dep.https(t, f"/api/settings/secrets/{SECRET[0]}", key) == (200, f"{SECRET[1]}-{t}")
        status, body = dep.https(t, served(stored[t]), key)
        assert status == 200, f"{t}: conversation {stored[t]} -> {status} {body[:200]}"


# ----------------------------------------------------------------- 1. up, 5. engine, 6. publishing


def test_three_tenants_come_up_healthy_on_api_1_41(client, dep: Deployment):
    # The harness sends every request at /v1.41 (the contract's minimum), so the engine handled what was
    # rendered with 1.41 semantics: the healthy containers below show nothing rendered needs more.
    assert client.api.api_version == DOCKER_MIN_API == "1.41"
    created = {(s.type, s.name) for s in dep.first_steps if s.op == "create"}
    assert {(CONTAINER, f"{t}-agent-server") for t in TENANTS} <= created
    for t in TENANTS:
        info = dep.container(t)
        assert info["State"]["Health"]["Status"] == "healthy", t
        assert info["Config"]["User"] == f"{contract.UID}:{contract.GID}"
        assert info["Config"]["Image"].startswith("sha256:")
        assert info["HostConfig"]["CapDrop"] == ["ALL"]
        assert "StartInterval" not in (info["Config"]["Healthcheck"] or {}) or not info["Config"]["Healthcheck"][
            "StartInterval"]
    # The server runs the image's own entrypoint as uid 10001.
    code, out = dep.exec("alice", f"id -u; test -x {contract.SERVER_BINARY} && echo binary; ls -ld /workspace")
    assert code == 0 and out.split()[0] == str(contract.UID) and "binary" in out, out


def test_the_engine_meets_the_minimum_and_our_boot_check_says_so(client, tmp_path: Path):
    """The real engine's own report (GET /version) against contract.DOCKER_MIN_API, and the VM's boot
    check (components/docker/cloud_init.py, the user data's API gate) run for real against it; the same
    gate refuses an engine below the minimum."""
    server = client.version()
    assert _version(server["ApiVersion"]) >= _version(DOCKER_MIN_API), server
    assert server["ApiVersion"] == client.negotiated_api_version  # what negotiation found is the engine's
    script = cloud_init.setup_script(volume_id="vol-0123456789abcdef0", ssh_user="admin")
    gate = script[script.index("api=$(docker version"):script.index("root=$(docker info")]
    ok = subprocess.run(["bash", "-euc", gate + 'echo "api $api"'], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == f"api {server['ApiVersion']}", ok.stdout + ok.stderr
    # An engine one minor version below the minimum (a `docker` that reports it) is refused at boot.
    major, minor = (int(x) for x in DOCKER_MIN_API.split("."))
    shim = tmp_path / "docker"
    shim.write_text(f"#!/bin/sh\necho {major}.{minor - 1}\n")
    shim.chmod(0o755)
    old = subprocess.run(["bash", "-euc", gate], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert old.returncode == 1
    assert f"docker.io speaks API {major}.{minor - 1}; the containers need >= {DOCKER_MIN_API}" in old.stderr


def test_engine_api_auto_is_what_the_engine_speaks(client):
    """``docker.engineApi: auto`` at deploy time: the engine's own API version (20.10 here: 1.41, so the
    healthchecks take the 20.10 form; an engine >= 25 gets start_interval)."""
    from components.config.docker import DockerSettings
    from components.docker.local import engine_api

    assert engine_api(DockerSettings()) == client.api.version()["ApiVersion"]


def test_a_1_41_engine_drops_a_healthcheck_start_interval(client, dep: Deployment):
    """Why the model renders no start_interval (test_docker_model checks it does not): an engine
    spoken to at API 1.41 silently drops it, so a start interval would never apply. (The refusal
    pulumi-docker's client gives first is the applier's emulation, tested in test_docker_model.)"""
    name = f"{dep.prefix}-startinterval"
    hc = {"Test": ["CMD-SHELL", "true"], "Interval": 15 * 10**9, "StartPeriod": 60 * 10**9,
          "StartInterval": 2 * 10**9}
    created = client.api.create_container(dep.container("alice")["Image"], name=name, healthcheck=hc,
                                          command=["true"])
    try:
        kept = client.api.inspect_container(created["Id"])["Config"]["Healthcheck"]
    finally:
        client.api.remove_container(created["Id"], force=True)
    assert kept["Interval"] == hc["Interval"] and kept["StartPeriod"] == hc["StartPeriod"]
    assert not kept.get("StartInterval"), kept


def test_proxy_publishes_on_loopback_only(client, dep: Deployment):
    bindings = client.api.inspect_container(dep.proxy)["HostConfig"]["PortBindings"]
    assert {b["HostIp"] for v in bindings.values() for b in v} == {"127.0.0.1"}
    # Not reachable on the machine's other addresses.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet sent: picks the outbound interface address
        lan_ip = s.getsockname()[0]
    assert lan_ip != "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection((lan_ip, dep.https_port), timeout=3).close()
    socket.create_connection(("127.0.0.1", dep.https_port), timeout=3).close()


# ----------------------------------------------------------------- 2. through Caddy, with its CA


def test_through_caddy_with_its_own_ca(dep: Deployment):
    for t in TENANTS:
        assert dep.https(t, contract.READINESS_PROBE.path) == (200, '{"status":"ready"}')
        assert dep.https(t, contract.AUTH_CHECK_PATH)[0] == 401
        assert dep.https(t, contract.AUTH_CHECK_PATH, dep.key(t))[0] == 200
        status, location = http_redirect(dep.host(t), dep.http_port, "/ready?x=1")
        assert (status, location) == (308, f"https://{dep.host(t)}:{dep.https_port}/ready?x=1")
    # One tenant's key opens no other tenant.
    assert dep.https("bob", contract.AUTH_CHECK_PATH, dep.key("alice"))[0] == 401
    assert dep.https("alice", contract.AUTH_CHECK_PATH, dep.key("carol"))[0] == 401
    # Caddy has certificates for the tenants' hosts only: any other name gets no TLS at all.
    ctx = ssl.create_default_context(cafile=str(dep.ca))
    with socket.create_connection(("127.0.0.1", dep.https_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="not-a-tenant.localhost")


def test_smoke_command_passes_for_every_tenant(dep: Deployment, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(dep.rendered.outputs, default=str))
    proc = subprocess.run(
        [sys.executable, "-m", "openhands_cli", "smoke", "-s", dep.stack, "--outputs", str(outputs),
         "--ca-file", str(dep.ca), "--timeout", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # generous: CI shares 2 cores with other jobs
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK: all {len(TENANTS)} tenant(s) passed" in proc.stdout, proc.stdout


def test_session_key_never_reaches_the_proxy_log(client, dep: Deployment):
    from websockets.sync.client import connect

    key = dep.key("carol")
    ctx = ssl.create_default_context(cafile=str(dep.ca))
    host = dep.host("carol")
    # A browser's WebSocket (key in the URL) and a REST call with the key in query and header.
    sock = socket.create_connection(("127.0.0.1", dep.https_port), timeout=10)
    with connect(f"wss://{host}:{dep.https_port}{contract.WS_CHECK_PATH}?session_api_key={key}", sock=sock,
                 ssl=ctx, server_hostname=host, open_timeout=10, close_timeout=2) as ws:
        ws.send(json.dumps(contract.ws_auth_frame(key)))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)
    assert dep.https("carol", f"{contract.AUTH_CHECK_PATH}?session_api_key={key}", key)[0] == 200
    time.sleep(1)
    logs = client.api.logs(dep.proxy).decode(errors="replace")
    assert f"{contract.WS_CHECK_PATH}" in logs and "handled request" in logs, logs[-2000:]  # access log is on
    assert key not in logs


# ----------------------------------------------------------------- 3. isolation


def test_tenants_cannot_reach_each_other(client, dep: Deployment):
    nets = {t: set(dep.container(t)["NetworkSettings"]["Networks"]) for t in TENANTS}
    assert all(len(n) == 1 for n in nets.values()) and len(set.union(*nets.values())) == 3, nets
    proxy_nets = set(client.api.inspect_container(dep.proxy)["NetworkSettings"]["Networks"])
    assert proxy_nets == set.union(*nets.values()) | {f"{dep.prefix}-proxy-net"}  # and its own, no tenant's
    bob = dep.container("bob")["NetworkSettings"]["Networks"][f"{dep.prefix}-bob-net"]["IPAddress"]
    probe = "exec 3<>/dev/tcp/{host}/{port} && echo open"
    # Control: the probe works, alice reaches her own server.
    code, out = dep.exec("alice", probe.format(host="agent-alice", port=contract.PORT), timeout=5)
    assert code == 0 and "open" in out, out
    # Bob's alias does not even resolve on alice's network, and no port of his IP answers.
    code, out = dep.exec("alice", probe.format(host="agent-bob", port=contract.PORT), timeout=5)
    assert code != 0 and "open" not in out, out
    for port in (contract.PORT, 8001, 22, 80, 443):
        code, out = dep.exec("alice", probe.format(host=bob, port=port), timeout=3)
        assert code != 0 and "open" not in out, (port, out)


# ----------------------------------------------------------------- 4. state survives


def test_state_survives_restart(client, dep: Deployment, stored):
    for t in TENANTS:
        client.api.restart(f"{dep.prefix}-{t}", timeout=contract.STOP_GRACE_SECONDS)
    for t in TENANTS:
        dep.wait_ready(t)
    assert_state(dep, stored)


def test_state_survives_sigkill(client, dep: Deployment, stored):
    before = dep.container("alice")["RestartCount"]
    os.kill(dep.container("alice")["State"]["Pid"], signal.SIGKILL)  # a crash, not a `docker stop`
    deadline = time.monotonic() + 30
    while dep.container("alice")["RestartCount"] == before:  # restart: unless-stopped brings it back
        assert time.monotonic() < deadline, "alice was not restarted after SIGKILL"
        time.sleep(0.2)
    dep.wait_ready("alice")
    key = dep.key("alice")
    assert dep.https("alice", f"/api/settings/secrets/{SECRET[0]}", key) == (200, f"{SECRET[1]}-alice")
    # The conversation was live in the killed server, whose lease names this same hostname and,
    # in a restarted container, usually the same PID as the new server: the server cannot tell
    # its owner is dead, so the conversation may answer 404 until the lease expires (45 s).
    deadline = time.monotonic() + LEASE_TTL_SECONDS + 30
    while (status := dep.https("alice", served(stored["alice"]), key)[0]) != 200:
        assert status == 404 and time.monotonic() < deadline, status
        time.sleep(1)


def test_state_survives_recreate(client, dep: Deployment, stored):
    applier = dep.applier
    old_id = dep.container("bob")["Id"]
    applier._delete(applier.named("bob-agent-server"))  # noqa: SLF001 - `pulumi up --replace`
    steps = applier.up(dep.rendered)
    assert [(s.op, s.name) for s in steps if s.op != "same"] == [("create", "bob-agent-server")]
    assert dep.container("bob")["Id"] != old_id
    dep.wait_ready("bob")
    assert_state(dep, stored, ["bob"])


def test_rotation_keeps_secrets_and_serves_conversations_at_once(client, dep: Deployment, stored):
    old_keys = {t: dep.key(t) for t in TENANTS}
    # Conversations the old servers hold live (and hold the lease of) when the rotation comes.
    live = {t: new_conversation(dep, t) for t in TENANTS}
    watches = {t: Watch(dep, t, served(live[t]), old_keys[t]) for t in TENANTS}
    steps = dep.up(**{"keys.rotation": 1})
    time.sleep(1)
    seen = {t: w.stop() for t, w in watches.items()}
    for t in TENANTS:  # 502 while the new server boots, never a 404 (a conversation lost to a lease)
        assert 404 not in seen[t] and seen[t][-1] == 200, (t, sorted(set(seen[t])))
    replaced = sorted(s.name for s in steps if s.op == "replace")
    assert replaced == sorted(f"{t}-agent-server" for t in TENANTS)
    assert not [s for s in steps if s.name == "docker-proxy-caddy" and s.op != "same"]
    for t in TENANTS:
        assert dep.key(t) != old_keys[t]
    # `up` returned after the healthchecks: everything is served on the first request,
    # not after the 45 s lease of a SIGKILLed predecessor.
    assert_state(dep, stored)
    assert_state(dep, live)
    for t in TENANTS:  # the previous key keeps working until the next rotation
        assert dep.https(t, contract.AUTH_CHECK_PATH, old_keys[t])[0] == 200


def test_destroy_with_retain_keeps_volumes_and_reapply_reattaches(client, dep: Deployment, stored):
    steps = dep.applier.destroy()
    forgot = sorted(s.name for s in steps if s.op == "forget")
    assert forgot == sorted([*(f"{t}-state" for t in TENANTS), "docker-proxy-data"])
    api = client.api
    assert not api.containers(all=True, filters={"name": dep.prefix})
    assert not [n for n in api.networks(names=[dep.prefix]) if n["Name"].startswith(dep.prefix + "-")]
    volumes = {v["Name"] for v in api.volumes(filters={"name": dep.prefix})["Volumes"] or []}
    assert {f"{dep.prefix}-{t}-state" for t in TENANTS} <= volumes
    # A fresh stack state (new applier), same config: the volumes are re-attached by name.
    dep.applier = None
    steps = dep.up(**{"keys.rotation": 1})
    assert {(s.type, s.op) for s in steps if s.type == VOLUME} == {(VOLUME, "create")}
    assert {(s.type, s.op) for s in steps if s.type == NETWORK} == {(NETWORK, "create")}
    for t in TENANTS:
        dep.wait_ready(t)
    assert_state(dep, stored)


def test_without_grace_a_replacement_still_serves_its_conversations(client, dep: Deployment, stored):
    # Force-removal (SIGKILL, no destroy_grace_seconds) as the model did before STOP_GRACE_SECONDS. With
    # the server's default leases this was the control experiment: the dead server's lease named another
    # hostname, so its replacement answered 404 for the conversation until the lease expired (45 s). The
    # Docker model turns leases off (contract.NO_LEASES: one container name, one server per volume), so
    # even a SIGKILLed server's replacement serves its conversations as soon as it is ready.
    live = new_conversation(dep, "alice")
    key = dep.key("alice")
    watch = Watch(dep, "alice", served(live), key)
    applier = dep.applier
    old = applier.named("alice-agent-server")
    old.outputs["destroy_grace_seconds"] = 0  # what the state of the old render held
    applier._delete(old)  # noqa: SLF001 - `pulumi up --replace`
    applier.up(dep.rendered)
    deadline = time.monotonic() + 60
    while (not watch.statuses or watch.statuses[-1] != 200) and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = watch.stop()
    assert 404 not in seen, f"a conversation answered 404 after a forced replacement: {sorted(set(seen))}"
    assert seen[-1] == 200
