"""Fixtures for tests against a real Kubernetes API server (tests/real/kubernetes/test_kube_real.py).

The cluster: the kubeconfig in ``$OPENHANDS_TEST_KUBECONFIG`` (``.ci/run`` starts one with
``scripts/kube start`` and exports it), else one this session starts with ``scripts/kube start --no-node``
when its binaries are already cached (it never builds them here: that takes tens of
minutes) and stops by PID at the end. With ``CI=true`` a missing cluster fails; elsewhere
the tests skip with one reason.

Gateway API: ``gateway_api_crds`` applies the standard-channel CRDs of the Go module
``sigs.k8s.io/gateway-api`` (downloaded through scripts/go-env's module cache) to the cluster,
so the API server validates Gateways and HTTPRoutes against their real schemas and CEL rules.

Storage: the throwaway cluster has no provisioner. A StorageClass ``openhands-test``
(``kubernetes.io/no-provisioner``, Immediate binding) and, per expected claim, a hostPath
PersistentVolume pre-bound to it (``claimRef``) let the PV controller bind each claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kube_apply import Applier, Client

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kube"
ENV = "OPENHANDS_TEST_KUBECONFIG"
STORAGE_CLASS = "openhands-test"
INGRESS_IP = "192.0.2.10"  # TEST-NET-1: the status a controller would publish; nothing listens there


@dataclass
class Cluster:
    kubeconfig: str
    client: Client
    started_dir: str | None = None  # set when this session started the cluster


def _unavailable(reason: str) -> None:
    from tests.harness.ci import unavailable  # the one CI guard

    unavailable(f"no Kubernetes API server: {reason}")


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Cluster]:
    kubeconfig = os.environ.get(ENV)
    started: str | None = None
    if not kubeconfig:
        cached = subprocess.run([str(SCRIPT), "cached"], capture_output=True, text=True)
        if cached.returncode != 0:
            _unavailable(f"set {ENV}, or build the control plane with `scripts/kube build` (tens of minutes)")
        # The API server alone (about 10 s): the real node, controller and enforcer take a minute more,
        # and the tests that need them (tests/real/kubernetes/test_kube_pods.py) start their own.
        run = subprocess.run([str(SCRIPT), "start", "--no-node"], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            pytest.fail(f"scripts/kube start failed:\n{run.stderr[-3000:]}", pytrace=False)
        kubeconfig = run.stdout.strip().splitlines()[-1]
        started = str(Path(kubeconfig).parent)
    if not Path(kubeconfig).is_file():
        _unavailable(f"{ENV}={kubeconfig} is not a file")
    client = Client(kubeconfig)
    try:
        client.request("GET", "/readyz")
    except Exception as exc:  # noqa: BLE001 - any failure means no usable server
        _unavailable(f"{kubeconfig}: the API server does not answer ({exc})")
    _storage_class(client)
    try:
        yield Cluster(kubeconfig, client, started)
    finally:
        if started:
            subprocess.run([str(SCRIPT), "stop", started], capture_output=True, timeout=120)


GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api@v1.6.3"


@pytest.fixture(scope="session")
def gateway_api_crds(kube_cluster: Cluster) -> list[str]:
    """The Gateway API standard-channel CRDs (``config/crd/standard``), applied and Established.

    Only the CRDs: the module's ValidatingAdmissionPolicy guards CRD upgrades, not the objects."""
    import time

    import yaml

    run = subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/go-env" && go_module_dir {GATEWAY_API_MODULE}'],
        capture_output=True, text=True, timeout=600,
    )
    if run.returncode != 0:
        from tests.harness.ci import unavailable  # the one CI guard

        unavailable(f"cannot get the Gateway API CRDs ({GATEWAY_API_MODULE}): {run.stderr.strip()[-500:]}")
    crds = []
    for path in sorted((Path(run.stdout.strip().splitlines()[-1]) / "config" / "crd" / "standard").glob("*.yaml")):
        crds += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    names = [crd["metadata"]["name"] for crd in crds]
    assert {"gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io"} <= set(names), names
    client = kube_cluster.client
    for crd in crds:
        client.request(
            "PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
            json.dumps(crd), content_type="application/apply-patch+yaml",
            query=[("fieldManager", "openhands-tests"), ("force", "true")],
        )
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            live = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
            if any(c["type"] == "Established" and c["status"] == "True"
                   for c in live.get("status", {}).get("conditions", [])):
                break
            assert time.monotonic() < deadline, f"CRD {name} is not Established: {live.get('status')}"
            time.sleep(0.25)
    return names


def _storage_class(client: Client) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Retain",
    }
    client.request(
        "PATCH", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}", json.dumps(body),
        content_type="application/apply-patch+yaml", query=[("fieldManager", "openhands-tests"), ("force", "true")],
    )


@dataclass
class Kube:
    """One test's view of the cluster: an applier, and what to clean up afterwards."""

    cluster: Cluster
    applier: Applier
    namespaces: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return self.cluster.client

    def namespace(self, label: str) -> str:
        """A fresh namespace name for this test (created by the render, deleted at the end)."""
        name = f"t-{label}-{uuid.uuid4().hex[:6]}"
        self.namespaces.append(name)
        return name

    storage_class: str = STORAGE_CLASS

    def volume_for(self, namespace: str, claim: str, size: str = "100Gi", access_mode: str = "ReadWriteOnce") -> str:
        """A hostPath PersistentVolume pre-bound to ``namespace/claim`` (no provisioner here)."""
        name = f"pv-{uuid.uuid4().hex[:10]}"
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"openhands.dev/test": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": [access_mode],  # the API server refuses ReadWriteOncePod with another
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": f"/tmp/openhands-kube-pv/{name}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        self.client.request("POST", "/api/v1/persistentvolumes", json.dumps(body))
        self.volumes.append(name)
        return name

    def get(self, path: str) -> dict[str, Any] | None:
        return self.client.get(path)

    def items(self, path: str) -> list[dict[str, Any]]:
        return (self.client.get(path) or {}).get("items", [])

    def cleanup(self) -> None:
        for ns in self.namespaces:
            self.client.request("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
        for pv in self.volumes:
            self.client.request("DELETE", f"/api/v1/persistentvolumes/{pv}", ok404=True)
        # Namespace deletion finishes in the background (the controller-manager empties it);
        # the next test uses other namespaces, so nothing waits for it.


@pytest.fixture
def kube(kube_cluster: Cluster) -> Iterator[Kube]:
    # The provider's endpoint settle time is 10 s (the benchmark keeps it); the tests wait
    # 3 s: what they check does not depend on how long quiet endpoints are watched.
    k = Kube(kube_cluster, Applier(kube_cluster.kubeconfig, ingress_status_ip=INGRESS_IP, settle_seconds=3.0))
    try:
        yield k
    finally:
        k.cleanup()
