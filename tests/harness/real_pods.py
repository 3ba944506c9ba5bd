"""The ``k8s`` stack on REAL pods through the user's path, shared by the real-pod engine tests and the bench.

``uv run openhands up/rotate/down`` (the operator CLI → the real Pulumi CLI 3.276.0 and
pulumi-resource-kubernetes 4.25.0 of ``scripts/engine``) deploys the shipped ``k8s`` stack onto the
real node of ``scripts/kube start`` (kubelet + containerd + runc, the agent-server image under the
model's securityContext, claims from the default StorageClass ``local-path``). Only the stack file
changes, as a user would change it for this cluster:

- ``kubernetes.nodeSelector`` / ``tolerations``: the tainted real node (kwok keeps the scale tests);
- ``kubernetes.ingressClass: openhands-caddy``: the cluster's real controller (caddy-gateway + Caddy)
  routes each tenant's host and publishes the Ingress status the provider awaits (no stand-in);
- ``kubernetes.tls.secretName``: a wildcard certificate from a throwaway CA (openssl) that
  :class:`TlsSecret` puts into the namespace as soon as the stack creates it;
- ``storageClass`` removed (the cluster default), a namespace of the test's own.

Clients reach a tenant the way a user does: HTTPS to ``<tenant>.agents.example.com`` on the gateway's
host port (``DIR/gateway-https-port``, loopback), SNI and certificate checked against the CA.
Test-only stand-in: ``pulumi-resource-random`` (``scripts/random-standin``).

The real node fits two 1-vCPU tenants (2 CPUs): every user of it takes ``node_lock``
(tests/harness/real_node.py) and leaves no pod behind.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import contract
from tests.harness.caddy_proxy import LoopbackHTTPS
from tests.harness.kube_apply import ApplyError, Client
from tests.harness.real_engine import EngineProject
from tests.harness.real_node import (  # noqa: F401 - NODE, node_lock: re-exported for the tests and bench
    CONTROLLER_CLASS,
    NODE,
    NODE_SELECTOR,
    TOLERATION,
    make_certs,
    node_lock,
    tls_secret,
    ts,
)

STACK = "k8s"
INGRESS_CLASS = CONTROLLER_CLASS  # scripts/kube's controller (IngressClass and GatewayClass)
TLS_SECRET = "openhands-test-tls"
# The agent server's own line once it listens (uvicorn), in `kubectl logs --timestamps`.
SERVING_LINE = re.compile(r"Uvicorn running on ")


# ------------------------------------------------------------------ TLS from a Secret the test creates


class TlsSecret(threading.Thread):
    """Creates the TLS Secret in the namespace as soon as the stack has created the namespace (the
    stack creates it, so it cannot exist before ``up``); a cert-manager would do the same."""

    def __init__(self, client: Client, namespace: str, crt: Path, key: Path) -> None:
        super().__init__(daemon=True, name=f"tls-secret-{namespace}")
        self.client, self.namespace = client, namespace
        self.body = json.dumps(tls_secret(TLS_SECRET, namespace, crt, key))
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.3):
            try:
                if self.client.get(f"/api/v1/namespaces/{self.namespace}/secrets/{TLS_SECRET}") is None:
                    self.client.request("POST", f"/api/v1/namespaces/{self.namespace}/secrets", self.body)
            except ApplyError:  # the namespace does not exist yet, or is terminating
                continue

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


# ------------------------------------------------------------------ one deployed stack


@dataclass
class PodTiming:
    """One pod's start, from its own status and its own log: container start (kubelet) → the server's
    "Uvicorn running on" line (the server's own start, the floor) → Ready (its probes)."""

    scheduled: float
    started: float
    serving: float
    ready: float

    @property
    def server_start(self) -> float:
        return self.serving - self.started

    @property
    def probe_lag(self) -> float:
        return self.ready - self.serving


@dataclass
class PodStack:
    """The shipped ``k8s`` stack in a project copy, aimed at the real node and the cluster's controller."""

    project: EngineProject
    client: Client
    kubectl: str
    kubeconfig: str
    namespace: str
    ca: Path
    gateway_port: int

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.project.openhands(*args, "-s", STACK, timeout=timeout)

    def ok(self, *args: str, timeout: float = 900) -> str:
        proc = self.run(*args, timeout=timeout)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Traceback" in text:
            pods = self.ctl("-n", self.namespace, "describe", "pods").stdout
            raise AssertionError(f"openhands {' '.join(args)} failed:\n{text[-6000:]}\n--- pods:\n{pods[-4000:]}")
        return proc.stdout

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], capture_output=True, text=True,
                              timeout=timeout)

    # -- the stack file, edited as a user would
    def data(self) -> dict[str, Any]:
        return yaml.safe_load(self.project.stack_file(STACK).read_text())

    def write(self, data: dict[str, Any]) -> None:
        self.project.stack_file(STACK).write_text(yaml.safe_dump(data, sort_keys=False))

    @property
    def config(self) -> dict[str, Any]:
        return self.data()["config"]

    @property
    def tenants(self) -> list[str]:
        return self.config["openhands:tenants"]

    @property
    def domain(self) -> str:
        return self.config["openhands:kubernetes"]["domain"]

    # -- the cluster's view
    def names(self, tenant: str) -> dict[str, str]:
        from components import kubernetes as k8s_model
        from components.config import parse

        # The names depend on the plain settings only: the secret ones (tenantKeys) stay encrypted.
        cfg = parse({k.split(":", 1)[1]: json.dumps(v) for k, v in self.config.items()
                     if k != "openhands:tenantKeys"}, set(), STACK)
        return k8s_model.names(tenant, cfg.kubernetes.object_prefix("openhands", STACK))

    def get(self, api: str, what: str) -> dict[str, Any] | None:
        return self.client.get(f"{api}/namespaces/{self.namespace}/{what}")

    def pod_name(self, tenant: str) -> str:
        return f"{self.names(tenant)['workload']}-0"

    def pod(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/api/v1", f"pods/{self.pod_name(tenant)}")

    def claim(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/api/v1", f"persistentvolumeclaims/{self.names(tenant)['claim']}")

    def sts(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/apis/apps/v1", f"statefulsets/{self.names(tenant)['workload']}")

    def key(self, tenant: str, index: int = 0) -> str:
        """The tenant's session key ``OH_SESSION_API_KEYS_<index>``, read back from its Secret."""
        secret = self.get("/api/v1", f"secrets/{self.names(tenant)['secret']}")
        assert secret is not None, f"{tenant}: no keys Secret"
        return base64.b64decode(secret["data"][contract.SESSION_KEY_ENV.format(index)]).decode()

    def exec(self, tenant: str, script: str) -> subprocess.CompletedProcess[str]:
        return self.ctl("-n", self.namespace, "exec", self.pod_name(tenant), "-c", "agent-server", "--",
                        "bash", "-c", script)

    # -- a client's view: HTTPS through the controller
    def host(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}"

    def https(self, tenant: str, path: str, key: str | None = None, method: str = "GET", body: Any = None,
              timeout: float = 10) -> tuple[int, str]:
        # caddy-gateway reloads Caddy whenever any route in the cluster changes (other tests' too); a
        # connection the outgoing config accepted can be closed unanswered. A client retries that once.
        try:
            return self._https(tenant, path, key, method, body, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            time.sleep(0.5)
            return self._https(tenant, path, key, method, body, timeout)

    def _https(self, tenant: str, path: str, key: str | None, method: str, body: Any,
               timeout: float) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = LoopbackHTTPS(self.host(tenant), self.gateway_port, context=ctx, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Host": f"{self.host(tenant)}:{self.gateway_port}"}
            if key is not None:
                headers[contract.AUTH_HEADER] = key
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def new_conversation(self, tenant: str, key: str, worktree: bool = False) -> tuple[int, str]:
        """POST a conversation (no LLM call is made) in the default workspace, on the claim: (status, body)."""
        body: dict[str, Any] = {
            "agent": {"llm": {"model": "openai/gpt-4o", "api_key": "sk-unused"}, "tools": []},
            "workspace": {"kind": "LocalWorkspace", "working_dir": contract.STATE_ENV["OH_WORKSPACE_PATH"]}}
        if worktree:
            body["worktree"] = True
        return self.https(tenant, "/api/conversations", key, method="POST", body=body, timeout=60)

    def wait_serving(self, tenant: str, budget: float = 120) -> float:
        """Monotonic time at which /ready first answered 200 through the controller."""
        deadline = time.monotonic() + budget
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, _ = self.https(tenant, contract.READINESS_PROBE.path, timeout=3)
                if status == 200:
                    return time.monotonic()
                last = status
            except (OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{tenant}: /ready not 200 through the controller within {budget}s (last: {last})")

    def timing(self, tenant: str) -> PodTiming:
        pod = self.pod(tenant)
        assert pod is not None
        (status,) = pod["status"]["containerStatuses"]
        conditions = {c["type"]: c for c in pod["status"]["conditions"]}
        logs = self.ctl("-n", self.namespace, "logs", "--timestamps", self.pod_name(tenant), "-c", "agent-server")
        assert logs.returncode == 0, logs.stderr
        serving = [ln.split(" ", 1)[0] for ln in logs.stdout.splitlines() if SERVING_LINE.search(ln)]
        assert serving, f"{tenant}: no {SERVING_LINE.pattern!r} line in its log:\n{logs.stdout[-3000:]}"
        return PodTiming(scheduled=ts(conditions["PodScheduled"]["lastTransitionTime"]),
                         started=ts(status["state"]["running"]["startedAt"]),
                         serving=ts(serving[0]), ready=ts(conditions["Ready"]["lastTransitionTime"]))

    def tear_down(self, tls: TlsSecret) -> None:
        """`openhands down --delete-data --yes` when anything is deployed, the TLS Secret's writer stopped,
        and the namespace gone, so the node's CPUs are free before the node lock goes."""
        try:
            if self.sts(self.tenants[0]) is not None:
                self.run("down", "--delete-data", "--yes")
        finally:
            tls.stop()
            self.wait_namespace_gone()

    def wait_namespace_gone(self, timeout: float = 180) -> None:
        self.client.request("DELETE", f"/api/v1/namespaces/{self.namespace}", ok404=True)
        deadline = time.monotonic() + timeout
        while self.client.get(f"/api/v1/namespaces/{self.namespace}") is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"namespace {self.namespace} still there after {timeout}s")
            time.sleep(0.5)


def served(cid: str) -> str:
    """A path that needs the conversation live on the server answering (it takes the lease): its events."""
    return f"/api/conversations/{cid}/events/search"


def report(measured: dict[str, object], name: str) -> None:
    """Print what a case measured (seen with ``-s``; docs/faults.md keeps the figures), then forget it."""
    print(f"\n[{name}] " + "; ".join(f"{k}: {v:.1f} s" if isinstance(v, float) else f"{k}: {v}"
                                      for k, v in measured.items()))
    measured.clear()


def new_pod_stack(project: EngineProject, kubeconfig: str, kubectl: str, random_standin: Path, work: Path,
                  tenants: list[str], namespace: str, cpu: float | None = None) -> tuple[PodStack, TlsSecret]:
    """Aim the project's ``k8s`` stack at the real node and the controller; start the TLS Secret thread."""
    project.env["KUBECONFIG"] = kubeconfig
    project.env["PATH"] = f"{random_standin}:{project.env['PATH']}"
    client = Client(kubeconfig)
    port = int((Path(kubeconfig).parent / "gateway-https-port").read_text().strip())
    path = project.stack_file(STACK)
    data = yaml.safe_load(path.read_text())
    config = data["config"]
    config["openhands:tenants"] = tenants
    if cpu is not None:
        config["openhands:resources"]["cpu"] = cpu
    kube = config["openhands:kubernetes"]
    kube.pop("storageClass", None)  # the cluster's default class (local-path)
    kube.update(namespace=namespace, ingressClass=INGRESS_CLASS, tls={"secretName": TLS_SECRET},
                nodeSelector=NODE_SELECTOR, tolerations=[TOLERATION])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    certs = make_certs(work / "tls", [kube["domain"]])
    ca, (crt, key) = certs.ca, certs.leaves[kube["domain"]]
    secret = TlsSecret(client, namespace, crt, key)
    secret.start()
    return PodStack(project, client, kubectl, kubeconfig, namespace, ca, port), secret
