"""Faster rollouts on the Docker model (issue 21): healthy when the server is ready, and tenants
replaced one at a time. Offline: the render, the healthcheck's own script against a local HTTP
server, and the order tests/harness/docker_apply.py applies the render in (Pulumi's). The timings
live in bench/docker_bench.py and docs/performance.md; tests/real/docker/test_rollout_docker.py
checks the order on the real engine."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from components import contract
from components.docker import local
from openhands_cli.render import Rendered, render
from tests.harness.agent_server import free_port
from tests.harness.docker_apply import CONTAINER, NETWORK, VOLUME, Applier, ApplyError

STACK = "local"
THREE = ["alice", "bob", "carol"]


def agents(rendered: Rendered) -> dict[str, object]:
    return {c.name.removesuffix("-agent-server"): c for c in rendered.of_type(CONTAINER)
            if c.name.endswith("-agent-server")}


# ----------------------------------------------------------------- healthy when the server is ready


def test_the_rendered_healthcheck_is_the_20_10_one_polling_while_the_server_starts(three: Rendered):
    for c in agents(three).values():
        hc = c.inputs["healthcheck"]
        assert "startInterval" not in hc  # the render targets DOCKER_MIN_API: pulumi-docker refuses it below 1.44
        assert hc["interval"] == f"{local.STARTING_PROBE_SECONDS}s"
        # One probe may sleep the rest of the contract's interval, then check with the contract's timeout.
        assert hc["timeout"] == f"{contract.HEALTHCHECK_INTERVAL_SECONDS + contract.HEALTHCHECK_TIMEOUT_SECONDS}s"
        assert hc["retries"] == contract.HEALTHCHECK_RETRIES
        assert hc["startPeriod"] == f"{contract.STARTUP_BUDGET_SECONDS}s"
        script = hc["tests"][-1]
        assert hc["tests"][:3] == ["CMD", "bash", "-c"]
        assert contract.HEALTHCHECK_SCRIPT in script and local.READY_MARK in script
        assert local.READY_MARK.startswith("/dev/shm/")  # a tmpfs the engine mounts afresh at every start
        assert f"sleep {contract.HEALTHCHECK_INTERVAL_SECONDS - local.STARTING_PROBE_SECONDS};" in script


def test_an_engine_with_api_1_44_gets_start_interval_and_the_plain_check():
    hc = local.healthcheck("1.44")
    assert hc.start_interval == f"{local.STARTING_PROBE_SECONDS}s"
    assert hc.tests == list(contract.HEALTHCHECK_COMMAND)
    assert (hc.interval, hc.timeout) == (f"{contract.HEALTHCHECK_INTERVAL_SECONDS}s",
                                         f"{contract.HEALTHCHECK_TIMEOUT_SECONDS}s")
    assert local.healthcheck("1.43").start_interval is None
    assert local.healthcheck().start_interval is None  # default: contract.DOCKER_MIN_API


def test_pulumi_docker_refuses_start_interval_below_1_44_and_sends_it_from_1_44(three: Rendered):
    """Why the render cannot send start_interval "just in case": the provider's Go client refuses it
    before the call on an older engine (replayed by the applier)."""
    c = agents(three)["alice"]
    hc = local.healthcheck("1.44")
    rendered_hc = {"tests": hc.tests, "interval": hc.interval, "timeout": hc.timeout, "startPeriod": hc.start_period,
                   "retries": hc.retries, "startInterval": hc.start_interval}
    inputs = {**c.inputs, "healthcheck": rendered_hc}
    old = Applier(SimpleNamespace(api=SimpleNamespace(api_version="1.41")))
    with pytest.raises(ApplyError, match="requires API version 1.44"):
        old._container_body(c.name, dict(inputs))  # noqa: SLF001
    new = Applier(SimpleNamespace(api=SimpleNamespace(api_version="1.44")))
    body, _ = new._container_body(c.name, dict(inputs))  # noqa: SLF001
    assert body["Healthcheck"]["StartInterval"] == local.STARTING_PROBE_SECONDS * 10**9


def test_docker_engine_api_selects_the_healthcheck_form():
    """``docker.engineApi``: a version fixes the form; ``auto`` under mocks (an offline render) asks no
    engine and targets the oldest supported API; the VM (no engine yet) too."""
    fast = f"{local.STARTING_PROBE_SECONDS}s"
    for api, start_interval in (("1.44", fast), ("1.47", fast), ("1.43", None), ("auto", None)):
        rendered = render(STACK, overrides={"tenants": THREE, "docker.engineApi": api})
        for c in agents(rendered).values():
            assert c.inputs["healthcheck"].get("startInterval") == start_interval, (api, c.inputs["healthcheck"])
    assert local.engine_api(SimpleNamespace(engine_api="auto", engine="vm", host=None)) == contract.DOCKER_MIN_API


def test_auto_falls_back_to_the_oldest_api_when_the_engine_does_not_answer(tmp_path: Path):
    settings = SimpleNamespace(engine_api="auto", engine="local", host=f"unix://{tmp_path}/no-engine.sock")
    assert local.engine_api(settings) == contract.DOCKER_MIN_API


class _Ready(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if time.monotonic() >= self.ready_at else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def _probe(three: Rendered, port: int, mark: Path, sleep: str = "0") -> list[str]:
    """The rendered probe, pointed at ``port`` and ``mark``, its steady-state sleep shortened."""
    script = agents(three)["alice"].inputs["healthcheck"]["tests"][-1]
    rest = contract.HEALTHCHECK_INTERVAL_SECONDS - local.STARTING_PROBE_SECONDS
    script = (script.replace(f"/dev/tcp/127.0.0.1/{contract.PORT}", f"/dev/tcp/127.0.0.1/{port}")
              .replace(local.READY_MARK, str(mark)).replace(f"sleep {rest};", f"sleep {sleep};"))
    return ["bash", "-c", script]


def test_the_probe_answers_within_a_poll_of_ready_then_keeps_the_contract_cadence(three: Rendered, tmp_path: Path):
    port = free_port()
    _Ready.ready_at = time.monotonic() + 1.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mark = tmp_path / "ready"
    try:
        # Starting: polls /ready (503, 503, ...) and succeeds within one poll of the first 200.
        t0 = time.monotonic()
        first = subprocess.run(_probe(three, port, mark), capture_output=True, text=True, timeout=30)
        took = time.monotonic() - t0
        assert first.returncode == 0, first.stderr
        assert time.monotonic() >= _Ready.ready_at and took < 1.0 + 1.0
        assert mark.exists()
        # Once ready: sleeps the rest of the interval (shortened here to 0.5 s), then one check.
        t0 = time.monotonic()
        again = subprocess.run(_probe(three, port, mark, sleep="0.5"), capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and time.monotonic() - t0 >= 0.5
    finally:
        server.shutdown()
        server.server_close()
    # A server that went away after being ready: the check fails (it counts towards the retries).
    gone = subprocess.run(_probe(three, port, mark), capture_output=True, text=True, timeout=30)
    assert gone.returncode != 0


# ----------------------------------------------------------------- one tenant at a time


def test_each_tenant_container_waits_for_the_previous_one_only(three: Rendered):
    by_name = {r.urn: r.name for r in three.resources}
    containers = agents(three)
    for i, t in enumerate(THREE):
        c = containers[t]
        assert c.inputs["wait"] is True  # a replacement is healthy before the next one starts
        tenant_deps = {by_name[d].removesuffix("-agent-server") for d in c.dependencies
                       if by_name.get(d, "").endswith("-agent-server")}
        assert tenant_deps == ({THREE[i - 1]} if i >= 1 else set())  # docker.rolloutWidth: 1 by default
    # Networks and volumes do not wait: a first `up` creates them all at once.
    for r in [*three.of_type(NETWORK), *three.of_type(VOLUME)]:
        assert not any(by_name.get(d, "").endswith("-agent-server") for d in r.dependencies), r.name


def test_rollout_width_sets_how_many_tenants_restart_at_once():
    five = ["t1", "t2", "t3", "t4", "t5"]
    for width, expect in ((2, {"t3": "t1", "t4": "t2", "t5": "t3"}), (5, {})):
        rendered = render(STACK, overrides={"tenants": five, "docker.rolloutWidth": width})
        by_name = {r.urn: r.name for r in rendered.resources}
        waits = {t: {by_name[d].removesuffix("-agent-server") for d in c.dependencies
                     if by_name.get(d, "").endswith("-agent-server")} for t, c in agents(rendered).items()}
        assert waits == {t: ({expect[t]} if t in expect else set()) for t in five}, (width, waits)


def _recording_applier(events: list[tuple[str, str, float, float]], pause: float = 0.2) -> Applier:
    """An applier whose provider calls only record (op, name, start, end): the Pulumi-engine side
    (dependency order, parallelism, replace) is what runs."""
    applier = Applier(SimpleNamespace(api=SimpleNamespace(api_version="1.41")))
    lock = threading.Lock()

    def record(op: str, name: str, slow: bool) -> None:
        t0 = time.monotonic()
        if slow:
            time.sleep(pause)  # a container's create includes waiting for healthy
        with lock:
            events.append((op, name, t0, time.monotonic()))

    def create(r, resolved, deps):
        record("create", r.name, r.type == CONTAINER)
        with lock:
            applier.state[r.urn] = SimpleNamespace(urn=r.urn, type=r.type, name=r.name, resolved=resolved,
                                                   retain_on_delete=r.retain_on_delete,
                                                   delete_before_replace=r.delete_before_replace,
                                                   dependencies=set(deps), inputs=r.inputs)

    def delete(res):
        record("delete", res.name, False)
        with lock:
            applier.state.pop(res.urn, None)

    applier._resolve = lambda r: dict(r.inputs)  # noqa: SLF001
    applier._create = create  # noqa: SLF001
    applier._delete = delete  # noqa: SLF001
    return applier


def test_the_applier_creates_and_replaces_tenants_in_chain_order_like_the_pulumi_engine():
    events: list[tuple[str, str, float, float]] = []
    applier = _recording_applier(events)
    first = render(STACK, overrides={"tenants": THREE})
    applier.up(first)
    done = {name: (t0, t1) for op, name, t0, t1 in events if op == "create"}
    order = [f"{t}-agent-server" for t in THREE]
    for a, b in zip(order, order[1:], strict=False):
        assert done[b][0] >= done[a][1], (a, b)  # b starts once a is done (healthy)
    # Independent resources run in parallel: every network and volume before the first container is done.
    assert all(done[f"{t}-network"][0] < done[order[0]][1] for t in THREE)
    assert all(done[f"{t}-state"][0] < done[order[0]][1] for t in THREE)

    # A key rotation replaces every tenant: delete-then-create, one tenant after the other.
    events.clear()
    applier.up(render(STACK, overrides={"tenants": THREE, "keys.rotation": 1}))
    steps = [(op, name) for op, name, _, _ in sorted(events, key=lambda e: e[2]) if name in order]
    assert steps == [(op, n) for n in order for op in ("delete", "create")]
    assert not [name for op, name, *_ in events if op == "delete" and name not in order]  # nothing else replaced
