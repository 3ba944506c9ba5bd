"""Kubernetes apply-to-ready benchmark on the throwaway cluster (scripts/kube), 1 and 10 tenants.

    .venv/bin/python bench/kube_bench.py [--tenants 1 10] [--kubeconfig PATH]

NOT ``pulumi up``: the engine and the kubernetes plugin cannot be built here. The time is
that of tests/kube_apply.py, which applies what ``render("k8s")`` registers the way
pulumi-kubernetes does and waits the way its await logic does (StatefulSet ready; Service
and Ingress endpoints quiet for the provider's 10 s settle time). kwok plays the node, so a
pod is Ready as soon as it is scheduled: on a real cluster the agent server's own start
(budget: contract.STARTUP_BUDGET_SECONDS) comes on top.

Printed from one run, per tenant count: render time, apply-to-all-ready time, and the floor
the provider's await logic imposes on any program (one bare restricted pod made Ready by
kwok, plus the Service settle and the Ingress settle, which run one after the other because
the Ingress depends on the Service). The goal (issue 15): the time is the floor's, not our
program's; the ratio apply/floor says how close.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import contract  # noqa: E402
from components.render import render  # noqa: E402
from tests.kube_apply import SETTLE_SECONDS, Applier, Client, StackState  # noqa: E402

SCRIPT = ROOT / "scripts" / "kube"
STORAGE_CLASS = "openhands-bench"


def cluster(kubeconfig: str | None) -> tuple[str, str | None]:
    kubeconfig = kubeconfig or os.environ.get("OPENHANDS_TEST_KUBECONFIG")
    if kubeconfig:
        return kubeconfig, None
    t0 = time.monotonic()
    run = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, check=True)
    path = run.stdout.strip().splitlines()[-1]
    print(f"cluster started by scripts/kube in {time.monotonic() - t0:.1f} s (binaries cached)")
    return path, str(Path(path).parent)


def apply_json(client: Client, path: str, body: dict) -> None:
    client.request("PATCH", path, json.dumps(body), content_type="application/apply-patch+yaml",
                   query=[("fieldManager", "openhands-bench"), ("force", "true")])


def pod_floor(client: Client, ns: str) -> float:
    """One bare pod that passes `restricted`, from create to Ready under kwok."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "floor", "namespace": ns},
           "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": contract.UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "c", "image": "registry.invalid/none:1",
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    t0 = time.monotonic()
    client.request("POST", f"/api/v1/namespaces/{ns}/pods", json.dumps(pod))
    while True:
        p = client.get(f"/api/v1/namespaces/{ns}/pods/floor") or {}
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])):
            return time.monotonic() - t0
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--kubeconfig")
    args = ap.parse_args()
    kubeconfig, started = cluster(args.kubeconfig)
    client = Client(kubeconfig)
    version = client.request("GET", "/version")[0]["gitVersion"]
    apply_json(client, f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": STORAGE_CLASS},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"})
    namespaces, volumes = [], []
    print(f"Kubernetes {version}, kwok node; applier = tests/kube_apply.py (not `pulumi up`)")
    print(f"{'tenants':>7} {'render s':>9} {'apply s':>8} {'floor s':>8} {'apply/floor':>11}  per tenant")
    try:
        floor_ns = f"bench-floor-{uuid.uuid4().hex[:6]}"
        namespaces.append(floor_ns)
        client.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": floor_ns,
                                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
        pod = pod_floor(client, floor_ns)
        floor = pod + 2 * SETTLE_SECONDS
        for n in args.tenants:
            ns = f"bench-{n}-{uuid.uuid4().hex[:6]}"
            namespaces.append(ns)
            tenants = [f"t{i}" for i in range(n)]
            t0 = time.monotonic()
            r = render("k8s", overrides={"tenants": tenants, "kubernetes.namespace": ns,
                                         "kubernetes.storageClass": STORAGE_CLASS})
            rendered = time.monotonic() - t0
            for claim in r.outputs["stateClaims"].values():
                name = f"pv-bench-{uuid.uuid4().hex[:8]}"
                volumes.append(name)
                client.request("POST", "/api/v1/persistentvolumes", json.dumps({
                    "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                    "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                             "storageClassName": STORAGE_CLASS, "hostPath": {"path": f"/tmp/{name}"},
                             "claimRef": {"namespace": ns, "name": claim}}}))
            applier = Applier(kubeconfig, ingress_status_ip="192.0.2.10", workers=max(8, 7 * n))
            t0 = time.monotonic()
            applier.apply(r, StackState())
            applied = time.monotonic() - t0
            print(f"{n:>7} {rendered:>9.2f} {applied:>8.2f} {floor:>8.2f} {applied / floor:>11.2f}  "
                  f"{applied / n:.2f} s")
        print(f"floor = kwok pod create->Ready {pod:.2f} s + Service settle {SETTLE_SECONDS:.0f} s "
              f"+ Ingress settle {SETTLE_SECONDS:.0f} s (pulumi-kubernetes await logic)")
        print(f"on a real cluster add the agent server's start: up to {contract.STARTUP_BUDGET_SECONDS} s "
              "(the startup probe budget), once per tenant, in parallel")
    finally:
        for ns in namespaces:
            client.request("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
        for pv in volumes:
            client.request("DELETE", f"/api/v1/persistentvolumes/{pv}", ok404=True)
        if started:
            subprocess.run([str(SCRIPT), "stop", started], capture_output=True)


if __name__ == "__main__":
    main()
