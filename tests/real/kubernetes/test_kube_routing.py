"""Routing and isolation on REAL pods, through the real engine and a real controller (issue 19).

``uv run openhands up`` (the operator CLI → the real Pulumi CLI 3.276.0 → pulumi-kubernetes 4.25.0)
deploys the ``k8s`` model twice, 2 tenants each, onto ``real-node-0`` of ``scripts/kube start``
(kubelet, containerd, runc, CNI, kube-proxy; NetworkPolicy enforced by kube-network-policies):

- **Ingress**: ``ingressClass: openhands-caddy`` (caddy-gateway + Caddy 2.11.9 is the controller);
- **Gateway API**: ``routing: gateway`` with a Gateway the stack creates, class ``openhands-caddy``.

Each with TLS from a Secret this test creates (``tls.secretName``: a throwaway CA and a ``*.<domain>``
certificate, openssl). Clients go where a user's go: HTTPS to ``<tenant>.<domain>`` on the controller's
loopback port (``DIR/gateway-https-port`` → Caddy's 443 in the node's namespace), SNI and the
certificate checked against the CA. Proven per routing and tenant:

1. its key gets 200, no key 401, the other tenant's key 401; the certificate served is the Secret's;
2. a WebSocket (``/sockets/bash-events``, first-frame auth) stays open across 120 s without application
   frames and then carries a bash event the test triggers; the other tenant's key is closed 4001. The
   agent server pings every 20 s (uvicorn's default), so a second socket per routing goes to an echo
   server that never pings (a probe pod behind an Ingress / a Gateway the test creates, ``silent``):
   no frame either way for 120 s, so only the controller's own idle limit counts;
3. isolation, from inside the pods (``kubectl exec``, python3.13's sockets, 5 s connects): a tenant cannot
   reach another tenant's pod or Service (same stack or the other one); a pod in the namespace the
   NetworkPolicy admits (``ingressNamespace`` / the Gateway's namespace) can; egress is open by default
   (in-cluster too) and, once restricted (``egress.allowCidrs`` + ``exceptCidrs``), refuses the
   excepted address but still allows port 53 to it (``allowDns``) and the allowed CIDR.

What it cannot prove (docs/real-cluster.md): Caddy runs as root in the node's namespace, and
kube-network-policies never filters the node's root (``meta skuid 0 accept``), so "controller to pod
allowed" here is not the NetworkPolicy's source rule at work; that rule is proven by the pod in the
admitted namespace instead. The namespace has no route out, so "the internet" is not tested.

One test on purpose: ``-n auto`` (xdist's load scheduling) would split a module's tests across
workers, and each worker would deploy everything again. The steps run in order and each failure is
collected, so one run reports every broken step. Wall time: one deployment per routing (one ``up``
after the other: four servers starting at once at 0.5 vCPU came within 20 s of the startup probe's
budget on a loaded machine), and the 120 s idle runs while the HTTPS and isolation steps run on other
connections. The operator's preflight runs for real (this cluster has what it checks).
Cleanup deletes the three namespaces and waits until they are gone (the node lock is held until then).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import contract
from components import kubernetes as k8s_model
from components.config import parse
from tests.harness.caddy_proxy import LoopbackHTTPS
from tests.harness.real_engine import EngineProject, make_engine_project, random_standin_bin
from tests.harness.real_node import (
    CONTROLLER_ADDRESS,
    CONTROLLER_CLASS,
    NODE,
    NODE_SELECTOR,
    TOLERATION,
    Certs,
    NodeCluster,
    delete_namespaces,
    make_certs,
    node_cluster,
    node_lock,
    tls_secret,
    ts,
)

pytest_plugins = ["tests.harness.real_engine"]

STACK = "k8s"
TENANTS = ["alpha", "beta"]
ROUTINGS = ["ingress", "gateway"]
# 4 tenants (2 per routing) share the node's 2 CPUs: 0.5 vCPU each (requests = limits, Guaranteed).
CPU = 0.5
TLS_SECRET = "routing-tls"
IDLE_SECONDS = 120.0  # longer than the common 60 s proxy idle default
CONNECT_TIMEOUT = 5.0  # a dropped SYN is a timeout; an admitted connect takes milliseconds, even under load
SERVE_BUDGET = 120.0
SILENT_PORT = 8081  # the `allowed` probe's WebSocket echo (no pings)
# Run as the probe pods' command (the agent-server image has python3.13 beside the server binary):
# accept and close connections on every port given; "ws:<port>" serves a WebSocket echo there that
# never pings (RFC 6455 by hand, the stdlib has no WebSocket), so its sockets can be truly silent.
LISTENER = """
import base64, hashlib, socket, sys, threading
def listen(port, handle):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
def close(c):
    c.close()
