"""The throwaway cluster WITH its real node, for tests that run real pods (``scripts/kube start``).

``scripts/kube start`` (root, no flag) brings up the control plane, kwok, the real node
``real-node-0`` (containerd, runc, CNI, kubelet, kube-proxy in a network namespace), the default
StorageClass ``local-path``, NetworkPolicy enforcement and ``caddy-gateway`` (GatewayClass and
IngressClass ``openhands-caddy``), see docs/real-cluster.md. This module finds such a cluster or
starts one, and holds the node's lock while a test runs pods there.

* ``node_cluster()``: a context manager yielding a :class:`NodeCluster`. The cluster is
  ``$OPENHANDS_TEST_KUBECONFIG_NODE``, else ``$OPENHANDS_TEST_KUBECONFIG`` (scripts/test's) when
  its ``real-node-0`` is Ready, else one it starts with ``scripts/kube start --node`` (cached
  binaries, root, the image in Docker) and stops by PID on exit. A missing piece fails under
  ``CI=true`` and skips elsewhere (tests/harness/ci.py).
* ``make_certs``, ``tls_secret``: a throwaway CA, ``*.<domain>`` certificates and their TLS Secret;
  ``ts``: the API's timestamps as epoch seconds.
* ``node_lock(kubeconfig)``: the node fits two 1-vCPU tenants at once, so every real-pod test
  takes turns through this file lock (one per cluster, across xdist workers; every real-pod
  module and the bench take it). Release it only after your namespaces are gone.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from components import contract
from tests.harness.kube_apply import Client

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kube"
ENV = "OPENHANDS_TEST_KUBECONFIG_NODE"
SHARED_ENV = "OPENHANDS_TEST_KUBECONFIG"
NODE = "real-node-0"
NODE_SELECTOR = {"openhands.dev/node": "real"}
TOLERATION = {"key": "openhands.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
CONTROLLER_CLASS = "openhands-caddy"  # caddy-gateway's GatewayClass and IngressClass
CONTROLLER_ADDRESS = "10.245.0.1"  # what it publishes in Gateway/Ingress status (Caddy, inside the netns)


def _unavailable(reason: str) -> None:
    from tests.harness.ci import unavailable  # the one CI guard

    unavailable(f"no real Kubernetes node: {reason}")


@dataclass
class NodeCluster:
    kubeconfig: str
    client: Client
    kubectl: str

    @property
    def dir(self) -> Path:
        return Path(self.kubeconfig).parent

    def gateway_port(self) -> int | None:
        """The host's loopback port forwarded to Caddy's 443 inside the node's namespace."""
        path = self.dir / "gateway-https-port"
        return int(path.read_text().strip()) if path.is_file() else None

    def has_controller(self) -> bool:
        return has_controller(self.client) and self.gateway_port() is not None

    def ctl(self, *args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], capture_output=True, text=True,
                              timeout=timeout, input=input)


def node_ready(client: Client) -> bool:
    node = client.get(f"/api/v1/nodes/{NODE}") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def has_controller(client: Client) -> bool:
    """The cluster has caddy-gateway's IngressClass (``scripts/kube start`` without --no-node)."""
    try:
        return client.get(f"/apis/networking.k8s.io/v1/ingressclasses/{CONTROLLER_CLASS}") is not None
    except Exception:  # noqa: BLE001 - no usable answer: treat as absent
        return False


