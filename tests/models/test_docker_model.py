"""The Docker model's render, for what a real engine and a real Caddy would do with it.

Offline: no Docker engine needed (tests/real/docker/test_docker_real.py applies the same render on one).
The log-scrubbing test runs the real Caddy (scripts/caddy) in front of the real agent server.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from components import contract
from components.config import ConfigError
from components.contract import DOCKER_MIN_API
from components.docker import caddy
from openhands_cli import render as render_mod
from openhands_cli.render import Rendered, load_stack_config, render
from tests.harness.agent_server import free_port
from tests.harness.caddy_proxy import ROUTES, caddy_binary, served_caddyfile
from tests.harness.docker_apply import CONTAINER, FIELD_MIN_API, IMAGE, NETWORK, VOLUME, _version

ROOT = Path(__file__).resolve().parents[2]

STACK = "local"
THREE = ["alice", "bob", "carol"]


def agents(rendered: Rendered) -> list:
    return [c for c in rendered.of_type(CONTAINER) if c.name.endswith("-agent-server")]


def proxy(rendered: Rendered):
    return rendered.one(CONTAINER, "docker-proxy-caddy")


def test_nothing_rendered_needs_a_newer_engine_api_than_the_docs_state(three: Rendered):
    readme = (ROOT / "docs" / "local.md").read_text()
    stated = re.search(r"Docker Engine >= 20\.10 \(API (\d+\.\d+)\)", readme)
    assert stated and stated.group(1) == DOCKER_MIN_API == "1.41"
    for c in three.of_type(CONTAINER):
        hc = c.inputs.get("healthcheck") or {}
        assert "startInterval" not in hc, f"{c.name}: healthcheck start_interval needs API 1.44"
        used = {f"healthcheck.{k}" for k in hc}
        for path in used & set(FIELD_MIN_API):
            assert _version(FIELD_MIN_API[path]) <= _version(DOCKER_MIN_API), (c.name, path)
    # The start period stays: the first failures while the server boots do not count.
    for c in agents(three):
        assert c.inputs["healthcheck"]["startPeriod"] == f"{contract.STARTUP_BUDGET_SECONDS}s"


def test_proxy_publishes_on_loopback_unless_bind_address_says_otherwise(three: Rendered):
    assert {p["ip"] for p in proxy(three).inputs["ports"]} == {"127.0.0.1"}
    lan = render("local", overrides={"docker.bindAddress": "192.168.1.20"})
    assert {p["ip"] for p in proxy(lan).inputs["ports"]} == {"192.168.1.20"}
    everywhere = render("local", overrides={"docker.bindAddress": "0.0.0.0"})
    assert {p["ip"] for p in proxy(everywhere).inputs["ports"]} == {"0.0.0.0"}
    # No agent server publishes anything.
    assert all(not c.inputs.get("ports") for c in agents(three))


def test_bind_address_must_be_an_ip_and_nothing_is_registered():
    with pytest.raises(ConfigError, match=r"docker\.bindAddress: 'my-laptop' is not an IP address") as info:
        render("local", overrides={"docker.bindAddress": "my-laptop"})
    assert render_mod.registered_before(info.value) == []


def test_vm_proxy_stays_public_by_default():
    vm = render("vm")
    assert {p["ip"] for p in proxy(vm).inputs["ports"]} == {"0.0.0.0"}


def test_containers_stop_gracefully_before_removal(three: Rendered):
    # A key rotation replaces the container: SIGTERM first, so the server releases its
    # conversation leases (tests/real/docker/test_docker_real.py shows the conversation served at once).
    assert contract.STOP_GRACE_SECONDS >= 2  # the server exits in 0.6-1.5 s on SIGTERM
    for c in three.of_type(CONTAINER):
        assert c.inputs["destroyGraceSeconds"] == contract.STOP_GRACE_SECONDS, c.name
        assert c.delete_before_replace, c.name  # fixed names: the old one goes first


def test_each_tenant_has_its_own_network_and_the_proxy_joins_all(three: Rendered):
    networks = {n.name: n.inputs["name"] for n in three.of_type(NETWORK)}
    assert set(networks) == {f"{t}-network" for t in THREE} | {"docker-proxy-network"}
    for c in agents(three):
        tenant = c.name.removesuffix("-agent-server")
        (attached,) = c.inputs["networksAdvanced"]
        assert attached == {"name": networks[f"{tenant}-network"], "aliases": [f"agent-{tenant}"]}
    # The container is created on its own network only: the tenants' are joined in place by ProxyRoutes,
    # so adding or removing a tenant changes no input of the container (no replacement).
    assert proxy(three).inputs["networksAdvanced"] == [{"name": networks["docker-proxy-network"]}]
    assert "networksAdvanced" in proxy(three).ignore_changes
    (routes,) = [r for r in three.resources if r.type == ROUTES]
    assert sorted(routes.inputs["networks"]) == sorted(networks[f"{t}-network"] for t in THREE)
    # The proxy's upstreams are the aliases it can resolve on those networks.
    caddyfile = three.outputs["caddyfile"]
    assert served_caddyfile(three) == caddyfile
    for t in THREE:
        assert f"reverse_proxy agent-{t}:{contract.PORT}" in caddyfile


def test_adding_a_tenant_changes_the_routes_not_the_proxy_container():
    one, two = (render("local", overrides={"tenants": tenants}) for tenants in (["alice"], ["alice", "bob"]))
    assert proxy(one).inputs == proxy(two).inputs  # pulumi-docker would replace it on any change here
    boot = next(u["content"] for u in proxy(two).inputs["uploads"] if u["file"] == caddy.CONFIG_PATH)
    assert "reverse_proxy" not in boot  # global options only: the sites come with the routes
    (r1,), (r2,) = ([r for r in x.resources if r.type == ROUTES] for x in (one, two))
    assert r1.inputs["caddyfile"] != r2.inputs["caddyfile"] and r1.inputs["networks"] != r2.inputs["networks"]


def docker_names(rendered: Rendered) -> set[str]:
    """Engine-global names: containers, networks, volumes (images are shared on purpose)."""
    return {r.inputs["name"] for r in rendered.resources if r.type in (CONTAINER, NETWORK, VOLUME)}


def test_two_stacks_or_projects_share_no_docker_name():
    config = load_stack_config("local")
    first = docker_names(render("local", config=config))
    other_stack = docker_names(render("local-b", config=config))
    other_project = docker_names(render("local", config=config, project="acme-agents"))
    assert len(first) == len(other_stack) == len(other_project) == 6
    assert not first & other_stack, first & other_stack
    assert not first & other_project, first & other_project
    # The default project keeps the names earlier releases created (volumes re-attach by name).
    assert "openhands-local-default-state" in first and "openhands-local-proxy" in first
    assert all(n.startswith("acme-agents-local-") for n in other_project)
    for name in first | other_stack | other_project:
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name), name  # Docker's name grammar


def test_images_keep_the_references_users_get(three: Rendered):
    refs = {i.inputs["name"] for i in three.of_type(IMAGE)}
    assert contract.DEFAULT_IMAGE in refs
    assert any(r.endswith("caddy:2.10.2") for r in refs)


# ----------------------------------------------------------------- Caddy's logs, with real caddy


def _wss_with_query_key(host: str, port: int, ca: Path, key: str) -> None:
    from websockets.sync.client import connect

    ctx = ssl.create_default_context(cafile=str(ca))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(f"wss://{host}:{port}{contract.WS_CHECK_PATH}?session_api_key={key}", sock=sock, ssl=ctx,
                 server_hostname=host, open_timeout=10, close_timeout=2) as ws:
        ws.send(json.dumps(contract.ws_auth_frame(key)))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)  # accepted: the server stays silent


def test_caddy_logs_hold_no_session_key(start_agent_server, run_caddy):
    https_port, http_port = free_port(), free_port()
    rendered = render("local", overrides={"tenants": ["alice", "bob"], "docker.httpsPort": https_port,
                                          "docker.httpPort": http_port})
    (spec,) = [c for c in agents(rendered) if c.name == "alice-agent-server"]
    env = dict(e.split("=", 1) for e in spec.inputs["envs"])
    server = start_agent_server(env, spec.inputs["command"])
    dead = f"127.0.0.1:{free_port()}"  # bob's server is down, as during a rotation
    proxy_run = run_caddy(served_caddyfile(rendered), wait_for_cert="alice.localhost",
                          upstreams={f"agent-alice:{contract.PORT}": f"127.0.0.1:{server.port}",
                                     f"agent-bob:{contract.PORT}": dead})
    ca = proxy_run.internal_root
    key = env["OH_SESSION_API_KEYS_0"]
    bob_key = rendered.outputs["apiKey"]["bob"]

    _wss_with_query_key("alice.localhost", https_port, ca, key)
    assert proxy_run.https("alice.localhost", f"{contract.AUTH_CHECK_PATH}?session_api_key={key}", ca,
                           {contract.AUTH_HEADER: key})[0] == 200
    # An upstream that is down: Caddy's error log carries the request too.
    assert proxy_run.https("bob.localhost", f"{contract.WS_CHECK_PATH}?session_api_key={bob_key}", ca,
                           {contract.AUTH_HEADER: bob_key})[0] == 502
    time.sleep(0.5)
    log = proxy_run.log.read_text(errors="replace")
    assert "handled request" in log and contract.WS_CHECK_PATH in log, log[-2000:]  # access log is on
    assert "connection refused" in log, log[-2000:]  # the error was logged
    assert key not in log and bob_key not in log
    assert "session_api_key" not in log


def test_the_proxy_has_a_healthcheck_its_image_can_run(three: Rendered):
    """Caddy's image holds the caddy binary and nothing else: the check is caddy itself, asking the
    admin API on a unix socket of the container (never a TCP port a tenant could reach)."""
    hc = proxy(three).inputs["healthcheck"]
    assert hc["tests"] == list(caddy.HEALTHCHECK_COMMAND) and hc["tests"][:2] == ["CMD", "caddy"]
    assert "startInterval" not in hc  # API 1.41 drops it
    assert (hc["interval"], hc["timeout"], hc["retries"]) == (f"{contract.HEALTHCHECK_INTERVAL_SECONDS}s",
                                                              f"{contract.HEALTHCHECK_TIMEOUT_SECONDS}s",
                                                              contract.HEALTHCHECK_RETRIES)
    address = hc["tests"][hc["tests"].index("--address") + 1]
    assert address == f"unix/{caddy.ADMIN_SOCKET}"
    admin_lines = [ln.strip() for ln in three.outputs["caddyfile"].splitlines() if ln.strip().startswith("admin")]
    assert admin_lines == [f"admin {address}"]
    assert not proxy(three).inputs.get("wait")  # a signal only: `up` does not wait 15 s for it


def test_the_proxy_healthcheck_passes_on_a_running_caddy_without_reloading_it(run_caddy):
    """The rendered command against real caddy running the rendered file: 0 while Caddy is up (the
    admin API answers "config is unchanged": no reload), non-zero once it is gone."""
    https_port, http_port = free_port(), free_port()
    rendered = render("local", overrides={"tenants": ["alice"], "docker.httpsPort": https_port,
                                          "docker.httpPort": http_port})
    run = run_caddy(served_caddyfile(rendered), upstreams={f"agent-alice:{contract.PORT}": f"127.0.0.1:{free_port()}"},
                    wait_for_cert="alice.localhost")
    assert run.admin_socket is not None
    argv = list(proxy(rendered).inputs["healthcheck"]["tests"][1:])
    argv[0] = caddy_binary()  # the image's caddy: the release scripts/caddy builds
    argv[argv.index(caddy.CONFIG_PATH)] = str(run.workdir / "Caddyfile")
    argv[argv.index(f"unix/{caddy.ADMIN_SOCKET}")] = f"unix/{run.admin_socket}"
    env = {"PATH": os.environ["PATH"], "HOME": str(run.workdir)}
    for _ in range(2):
        ok = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    time.sleep(0.3)
    log = run.log.read_text(errors="replace")
    assert log.count("config is unchanged") == 2, log[-3000:]
    run.stop()
    gone = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert gone.returncode != 0


# ----------------------------------------------------------------- the test applier refuses what it cannot map


def test_applier_fails_on_any_field_or_type_it_does_not_map(three: Rendered):
    from types import SimpleNamespace

    from tests.harness.docker_apply import Applier, ApplyError, UnmappedField

    applier = Applier(SimpleNamespace(api=SimpleNamespace(api_version="1.41")))  # no engine call below
    container = agents(three)[0]
    body, extra = applier._container_body(container.name, dict(container.inputs))  # noqa: SLF001
    assert extra["destroy_grace_seconds"] == contract.STOP_GRACE_SECONDS
    assert body["HostConfig"]["NanoCpus"] == int(float(container.inputs["cpus"]) * 1e9)
    assert body["HostConfig"]["Memory"] == int(container.inputs["memory"]) * 2**20
    assert "Init" not in body["HostConfig"]  # unset: the daemon's default
    with pytest.raises(UnmappedField, match=r"\['shmSize'\]"):
        applier._container_body(container.name, {**container.inputs, "shmSize": 64})  # noqa: SLF001
    hc = {**container.inputs["healthcheck"], "startInterval": "2s"}
    with pytest.raises(ApplyError, match="requires API version 1.44"):
        applier._container_body(container.name, {**container.inputs, "healthcheck": hc})  # noqa: SLF001
    ports = [{**p, "hostIp": "1.2.3.4"} for p in proxy(three).inputs["ports"]]
    with pytest.raises(UnmappedField, match="hostIp"):
        applier._container_body("proxy", {**proxy(three).inputs, "ports": ports})  # noqa: SLF001
    odd = Rendered(stack="x", config={}, resources=[
        render_mod.Resource(type="docker:index/service:Service", name="svc", urn="urn:x", custom=True, inputs={},
                            raw_inputs={}, secret_paths=[], parent="")])
    with pytest.raises(UnmappedField, match="docker:index/service:Service"):
        applier.up(odd)