def frame(op, payload):
    return bytes([0x80 | op, len(payload)]) + payload  # payloads < 126 bytes
def echo(c):
    try:
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                return
            data += chunk
        lines = data.split(b"\\r\\n")
        key = [ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                  b"Sec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
        f = c.makefile("rb")
        while True:
            head = f.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 15, head[1] & 127
            if n == 126:
                n = int.from_bytes(f.read(2), "big")
            elif n == 127:
                n = int.from_bytes(f.read(8), "big")
            mask = f.read(4) if head[1] & 128 else bytes(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
            if op == 8:
                c.sendall(frame(8, payload)); return
            c.sendall(frame(10 if op == 9 else op, payload))
    finally:
        c.close()
for spec in sys.argv[1:]:
    ws = spec.startswith("ws:")
    threading.Thread(target=listen, args=(int(spec.removeprefix("ws:")), echo if ws else close), daemon=True).start()
threading.Event().wait()
"""
# Run inside a pod with `kubectl exec`: TCP connects, all at once, each "open" or why not.
CONNECT = """
import json, socket, sys, threading
targets, out = json.loads(sys.argv[1]), {}
def go(name, host, port):
    s = socket.socket(); s.settimeout(float(sys.argv[2]))
    try:
        s.connect((host, port)); out[name] = "open"
    except socket.timeout:
        out[name] = "timeout"
    except OSError as e:
        out[name] = "error: " + (e.strerror or repr(e))
    finally:
        s.close()
ts = [threading.Thread(target=go, args=(n, h, p)) for n, (h, p) in targets.items()]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""
SERVING_LINE = re.compile(r"Uvicorn running on ")


# ------------------------------------------------------------------ one deployment


@dataclass
class Routed:
    """One ``k8s`` stack (2 tenants) deployed with one routing, and how a client reaches it."""

    routing: str
    project: EngineProject
    cluster: NodeCluster
    namespace: str
    domain: str
    certs: Certs
    port: int
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    preflight: list[str] = field(default_factory=list)  # what `up` printed of its checks

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.project.openhands(*args, "-s", STACK, timeout=timeout)

    def names(self, tenant: str) -> dict[str, str]:
        config = yaml.safe_load(self.project.stack_file(STACK).read_text())["config"]
        cfg = parse({k.split(":", 1)[1]: json.dumps(v) for k, v in config.items() if k != "openhands:tenantKeys"},
                    set(), STACK)
        return k8s_model.names(tenant, cfg.kubernetes.object_prefix("openhands", STACK))

    def get(self, api: str, what: str) -> dict[str, Any] | None:
        return self.cluster.client.get(f"{api}/namespaces/{self.namespace}/{what}")

    def pod_name(self, tenant: str) -> str:
        return f"{self.names(tenant)['workload']}-0"

    def pod(self, tenant: str) -> dict[str, Any]:
        pod = self.get("/api/v1", f"pods/{self.pod_name(tenant)}")
        assert pod is not None, f"{self.routing}/{tenant}: no pod"
        return pod

    def service_ip(self, tenant: str) -> str:
        return self.get("/api/v1", f"services/{self.names(tenant)['service']}")["spec"]["clusterIP"]

    def read_key(self, tenant: str) -> str:
        secret = self.get("/api/v1", f"secrets/{self.names(tenant)['secret']}")
        assert secret is not None, f"{self.routing}/{tenant}: no keys Secret"
        return base64.b64decode(secret["data"][contract.SESSION_KEY_ENV.format(0)]).decode()

    def host(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))  # our CA only: verifies the issuer

    def https(self, tenant: str, path: str, key: str | None = None, method: str = "GET", body: Any = None,
              timeout: float = 10) -> tuple[int, str, bytes]:
        """(status, body, the served certificate's DER) through the controller, SNI and Host the tenant's."""
        conn = LoopbackHTTPS(self.host(tenant), self.port, context=self.context(), timeout=timeout)
        try:
            headers = {"Host": f"{self.host(tenant)}:{self.port}"}
            if key is not None:
                headers[contract.AUTH_HEADER] = key
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            peer = conn.sock.getpeercert(binary_form=True)
            return resp.status, resp.read().decode(errors="replace"), peer
        finally:
            conn.close()

    def websocket(self, stack: contextlib.ExitStack, tenant: str, key: str) -> Socket:
        """An authenticated WebSocket on the contract's check path (first-frame auth), client pings off."""
        ws = open_websocket(stack, self.port, self.host(tenant), contract.WS_CHECK_PATH, self.context())
        ws.ws.send(json.dumps(contract.ws_auth_frame(key)))
        return ws

    def wait_serving(self, budget: float = SERVE_BUDGET) -> float:
        """Until every tenant's key gets 200 through the controller; returns the monotonic time."""
        deadline = time.monotonic() + budget
        waiting = set(TENANTS)
        last: dict[str, object] = {}
        while waiting and time.monotonic() < deadline:
            for t in sorted(waiting):
                try:
                    status = self.https(t, contract.AUTH_CHECK_PATH, self.keys[t], timeout=3)[0]
                except (OSError, ssl.SSLError) as exc:
                    status = exc
                last[t] = status
                if status == 200:
                    waiting.discard(t)
            if waiting:
                time.sleep(0.1)
        assert not waiting, f"{self.routing}: not serving through the controller within {budget}s: {last}"
        return time.monotonic()

    def pod_timing(self, tenant: str) -> dict[str, float]:
        """Container start → the server's own "Uvicorn running on" line (the floor) → Ready (its probes)."""
        pod = self.pod(tenant)
        (status,) = pod["status"]["containerStatuses"]
        conditions = {c["type"]: c for c in pod["status"]["conditions"]}
        logs = self.cluster.ctl("-n", self.namespace, "logs", "--timestamps", self.pod_name(tenant),
                                "-c", "agent-server")
        serving = [ln.split(" ", 1)[0] for ln in logs.stdout.splitlines() if SERVING_LINE.search(ln)]
        started = ts(status["state"]["running"]["startedAt"])
        ready = ts(conditions["Ready"]["lastTransitionTime"])
        out = {"start_to_ready": ready - started, "restarts": status["restartCount"], "started_at": started,
               "ready_at": ready, "scheduled_at": ts(conditions["PodScheduled"]["lastTransitionTime"])}
        if serving:
            out["server_start"] = ts(serving[0]) - started
        return out


@dataclass
class Socket:
    """An open WebSocket and the pings its peer sent (counted from the client's frame log)."""

    ws: Any
    pings: list[float]


def open_websocket(stack: contextlib.ExitStack, port: int, host: str, path: str, ctx: ssl.SSLContext) -> Socket:
    """A WebSocket through the controller (127.0.0.1:port, SNI/Host ``host``) that never pings by itself."""
    import logging

    from websockets.sync.client import connect

    pings: list[float] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("< PING"):
                pings.append(time.monotonic())

    log = logging.getLogger(f"routing-ws-{uuid.uuid4().hex[:8]}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(Count())
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    ws = stack.enter_context(connect(f"wss://{host}:{port}{path}", sock=sock, ssl=ctx, server_hostname=host,
                                     open_timeout=15, close_timeout=5, ping_interval=None, logger=log))
    return Socket(ws, pings)


# ------------------------------------------------------------------ the probe pods (isolation)


def probe_pod(namespace: str, name: str, ports: list[int | str]) -> dict[str, Any]:
    """A listener on ``ports`` on the real node, in the namespace the tenants' policies admit.
    Restricted-compliant; ``ip_unprivileged_port_start=0`` (a safe sysctl) lets uid 10001 bind 53."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION], "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": contract.UID, "runAsGroup": contract.GID,
                                "seccompProfile": {"type": "RuntimeDefault"},
                                "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
            "containers": [{
                "name": "probe", "image": contract.DEFAULT_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python3.13", "-c", LISTENER, *map(str, ports)],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "readinessProbe": {"tcpSocket": {"port": ports[0]}, "periodSeconds": 1},
            }],
        },
    }


def probe_service(namespace: str, name: str, ports: list[int], app: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": app or name},
                     "ports": [{"name": f"p{p}", "port": p, "targetPort": p, "protocol": "TCP"} for p in ports]}}


def connects(c: NodeCluster, namespace: str, pod: str, container: str,
             targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    run = c.ctl("-n", namespace, "exec", pod, "-c", container, "--", "python3.13", "-c", CONNECT,
                json.dumps(targets), str(CONNECT_TIMEOUT), timeout=60)
    assert run.returncode == 0, f"exec in {namespace}/{pod} failed: {run.stderr[-2000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ setup


@dataclass
class World:
    cluster: NodeCluster
    infra: str  # the probes, the Gateway and its Secret; the namespace the tenants' policies admit
    routed: dict[str, Routed]
    probes: dict[str, str]  # name -> pod IP
    excepted_service: str
    silent: dict[str, str]  # routing -> the host of the silent echo's route
    certs: Certs
    port: int
    timings: dict[str, Any]


KINDS = {"Namespace": ("/api/v1", "namespaces"), "Secret": ("/api/v1", "secrets"), "Pod": ("/api/v1", "pods"),
         "Service": ("/api/v1", "services"), "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
         "Gateway": ("/apis/gateway.networking.k8s.io/v1", "gateways"),
         "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes")}


def create(c: NodeCluster, obj: dict[str, Any]) -> None:
    api, plural = KINDS[obj["kind"]]
    ns = obj["metadata"].get("namespace")
    path = f"{api}/namespaces/{ns}/{plural}" if ns else f"{api}/{plural}"
    c.client.request("POST", path, json.dumps(obj))


def silent_routes(namespace: str, ingress_host: str, gateway_host: str) -> list[dict[str, Any]]:
    """The `allowed` probe's silent WebSocket echo (port 8081) behind the same controller, once through
    an Ingress and once through a Gateway + HTTPRoute the test creates (named ``silent``), TLS from
    the test's Secret: sockets with no ping either way, so only the controller's own idle limit counts."""
    tls = {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": TLS_SECRET}]}
    meta = {"name": "silent", "namespace": namespace}
    backend = {"service": {"name": "silent", "port": {"number": SILENT_PORT}}}
    return [
        probe_service(namespace, "silent", [SILENT_PORT], app="allowed"),
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
         "spec": {"ingressClassName": CONTROLLER_CLASS, "tls": [{"hosts": [ingress_host], "secretName": TLS_SECRET}],
                  "rules": [{"host": ingress_host, "http": {"paths": [
                      {"path": "/", "pathType": "Prefix", "backend": backend}]}}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": meta,
         "spec": {"gatewayClassName": CONTROLLER_CLASS, "listeners": [
             {"name": "silent", "hostname": gateway_host, "port": 443, "protocol": "HTTPS", "tls": tls}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
         "spec": {"parentRefs": [{"name": "silent"}], "hostnames": [gateway_host],
                  "rules": [{"backendRefs": [{"name": "silent", "port": SILENT_PORT}]}]}},
    ]


def stack_config(routing: str, namespace: str, domain: str, infra: str, egress: dict[str, Any] | None
                 ) -> dict[str, Any]:
    """The stack file a user writes for this cluster: its controller, its node pool, its TLS Secret."""
    kube: dict[str, Any] = {"namespace": namespace, "domain": domain, "tls": {"secretName": TLS_SECRET},
                            "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION], "storageSize": "1Gi"}
    if routing == "ingress":
        # The Secret must exist in the tenants' namespace before `up`: the test creates the namespace.
        kube.update(createNamespace=False, ingressClass=CONTROLLER_CLASS, ingressNamespace=infra)
    else:
        # The stack creates the tenants' namespace, and the Gateway in `infra` (with the Secret).
        kube.update(createNamespace=True, routing="gateway",
                    gateway={"create": True, "namespace": infra, "className": CONTROLLER_CLASS})
    if egress:
        kube["egress"] = egress
    return {"config": {"openhands:model": "kubernetes", "openhands:tenants": list(TENANTS),
                       "openhands:resources": {"cpu": CPU, "memory": 2048}, "openhands:kubernetes": kube}}


@pytest.fixture
def world(pulumi_bin: Path, tmp_path: Path) -> Iterator[World]:
    with node_cluster(need_controller=True) as c, node_lock(c.kubeconfig) as waited:
        standin = random_standin_bin()
        rid = uuid.uuid4().hex[:6]
        infra, ing_ns, gw_ns = f"t-route-{rid}", f"t-route-ing-{rid}", f"t-route-gw-{rid}"
        domains = {"ingress": f"ing-{rid}.routing.test", "gateway": f"gw-{rid}.routing.test"}
        try:
            yield _setup(c, tmp_path, pulumi_bin, standin, infra, ing_ns, gw_ns, domains, waited)
        finally:
            t0 = time.monotonic()
            left = delete_namespaces(c.client, [ing_ns, gw_ns, infra])
            print(f"\ncleanup: namespaces deleted and gone in {time.monotonic() - t0:.1f}s"
                  + (f"; STILL THERE: {left}" if left else ""))


def _setup(c: NodeCluster, tmp_path: Path, pulumi_bin: Path, standin: Path, infra: str, ing_ns: str, gw_ns: str,
           domains: dict[str, str], waited: float) -> World:
    port = c.gateway_port()
    assert port is not None
    t0 = time.monotonic()
    certs = make_certs(tmp_path / "tls", list(domains.values()))
    # The admitted namespace: listeners `allowed` (8080, and the silent echo on 8081) and `excepted` (8080, 53).
    create(c, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": infra}})
    create(c, probe_pod(infra, "allowed", [8080, f"ws:{SILENT_PORT}"]))
    create(c, probe_pod(infra, "excepted", [8080, 53]))
    create(c, probe_service(infra, "excepted", [8080, 53]))
    create(c, tls_secret(TLS_SECRET, infra, *certs.leaves[domains["gateway"]]))  # a created Gateway's certificateRefs
    silent = {"ingress": f"silent-ing.{domains['gateway']}", "gateway": f"silent-gw.{domains['gateway']}"}
    for obj in silent_routes(infra, silent["ingress"], silent["gateway"]):
        create(c, obj)
    # The Ingress stack's namespace: made first (restricted, as the model labels its own), with the Secret.
    create(c, {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ing_ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    create(c, tls_secret(TLS_SECRET, ing_ns, *certs.leaves[domains["ingress"]]))

    probes: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(probes) < 2:
        for name in ("allowed", "excepted"):
            pod = c.client.get(f"/api/v1/namespaces/{infra}/pods/{name}") or {}
            ready = any(x["type"] == "Ready" and x["status"] == "True"
                        for x in pod.get("status", {}).get("conditions", []))
            if ready:
                assert pod["spec"]["nodeName"] == NODE
                probes[name] = pod["status"]["podIP"]
        if len(probes) < 2:
            assert time.monotonic() < deadline, c.ctl("-n", infra, "describe", "pods").stdout[-3000:]
            time.sleep(0.3)
    probes_ready = time.monotonic() - t0
    # The Gateway stack restricts egress: the pod network, except the `excepted` pod (DNS still allowed).
    pod_net = str(ipaddress.ip_network(f"{probes['allowed']}/24", strict=False))
    egress = {"allowCidrs": [pod_net], "exceptCidrs": [f"{probes['excepted']}/32"]}

    routed: dict[str, Routed] = {}
    for routing, ns in (("ingress", ing_ns), ("gateway", gw_ns)):
        (tmp_path / routing).mkdir()
        project = make_engine_project(pulumi_bin, tmp_path / routing)
        project.env["KUBECONFIG"] = c.kubeconfig
        project.env["PATH"] = f"{standin}:{project.env['PATH']}"
        # The preflight runs for real: this cluster has what it checks (classes, namespaces, Secrets).
        project.env.pop("OPENHANDS_SKIP_PREFLIGHT", None)
        config = stack_config(routing, ns, domains[routing], infra, egress if routing == "gateway" else None)
        project.stack_file(STACK).write_text(yaml.safe_dump(config, sort_keys=False))
        routed[routing] = Routed(routing, project, c, ns, domains[routing], certs, port)

    def up(r: Routed) -> Routed:
        start = time.monotonic()
        r.timings["up_started_at"] = time.time()
        proc = r.run("up")
        r.timings["up"] = time.monotonic() - start
        r.timings["up_returned_at"] = time.time()
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Traceback" in text:
            pods = c.ctl("-n", r.namespace, "describe", "pods").stdout
            raise AssertionError(f"{r.routing}: openhands up failed:\n{text[-6000:]}\n--- pods:\n{pods[-4000:]}")
        lines = proc.stdout.splitlines()
        first = next(i for i, ln in enumerate(lines) if ln.startswith("preflight of stack"))
        last = next(i for i, ln in enumerate(lines) if re.match(r"preflight: \d+ checks passed", ln))
        r.preflight = lines[first:last + 1]
        r.keys = {t: r.read_key(t) for t in TENANTS}
        r.timings["up_to_serving"] = r.wait_serving() - start
        return r

    # One `up` after the other: 4 pods starting at once at 0.5 vCPU on a loaded 2-core machine took
    # 100 s to the server's own start, too close to the startup probe's 120 s budget.
    for r in routed.values():
        up(r)
    timings = {"node_lock_wait": waited, "probes_ready": probes_ready}
    return World(c, infra, routed, probes, "excepted", silent, certs, port, timings)


# ------------------------------------------------------------------ the test


class Steps:
    """Run each step; collect its failure and go on, so one run reports every broken step."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - reported at the end, by step
            self.failed.append(f"[{name}] {type(exc).__name__}: {exc}")
            print(f"step {name}: FAILED after {time.monotonic() - t0:.1f}s: {exc}")
        else:
            print(f"step {name}: ok ({time.monotonic() - t0:.1f}s)")


def test_ingress_and_gateway_route_https_and_idle_websockets_per_tenant_and_tenants_are_isolated(
    world: World,
) -> None:
    w, c = world, world.cluster
    ing, gw = w.routed["ingress"], w.routed["gateway"]
    steps = Steps()
    other = {"alpha": "beta", "beta": "alpha"}

    # ---- measurements (printed, not asserted)
    print(f"\nnode lock waited {w.timings['node_lock_wait']:.1f}s; probe pods Ready {w.timings['probes_ready']:.1f}s")
    for r in w.routed.values():
        pods = {t: r.pod_timing(t) for t in TENANTS}
        print(f"{r.routing}: `openhands up` {r.timings['up']:.1f}s; up -> all {len(TENANTS)} tenants serving "
              f"through the controller {r.timings['up_to_serving']:.1f}s ({CPU} vCPU each)")
        t0 = r.timings["up_started_at"]
        for t, p in pods.items():
            floor = f"server's own start {p['server_start']:.1f}s, " if "server_start" in p else ""
            print(f"    {t}: container start -> {floor}Ready {p['start_to_ready']:.1f}s, restarts {p['restarts']}; "
                  f"from `up`'s start: scheduled {p['scheduled_at'] - t0:.0f}s, container started "
                  f"{p['started_at'] - t0:.0f}s, Ready {p['ready_at'] - t0:.0f}s, `up` returned "
                  f"{r.timings['up_returned_at'] - t0:.0f}s (API timestamps: whole seconds)")
        print("    " + "\n    ".join(r.preflight))

    # ---- 0. the routing objects as the controller reports them
    with steps.step("status"):
        for t in TENANTS:
            ingress = ing.get("/apis/networking.k8s.io/v1", f"ingresses/{ing.names(t)['ingress']}")
            assert ingress["spec"]["ingressClassName"] == CONTROLLER_CLASS
            assert ingress["status"]["loadBalancer"]["ingress"] == [{"ip": CONTROLLER_ADDRESS}], ingress["status"]
            route = gw.get("/apis/gateway.networking.k8s.io/v1", f"httproutes/{gw.names(t)['http_route']}")
            assert route is not None, f"gateway/{t}: no HTTPRoute"
            (parent,) = route["status"]["parents"]
            conds = {x["type"]: x["status"] for x in parent["conditions"]}
            assert conds.get("Accepted") == "True" and conds.get("ResolvedRefs") == "True", parent
        gateway = c.client.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{w.infra}/gateways/openhands-{STACK}")
        assert gateway is not None, "the stack's Gateway is missing"
        conds = {x["type"]: x["status"] for x in gateway["status"]["conditions"]}
        assert conds.get("Accepted") == "True" and conds.get("Programmed") == "True", gateway["status"]
        assert [a["value"] for a in gateway["status"]["addresses"]] == [CONTROLLER_ADDRESS]
        assert sorted((li["name"], li["attachedRoutes"]) for li in gateway["status"]["listeners"]) == [
            (t, 1) for t in TENANTS]

    with contextlib.ExitStack() as stack:
        # ---- 2a. WebSockets opened first: their idle clock runs while the next steps use other connections
        sockets: dict[str, Socket] = {}
        opened = time.monotonic()
        with steps.step("websocket-open"):
            sockets = _open_websockets(w, stack)
            opened = time.monotonic()  # since then none of them carried an application frame

        # ---- 1. HTTPS per routing and tenant
        for r in w.routed.values():
            with steps.step(f"https-{r.routing}"):
                want = r.certs.der(r.domain)
                for t in TENANTS:
                    status, _, peer = r.https(t, contract.AUTH_CHECK_PATH, r.keys[t])
                    assert status == 200, f"{r.routing}/{t}: own key -> {status}"
                    assert hashlib.sha256(peer).hexdigest() == hashlib.sha256(want).hexdigest(), \
                        f"{r.routing}/{t}: the served certificate is not the Secret's"
                    assert r.https(t, contract.AUTH_CHECK_PATH)[0] == 401, f"{r.routing}/{t}: no key"
                    assert r.https(t, contract.AUTH_CHECK_PATH, r.keys[other[t]])[0] == 401, \
                        f"{r.routing}/{t}: the other tenant's key was accepted"
                    assert r.https(t, contract.READINESS_PROBE.path)[0] == 200
                # The issuer is our CA (the handshake verified against it alone); its name, for the record.
                conn = LoopbackHTTPS(r.host("alpha"), r.port, context=r.context(), timeout=10)
                conn.connect()
                issuer = dict(x[0] for x in conn.sock.getpeercert()["issuer"])
                conn.close()
                assert issuer["commonName"] == r.certs.ca_cn

        # ---- 3. isolation, from inside the pods
        with steps.step("isolation"):
            ip = {(r.routing, t): r.pod(t)["status"]["podIP"] for r in w.routed.values() for t in TENANTS}
            svc = {(r.routing, t): r.service_ip(t) for r in w.routed.values() for t in TENANTS}
            exc_svc = c.client.get(f"/api/v1/namespaces/{w.infra}/services/{w.excepted_service}")["spec"]["clusterIP"]
            port = contract.PORT
            plans: dict[str, tuple[str, str, str, dict[str, tuple[tuple[str, int], str]]]] = {
                # a tenant (default egress: open) -> the other tenants; and in-cluster egress
                "ingress/alpha": (ing.namespace, ing.pod_name("alpha"), "agent-server", {
                    "same stack: beta's pod": ((ip["ingress", "beta"], port), "refused"),
                    "same stack: beta's Service": ((svc["ingress", "beta"], port), "refused"),
                    "other stack: alpha's pod": ((ip["gateway", "alpha"], port), "refused"),
                    "other stack: beta's Service": ((svc["gateway", "beta"], port), "refused"),
                    "egress open by default: excepted:8080": ((w.probes["excepted"], 8080), "open"),
                }),
                # a tenant whose egress is restricted to the pod CIDR minus `excepted`, DNS allowed
                "gateway/alpha": (gw.namespace, gw.pod_name("alpha"), "agent-server", {
                    "same stack: beta's pod": ((ip["gateway", "beta"], port), "refused"),
                    "same stack: beta's Service": ((svc["gateway", "beta"], port), "refused"),
                    "other stack: beta's pod": ((ip["ingress", "beta"], port), "refused"),
                    "egress allowCidrs: allowed:8080": ((w.probes["allowed"], 8080), "open"),
                    "egress exceptCidrs: excepted:8080": ((w.probes["excepted"], 8080), "refused"),
                    "egress exceptCidrs, via its Service: 8080": ((exc_svc, 8080), "refused"),
                    "allowDns: excepted:53": ((w.probes["excepted"], 53), "open"),
                    "allowDns, via its Service: 53": ((exc_svc, 53), "open"),
                }),
                # a pod in the namespace both stacks' policies admit (ingressNamespace / the Gateway's)
                "admitted namespace": (w.infra, "allowed", "probe", {
                    "ingress stack: alpha's pod": ((ip["ingress", "alpha"], port), "open"),
                    "ingress stack: beta's Service": ((svc["ingress", "beta"], port), "open"),
                    "gateway stack: alpha's pod": ((ip["gateway", "alpha"], port), "open"),
                    "gateway stack: beta's Service": ((svc["gateway", "beta"], port), "open"),
                }),
            }

            def run(item: tuple[str, tuple[str, str, str, dict]]) -> tuple[str, dict[str, str], float]:
                source, (ns, pod, container, targets) = item
                t0 = time.monotonic()
                got = connects(c, ns, pod, container, {name: list(addr) for name, (addr, _) in targets.items()})
                return source, got, time.monotonic() - t0

            with ThreadPoolExecutor(len(plans)) as pool:
                results = list(pool.map(run, plans.items()))
            wrong = []
            for source, got, took in results:
                print(f"isolation from {source} ({took:.1f}s):")
                for name, (_, want) in plans[source][3].items():
                    seen = got[name]
                    ok = seen == "open" if want == "open" else seen == "timeout"
                    print(f"    {'ok  ' if ok else 'FAIL'} {name}: {seen} (want {want})")
                    if not ok:
                        wrong.append(f"{source} -> {name}: {seen}, want {want}")
            assert not wrong, wrong

        # ---- 2b. the WebSockets after IDLE_SECONDS: still open, and they still carry data
        if not sockets:
            steps.failed.append("[websocket-idle] not run: the sockets did not open")
        else:
            with steps.step(f"websocket-idle-{IDLE_SECONDS:.0f}s"):
                _websockets_after_idle(w, sockets, opened)

    if steps.failed:
        pytest.fail("\n".join(steps.failed), pytrace=False)


def _open_websockets(w: World, stack: contextlib.ExitStack) -> dict[str, Socket]:
    """Per routing: each tenant's agent-server socket (authenticated; the server stays silent), the
    other tenant's key refused with 4001, and the silent echo's socket (no pings either way)."""
    from websockets.exceptions import ConnectionClosed

    sockets: dict[str, Socket] = {}
    for r in w.routed.values():
        for t in TENANTS:
            s = r.websocket(stack, t, r.keys[t])
            with pytest.raises(TimeoutError):  # a good key gets no reply: the socket stays open
                s.ws.recv(timeout=1)
            sockets[f"{r.routing}/{t}"] = s
        wrong = r.websocket(stack, "alpha", r.keys["beta"])
        with pytest.raises(ConnectionClosed) as closed:
            wrong.ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == contract.WS_AUTH_FAILED_CLOSE_CODE, \
            f"{r.routing}: the other tenant's key on the socket: {closed.value}"
        echo = open_websocket(stack, w.port, w.silent[r.routing], "/", ssl.create_default_context(
            cafile=str(w.certs.ca)))
        echo.ws.send("before")
        assert echo.ws.recv(timeout=10) == "before"
        sockets[f"{r.routing}/silent-echo"] = echo
    return sockets


def _reloads(w: World, since: float, until: float) -> int:
    """How many times caddy-gateway loaded a new Caddy config in [since, until] (wall clock): any route
    change on the cluster (another test's Ingress) reloads Caddy, which must not close open sockets."""
    log = w.cluster.dir / "logs" / "caddy-gateway.log"
    if not log.is_file():
        return -1
    lo, hi = (time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t)) for t in (since, until))
    return sum(1 for ln in log.read_text(errors="replace").splitlines()
               if "caddy: loaded" in ln and lo <= ln[:19] <= hi)