@contextlib.contextmanager
def node_cluster(*, need_controller: bool = False) -> Iterator[NodeCluster]:
    cached = subprocess.run([str(SCRIPT), "cached"], capture_output=True, text=True)
    if cached.returncode != 0:
        _unavailable("build the cluster with `scripts/kube build` (tens of minutes cold)")
    kubectl = str(Path(cached.stdout.strip().splitlines()[-1]) / "kubectl")

    def usable(kubeconfig: str) -> bool:
        try:
            client = Client(kubeconfig)
            return node_ready(client) and (not need_controller or (
                has_controller(client) and (Path(kubeconfig).parent / "gateway-https-port").is_file()))
        except Exception:  # noqa: BLE001 - not a usable cluster: try the next one
            return False

    kubeconfig = os.environ.get(ENV)
    if not kubeconfig:
        shared = os.environ.get(SHARED_ENV)
        kubeconfig = shared if shared and Path(shared).is_file() and usable(shared) else None
    started: str | None = None
    if not kubeconfig:
        if os.geteuid() != 0:
            _unavailable("`scripts/kube start --node` needs root (a network namespace, cgroups, mounts)")
        if shutil.which("containerd") is None or not Path("/usr/lib/cni/bridge").exists():
            _unavailable("install containerd, runc and containernetworking-plugins (Debian)")
        image = subprocess.run(["docker", "image", "inspect", contract.DEFAULT_IMAGE], capture_output=True)
        if image.returncode != 0:
            _unavailable(f"{contract.DEFAULT_IMAGE} is not in Docker (scripts/docker-images builds it)")
        run = subprocess.run([str(SCRIPT), "start", "--node"], capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            pytest.fail(f"scripts/kube start --node failed:\n{run.stderr[-3000:]}", pytrace=False)
        kubeconfig = run.stdout.strip().splitlines()[-1]
        started = str(Path(kubeconfig).parent)
    try:
        cluster = NodeCluster(kubeconfig, Client(kubeconfig), kubectl)
        if not node_ready(cluster.client):
            _unavailable(f"{kubeconfig}: node {NODE} is not Ready (start the cluster with --node)")
        if need_controller and not cluster.has_controller():
            _unavailable(f"{kubeconfig}: no IngressClass {CONTROLLER_CLASS} or gateway-https-port "
                         "(start the cluster with `scripts/kube start`, not --no-node)")
        yield cluster
    finally:
        if started:
            subprocess.run([str(SCRIPT), "stop", started], capture_output=True, timeout=180)


def lock_path(kubeconfig: str) -> Path:
    """The node's lock file, one per cluster."""
    return Path("/tmp") / f"openhands-real-node-{hashlib.sha256(kubeconfig.encode()).hexdigest()[:12]}.lock"


@contextlib.contextmanager
def node_lock(kubeconfig: str) -> Iterator[float]:
    """Hold the real node; yields how long it waited for it (seconds)."""
    t0 = time.monotonic()
    with open(lock_path(kubeconfig), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield time.monotonic() - t0


def delete_namespaces(client: Client, namespaces: list[str], timeout: float = 180) -> list[str]:
    """Delete the namespaces and wait until they are gone (their pods' CPU freed); returns those left."""
    for ns in namespaces:
        with contextlib.suppress(Exception):
            client.request("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
    deadline = time.monotonic() + timeout
    left = list(namespaces)
    while left and time.monotonic() < deadline:
        left = [ns for ns in left if client.get(f"/api/v1/namespaces/{ns}") is not None]
        if left:
            time.sleep(0.5)
    return left


# ------------------------------------------------------------------ timestamps and TLS


def ts(value: str) -> float:
    """RFC 3339 (the API's, or kubectl --timestamps' nanoseconds) as epoch seconds."""
    value = value.replace("Z", "+00:00")
    if m := re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", value):
        value = f"{m.group(1)}.{m.group(2)[:6]}{m.group(3)}"
    return datetime.fromisoformat(value).timestamp()


# ------------------------------------------------------------------ TLS


@dataclass
class Certs:
    ca: Path
    ca_cn: str
    leaves: dict[str, tuple[Path, Path]]  # domain -> (crt, key)

    def der(self, domain: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.leaves[domain][0].read_text())


def make_certs(directory: Path, domains: list[str]) -> Certs:
    """A throwaway CA and, per domain, a ``*.<domain>`` server certificate it signs (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    cn = f"openhands test CA {uuid.uuid4().hex[:6]}"
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
        str(ca_key), "-out", str(ca), "-days", "2", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {}
    for domain in domains:
        key, csr, crt, ext = (directory / f"{domain}.{s}" for s in ("key", "csr", "crt", "ext"))
        ext.write_text(f"subjectAltName=DNS:*.{domain}\nextendedKeyUsage=serverAuth\n"
                       "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
            "-out", str(csr), "-subj", f"/CN=*.{domain}")
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(crt), "-days", "2", "-extfile", str(ext))
        leaves[domain] = (crt, key)
    return Certs(ca, cn, leaves)


def tls_secret(name: str, namespace: str, crt: Path, key: Path) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``crt`` and ``key``."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(crt.read_bytes()).decode(),
                     "tls.key": base64.b64encode(key.read_bytes()).decode()}}
