"""Fixtures and helpers for tests on a real Docker engine (tests/real/docker/test_docker_real.py, bench/).

``engine()`` connects to the engine (DOCKER_HOST or /var/run/docker.sock) with API version
negotiation; ``images()`` runs ``scripts/docker-images`` (cheap when cached) for the images
under the references users get: ``agent_server`` and ``caddy`` (what the stack renders) and
``agent_server_upgrade`` (another agent-server release, for tests/real/docker/test_upgrade_docker.py).
When either is missing the tests FAIL under ``CI=true`` and are skipped with one reason elsewhere.

``Deployment`` is one rendered ``local`` stack applied by tests/harness/docker_apply.py under a
unique stack name, on free loopback ports; ``remove_stack`` removes every container,
network and volume whose name carries that stack's prefix (what a test made).

Another engine than DOCKER_HOST's (a private dockerd, tests/harness/private_dockerd.py): ``engine_at(url)``
is its client, and a ``Deployment`` with ``docker_host=url`` applies through ``HostApplier`` (the applier,
its clients on that engine); ``via`` makes the HTTPS calls where that engine publishes its ports.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from components import contract
from components.contract import DOCKER_MIN_API
from components.docker import caddy
from openhands_cli.render import Rendered, load_stack_config, render
from tests.harness import ci
from tests.harness.agent_server import free_port
from tests.harness.caddy_proxy import LoopbackHTTPS
from tests.harness.docker_apply import CONTAINER, Applier, _version

ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = ROOT / "scripts" / "docker-images"
IMAGES_TIMEOUT = 45 * 60  # a cold build: debootstrap + uv + import


def unavailable(reason: str) -> None:
    """Fail under CI (a real-engine test never skips there), skip with one reason elsewhere."""
    ci.unavailable(f"no usable Docker engine: {reason}")


def engine() -> docker.DockerClient:
    """A client speaking the documented minimum Engine API (docs/local.md) (1.41) to whatever engine answers, so
    the tests prove the stack works on Docker 20.10 even on a newer engine."""
    try:
        negotiated = docker.from_env(version="auto", timeout=300)
        negotiated.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means "no engine"
        unavailable(f"no Docker engine reachable ({type(exc).__name__}: {exc}); start dockerd")
    if _version(negotiated.api.api_version) < _version(DOCKER_MIN_API):
        unavailable(f"the Docker engine speaks API {negotiated.api.api_version}; the stack needs >= {DOCKER_MIN_API}")
    client = docker.from_env(version=DOCKER_MIN_API, timeout=300)
    client.negotiated_api_version = negotiated.api.api_version  # type: ignore[attr-defined]
    return client


_IMAGES: dict[str, str] = {}


def images() -> dict[str, str]:
    """The image references, built (or found cached) by scripts/docker-images: ``agent_server``,
    ``caddy`` and ``agent_server_upgrade``."""
    if not _IMAGES:
        try:
            proc = subprocess.run([str(IMAGES_SCRIPT)], capture_output=True, text=True, timeout=IMAGES_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            unavailable(f"scripts/docker-images did not run: {exc}")
        if proc.returncode != 0:
            unavailable(f"scripts/docker-images failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        _IMAGES.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return dict(_IMAGES)


def unique_stack(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:6]}"


def stack_prefix(stack: str, project: str = "openhands") -> str:
    return f"{project}-{stack}"


def remove_stack(client: docker.DockerClient, prefix: str) -> None:
    """Remove every container, network and volume named ``<prefix>-...`` (by name, not by guess)."""
    api = client.api
    for c in api.containers(all=True, filters={"name": prefix}):
        if any(n.lstrip("/").startswith(prefix + "-") for n in c["Names"]):
            api.remove_container(c["Id"], v=True, force=True)
    for n in api.networks(names=[prefix]):
        if n["Name"].startswith(prefix + "-"):
            api.remove_network(n["Id"])
    for v in (api.volumes(filters={"name": prefix}) or {}).get("Volumes") or []:
        if v["Name"].startswith(prefix + "-"):
            api.remove_volume(v["Name"], force=True)


def engine_at(base_url: str) -> docker.DockerClient:
    """A client of the engine at ``base_url`` (not DOCKER_HOST's), speaking the documented minimum API as
    ``engine()`` does."""
    negotiated = docker.DockerClient(base_url=base_url, version="auto", timeout=300)
    version = negotiated.api.api_version
    negotiated.close()
    if _version(version) < _version(DOCKER_MIN_API):
        unavailable(f"the Docker engine at {base_url} speaks API {version}; the stack needs >= {DOCKER_MIN_API}")
    client = docker.DockerClient(base_url=base_url, version=DOCKER_MIN_API, timeout=300)
    client.negotiated_api_version = version  # type: ignore[attr-defined]
    return client


class HostApplier(Applier):
    """The applier, its per-thread clients on the engine at ``base_url`` instead of DOCKER_HOST's."""

    def __init__(self, client: docker.DockerClient, base_url: str, parallel: int = 8):
        super().__init__(client, parallel)
        self.base_url = base_url

    @property
    def api(self) -> docker.APIClient:
        api = getattr(self._local, "api", None)
        if api is None:
            api = docker.APIClient(base_url=self.base_url, version=self.api_version, timeout=300)
            self._local.api = api
        return api


# ------------------------------------------------------------------ HTTPS to *.localhost on loopback


def https(host: str, port: int, path: str, ca: Path, headers: Mapping[str, str] | None = None,
          method: str = "GET", body: Any = None, timeout: float = 10) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = LoopbackHTTPS(host, port, context=ctx, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Host": f"{host}:{port}", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()




# ------------------------------------------------------------------ one applied stack


@dataclass
class Deployment:
    client: docker.DockerClient
    stack: str
    tenants: list[str]
    https_port: int
    http_port: int
    overrides: dict[str, Any] = field(default_factory=dict)
    applier: Applier | None = None
    rendered: Rendered | None = None
    ca: Path | None = None
    last_steps: list = field(default_factory=list)
    first_steps: list = field(default_factory=list)
    # Applied to every render before it is applied (a test-only variant, e.g. a size-limited volume).
    patch: Callable[[Rendered], Rendered] | None = None
    # Another engine than DOCKER_HOST's (e.g. ``unix:///tmp/ohpd-x/docker.sock``, a private dockerd): the
    # applier's clients talk to it too. ``via(fn, *args)`` makes each HTTPS call (a private engine's
    # network namespace, where its ports are published: tests/harness/private_dockerd.py ``run``).
    docker_host: str | None = None
    via: Callable[..., Any] | None = None

    @property
    def prefix(self) -> str:
        return stack_prefix(self.stack)

    def render(self, **extra: Any) -> Rendered:
        overrides = {"tenants": self.tenants, "docker.httpsPort": self.https_port,
                     "docker.httpPort": self.http_port, **self.overrides, **extra}
        if self.docker_host:  # the stack's own engine setting: the provider and ProxyRoutes use it
            overrides.setdefault("docker.host", self.docker_host)
        rendered = render(self.stack, config=load_stack_config("local"), overrides=overrides)
        return self.patch(rendered) if self.patch else rendered

    def up(self, **extra: Any):
        if self.applier is None:
            self.applier = HostApplier(self.client, self.docker_host) if self.docker_host else Applier(self.client)
        self.rendered = self.render(**extra)
        self.last_steps = self.applier.up(self.rendered)
        return self.last_steps

    def host(self, tenant: str) -> str:
        return f"{tenant}.localhost"

    def key(self, tenant: str) -> str:
        assert self.rendered is not None
        return self.rendered.outputs["apiKey"][tenant]

    def container(self, tenant: str) -> dict:
        return self.client.api.inspect_container(f"{self.prefix}-{tenant}")

    def server_ip(self, tenant: str) -> str:
        """The tenant server's address on its own Docker network: the host reaches it over the bridge
        (nothing is published; tests and benches only)."""
        return self.container(tenant)["NetworkSettings"]["Networks"][f"{self.prefix}-{tenant}-net"]["IPAddress"]

    @property
    def proxy(self) -> str:
        return f"{self.prefix}-proxy"

    def proxy_ip(self) -> str:
        """Caddy's address on its own network (``<prefix>-proxy-net``); tests and benches only."""
        nets = self.client.api.inspect_container(self.proxy)["NetworkSettings"]["Networks"]
        return nets[f"{self.prefix}-proxy-net"]["IPAddress"]

    def fetch_ca(self, dest: Path, timeout: float = 30) -> Path:
        """Caddy's internal root, copied out of the proxy (what the README's Connect section tells users to do)."""
        path = f"{caddy.DATA_DIR}/caddy/pki/authorities/local/root.crt"
        deadline = time.monotonic() + timeout
        while True:
            try:
                stream, _ = self.client.api.get_archive(self.proxy, path)
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                    member = tar.getmembers()[0]
                    f = tar.extractfile(member)
                    assert f is not None
                    dest.write_bytes(f.read())
                self.ca = dest
                return dest
            except docker.errors.NotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def https(self, tenant: str, path: str, key: str | None = None, headers: Mapping[str, str] | None = None,
              **kw: Any) -> tuple[int, str]:
        assert self.ca is not None
        headers = {**(headers or {}), **({contract.AUTH_HEADER: key} if key else {})}
        if self.via is not None:
            return self.via(https, self.host(tenant), self.https_port, path, self.ca, headers, **kw)
        return https(self.host(tenant), self.https_port, path, self.ca, headers, **kw)

    def wait_ready(self, tenant: str, budget: float = contract.STARTUP_BUDGET_SECONDS) -> float:
        """Seconds until /ready answers 200 through the proxy."""
        t0 = time.monotonic()
        last: object = None
        while time.monotonic() - t0 < budget:
            try:
                status, _ = self.https(tenant, contract.READINESS_PROBE.path, timeout=3)
                if status == 200:
                    return time.monotonic() - t0
                last = status
            except (OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"{tenant}: /ready not 200 through the proxy within {budget}s (last: {last})")

    def wait_healthy(self, tenant: str, budget: float = contract.STARTUP_BUDGET_SECONDS) -> None:
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            state = self.container(tenant)["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            time.sleep(0.5)
        raise AssertionError(f"{tenant}: not healthy within {budget}s")

    def exec(self, tenant: str, script: str, timeout: float = 30) -> tuple[int, str]:
        """Run bash inside a tenant's container (as its own user)."""
        api = self.client.api
        ex = api.exec_create(f"{self.prefix}-{tenant}", ["timeout", str(int(timeout)), "bash", "-c", script])
        out = api.exec_start(ex["Id"]).decode(errors="replace")
        return api.exec_inspect(ex["Id"])["ExitCode"], out

    def agent_containers(self) -> list[str]:
        assert self.applier is not None
        return [a.outputs["name"] for a in self.applier.of_type(CONTAINER)
                if a.outputs["name"] != self.proxy]


def new_deployment(client: docker.DockerClient, tag: str, tenants: list[str], **overrides: Any) -> Deployment:
    return Deployment(client=client, stack=unique_stack(tag), tenants=tenants, https_port=free_port(),
                      http_port=free_port(), overrides=dict(overrides))


def load_targets(dep: Deployment, tenants: list[str], via: str, conversations: Mapping[str, str] | None = None):
    """tests/harness/load_client.py targets for ``tenants``: ``via="proxy"`` through Caddy on loopback (TLS
    with Caddy's root, SNI and Host the tenant's host: the published port, which Docker's userland
    ``docker-proxy`` relays for loopback clients), ``via="proxy-bridge"`` the same to Caddy's address on
    its own network (what a remote client reaches through the engine's DNAT, without that relay),
    ``via="direct"`` plain HTTP to each server's address on its network."""
    from tests.harness.load_client import Target

    conversations = conversations or {}
    if via in ("proxy", "proxy-bridge"):
        assert dep.ca is not None
        ctx = ssl.create_default_context(cafile=str(dep.ca))
        address = "127.0.0.1" if via == "proxy" else dep.proxy_ip()
        return [Target(t, address, dep.https_port, dep.host(t), dep.key(t), ctx, conversations.get(t))
                for t in tenants]
    if via == "direct":
        out = []
        for t in tenants:
            ip = dep.server_ip(t)
            out.append(Target(t, ip, contract.PORT, ip, dep.key(t), None, conversations.get(t)))
        return out
    raise ValueError(via)


# ------------------------------------------------------------------ conversations


def conversation_body() -> dict:
    """A new conversation's request: a dummy LLM (never called) and the default workspace."""
    return {"agent": {"llm": {"model": "openai/gpt-4o", "api_key": "dummy"}, "tools": []},
            "workspace": {"working_dir": f"{contract.DATA_DIR}/project"}}


def new_conversation(dep: Deployment, tenant: str) -> str:
    """Create a conversation: the server activates it and holds its lease from then on."""
    status, text = dep.https(tenant, "/api/conversations", dep.key(tenant), method="POST", body=conversation_body())
    assert status == 201, text[:500]
    return json.loads(text)["id"]


def served(conversation_id: str) -> str:
    """A path that needs the conversation live on this server (it takes the conversation's lease):
    its events. The metadata (GET /api/conversations/<id>) is read from disk even while another
    server holds the lease, so it proves nothing."""
    return f"/api/conversations/{conversation_id}/events/search"


# A stored secret each fault/change test writes per tenant, and reads back after the fault.
SECRET = "GITHUB_TOKEN"
LEASE_TTL_SECONDS = 45  # the server's OH_LEASE_TTL_SECONDS default (agent_server_facts.md)


def secret_value(tenant: str) -> str:
    return f"ghp_fault_{tenant}_0123456789"


def assert_secret(dep: Deployment, tenant: str) -> None:
    assert dep.https(tenant, f"/api/settings/secrets/{SECRET}", dep.key(tenant)) == (200, secret_value(tenant))


def wait_conversation(dep: Deployment, tenant: str, conversation_id: str, budget: float,
                      since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until the conversation is served; only 404 (its lease still
    held) or "no server" (a proxy error, a refused or dropped connection) may come before."""
    t0 = time.monotonic() if since is None else since
    while True:
        try:
            status, body = dep.https(tenant, served(conversation_id), dep.key(tenant), timeout=5)
        except (OSError, ssl.SSLError):
            status, body = 0, ""
        if status == 200:
            return time.monotonic() - t0
        assert status in (0, 404, 502, 503), f"{tenant}: {status} {body[:300]}"
        assert time.monotonic() - t0 < budget, f"{tenant}: conversation not served within {budget}s ({status})"
        time.sleep(0.5)


def store_secrets_and_conversations(dep: Deployment) -> dict[str, str]:
    """Per tenant: the stored secret ``SECRET`` and a new conversation (live: the server holds its lease);
    returns the conversation ids."""
    ids = {}
    for t in dep.tenants:
        status, body = dep.https(t, "/api/settings/secrets", dep.key(t), method="PUT",
                                 body={"name": SECRET, "value": secret_value(t)})
        assert status == 200, body
        ids[t] = new_conversation(dep, t)
    return ids


def tear_down(client: docker.DockerClient, dep: Deployment) -> None:
    """``pulumi destroy`` of what the module applied, then the sweep by name of whatever is left."""
    if dep.applier is not None:
        with contextlib.suppress(Exception):  # the sweep below removes whatever is left
            dep.applier.destroy()
    remove_stack(client, dep.prefix)


def served_version(dep: Deployment, tenant: str) -> str:
    """The agent-server release a tenant's server reports: its OpenAPI document's ``info.version``
    (``importlib.metadata.version("openhands-agent-server")``; ``GET /openapi.json`` needs no key)."""
    status, body = dep.https(tenant, "/openapi.json", timeout=30)
    assert status == 200, body[:300]
    return json.loads(body)["info"]["version"]


def image_version(ref: str) -> str:
    """``ghcr.io/openhands/agent-server:1.58.2-python`` -> ``1.58.2``."""
    return ref.rsplit(":", 1)[1].removesuffix("-python")


class Poller:
    """Polls one path of a tenant through the proxy in a thread, every ``interval`` seconds, and keeps
    ``(monotonic time the request was sent, status)``; status 0 is no answer (refused, reset, timed out)."""

    def __init__(self, dep: Deployment, tenant: str, path: str, key: str | None = None, interval: float = 0.2):
        import threading

        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = dep.https(tenant, path, key, timeout=3)[0]
                except (OSError, ssl.SSLError):
                    status = 0
                self.samples.append((sent, status))
                self._stop.wait(interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def outage(samples: list[tuple[float, int]]) -> tuple[float, float, float] | None:
    """(first failed sample, last failed sample, seconds from the first failed sample to the first 200
    after the last one): how long a client polling that path was not served; None if it always was."""
    failed = [i for i, (_, status) in enumerate(samples) if status != 200]
    if not failed:
        return None
    first, last = samples[failed[0]][0], samples[failed[-1]][0]
    back = samples[failed[-1] + 1][0] if failed[-1] + 1 < len(samples) else last
    return first, last, back - first