def _websockets_after_idle(w: World, sockets: dict[str, Socket], opened: float) -> None:
    from websockets.exceptions import ConnectionClosed

    wall_opened = time.time() - (time.monotonic() - opened)
    remaining = IDLE_SECONDS - (time.monotonic() - opened)
    if remaining > 0:
        time.sleep(remaining)
    idle = time.monotonic() - opened
    reloads = _reloads(w, wall_opened, time.time())
    problems = []
    for name, s in sockets.items():
        try:
            msg = s.ws.recv(timeout=0.05)
            problems.append(f"{name}: unexpected frame during the idle: {msg!r:.200}")
        except TimeoutError:
            pass  # nothing arrived, and it is still open
        except ConnectionClosed as exc:
            problems.append(f"{name}: closed during {idle:.0f}s idle (code {exc.rcvd.code if exc.rcvd else None})")
    assert not problems, problems
    pings = {name: len(s.pings) for name, s in sockets.items()}

    marker = uuid.uuid4().hex[:8]
    for name, s in sockets.items():
        routing, t = name.split("/")
        if t == "silent-echo":
            s.ws.send(f"after-{marker}")
            assert s.ws.recv(timeout=10) == f"after-{marker}", name
        else:
            # The agent server's socket carries the bash event the test triggers now (REST, same host).
            r = w.routed[routing]
            text = f"ws-{routing}-{t}-{marker}"
            status, body, _ = r.https(t, "/api/bash/start_bash_command", r.keys[t], method="POST",
                                      body={"command": f"echo {text}"})
            assert status == 200, f"{name}: start_bash_command -> {status} {body[:300]}"
            deadline = time.monotonic() + 30
            frames: list[Any] = []
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{name}: no bash output with {text!r} on the socket; got {frames[-5:]}"
                frame = json.loads(s.ws.recv(timeout=left))
                frames.append(frame)
                if text in (frame.get("stdout") or ""):
                    break
        s.ws.close()  # a clean close by us
        assert s.ws.close_code == 1000, f"{name}: close code {s.ws.close_code}"
    print(f"websockets: {len(sockets)} open across {idle:.1f}s without application frames, then each carried "
          f"data and closed 1000; pings the peer sent during that time: {pings}; Caddy config reloads meanwhile: "
          f"{reloads}")
    assert all(n == 0 for name, n in pings.items() if name.endswith("silent-echo")), pings
