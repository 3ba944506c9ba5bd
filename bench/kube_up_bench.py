"""`openhands up` / `preview` of the k8s stack against its floor, 1, 10 and 50 tenants, in one run.

    .venv/bin/python bench/kube_up_bench.py [--tenants 1 10 50] [--kubeconfig PATH]

What runs: the operator CLI (``python -m openhands_cli.main``) → the real Pulumi CLI and
pulumi-resource-kubernetes from ``scripts/engine`` → the throwaway API server from ``scripts/kube``
(kwok plays the node, so a pod is Ready once scheduled). Test-only stand-ins: the random plugin
(``scripts/random-standin``) and the Ingress status publisher (tests/harness/ingress_status.py).

The floor, per tenant count: the very objects the stack renders (``openhands_cli.render``, the same
names and specs), applied with ``kubectl apply --server-side`` and waited on with ``kubectl wait``
for the same readiness (every StatefulSet's ready replica, every Ingress's published address), in a
namespace of their own. Printed: seconds and the ratios up/floor and preview/floor (goal ≤ 1.5×,
linear in tenants), for each PULUMI_PARALLEL compared (the CLI's own variable; its default is 4 per
core, 8 here). The provider's own await settles (Service and Ingress endpoints quiet for 10 s)
are part of `up` and not of the floor: that is the price of its readiness check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openhands_cli.render import render  # noqa: E402
from tests.harness.ingress_status import IngressStatus  # noqa: E402
from tests.harness.kube_apply import Client, whole_numbers  # noqa: E402
from tests.harness.real_engine import OFFLINE_ENV  # noqa: E402

STORAGE_CLASS = "openhands-bench"


def last_line(*cmd: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def timed(cmd: list[str], **kw) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return took


class Bench:
    def __init__(self, kubeconfig: str, engine: str, standin: str, kube_bin: str, work: Path) -> None:
        self.kubeconfig, self.kubectl, self.work = kubeconfig, str(Path(kube_bin) / "kubectl"), work
        self.client = Client(kubeconfig)
        self.namespaces: list[str] = []
        self.volumes: list[str] = []
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")}
        self.env.update(OFFLINE_ENV)
        self.env.update({"PATH": f"{engine}:{standin}:{self.env['PATH']}", "KUBECONFIG": kubeconfig,
                         "PULUMI_HOME": str(work / "pulumi-home"), "NO_COLOR": "1",
                         "PYTHONPATH": str(ROOT),
                         # The throwaway cluster has no ingress controller or cert-manager for the
                         # preflight to find (the tests skip it for the same reason).
                         "OPENHANDS_SKIP_PREFLIGHT": "1"})
        self.client.request(
            "PATCH", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}", json.dumps({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": STORAGE_CLASS},
                "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}),
            content_type="application/apply-patch+yaml", query=[("fieldManager", "openhands-bench"), ("force", "true")])

    def namespace(self, label: str) -> str:
        ns = f"bench-{label}-{uuid.uuid4().hex[:6]}"
        self.namespaces.append(ns)
        return ns

    def volumes_for(self, ns: str, claims: list[str]) -> None:
        for claim in claims:
            name = f"pv-bench-{uuid.uuid4().hex[:8]}"
            self.volumes.append(name)
            self.client.request("POST", "/api/v1/persistentvolumes", json.dumps({
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                         "storageClassName": STORAGE_CLASS, "hostPath": {"path": f"/tmp/{name}"},
                         "claimRef": {"namespace": ns, "name": claim}}}))

    def project(self, n: int, ns: str) -> Path:
        project = self.work / f"project-{n}-{ns}"
        project.mkdir()
        shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
        shutil.copytree(ROOT / "stacks", project / "stacks")
        path = project / "stacks" / "Pulumi.k8s.yaml"
        data = yaml.safe_load(path.read_text())
        data["config"]["openhands:tenants"] = [f"t{i}" for i in range(n)]
        data["config"]["openhands:kubernetes"].update(namespace=ns, storageClass=STORAGE_CLASS)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return project

    def operator(self, project: Path, *args: str, parallel: int | None = None) -> float:
        env = {**self.env, "OPENHANDS_PROJECT_DIR": str(project)}
        if parallel is not None:
            env["PULUMI_PARALLEL"] = str(parallel)
        return timed([sys.executable, "-m", "openhands_cli.main", *args, "-s", "k8s"], cwd=project, env=env,
                     timeout=3600)

    def floor(self, n: int) -> float:
        ns = self.namespace(f"floor{n}")
        tenants = [f"t{i}" for i in range(n)]
        r = render("k8s", overrides={"tenants": tenants, "kubernetes.namespace": ns,
                                     "kubernetes.storageClass": STORAGE_CLASS})
        self.volumes_for(ns, list(r.outputs["stateClaims"].values()))
        out = self.work / f"floor-{n}"
        out.mkdir()
        docs = [whole_numbers(x.inputs) for x in r.resources if x.type.startswith("kubernetes:") and
                x.inputs.get("kind")]
        # Namespaces first, as the program's dependencies order them.
        docs.sort(key=lambda m: m["kind"] != "Namespace")
        (out / "all.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        publisher = IngressStatus(self.client, ns)
        publisher.start()
        try:
            k = [self.kubectl, "--kubeconfig", self.kubeconfig]
            t0 = time.monotonic()
            timed([*k, "apply", "--server-side", "--field-manager", "bench-floor", "-f", str(out / "all.yaml")])
            timed([*k, "wait", "-n", ns, "--for=jsonpath={.status.readyReplicas}=1", "statefulset", "--all",
                   "--timeout=600s"])
            timed([*k, "wait", "-n", ns, "--for=jsonpath={.status.loadBalancer.ingress[0].ip}=" + "192.0.2.10",
                   "ingress", "--all", "--timeout=600s"])
            return time.monotonic() - t0
        finally:
            publisher.stop()
            # The kwok node's 64 CPUs hold one tenant count at a time: free them before the up.
            subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, "delete", "namespace", ns, "--wait"],
                           capture_output=True, timeout=600)

    def cleanup(self) -> None:
        for ns in self.namespaces:
            self.client.request("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
        for pv in self.volumes:
            self.client.request("DELETE", f"/api/v1/persistentvolumes/{pv}", ok404=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--kubeconfig")
    ap.add_argument("--parallel", type=int, nargs="+", default=[8, 64],
                    help="PULUMI_PARALLEL values to compare (8: the CLI's default on 2 cores)")
    args = ap.parse_args()
    engine = last_line("bash", str(ROOT / "scripts" / "engine"))
    standin = last_line("bash", str(ROOT / "scripts" / "random-standin"))
    kube_bin = last_line("bash", str(ROOT / "scripts" / "kube"), "build")
    started = None
    kubeconfig = args.kubeconfig or os.environ.get("OPENHANDS_TEST_KUBECONFIG")
    if not kubeconfig:
        kubeconfig = last_line("bash", str(ROOT / "scripts" / "kube"), "start")
        started = str(Path(kubeconfig).parent)
    work = Path(tempfile.mkdtemp(prefix="kube-up-bench-"))
    bench = Bench(kubeconfig, engine, standin, kube_bin, work)
    version = bench.client.request("GET", "/version")[0]["gitVersion"]
    print(f"Kubernetes {version} (kwok node); pulumi {last_line(str(Path(engine) / 'pulumi'), 'version')}, "
          f"pulumi-resource-kubernetes from {engine}; {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'tenants':>7} {'parallel':>8} {'floor s':>8} {'up s':>7} {'up/floor':>8} {'preview s':>9} "
          f"{'preview/floor':>13} {'2nd preview s':>13}  up per tenant")
    try:
        for n in args.tenants:
            floor = bench.floor(n)
            for parallel in args.parallel:
                ns = bench.namespace(f"up{n}")
                project = bench.project(n, ns)
                r = render("k8s", overrides={"tenants": [f"t{i}" for i in range(n)], "kubernetes.namespace": ns,
                                             "kubernetes.storageClass": STORAGE_CLASS})
                bench.volumes_for(ns, list(r.outputs["stateClaims"].values()))
                publisher = IngressStatus(bench.client, ns)
                publisher.start()
                try:
                    preview = bench.operator(project, "preview", parallel=parallel)
                    up = bench.operator(project, "up", parallel=parallel)
                    again = bench.operator(project, "preview", parallel=parallel)
                    bench.operator(project, "down", "--delete-data", "--yes", parallel=parallel)
                finally:
                    publisher.stop()
                print(f"{n:>7} {parallel:>8} {floor:>8.1f} {up:>7.1f} {up / floor:>8.2f} {preview:>9.1f} "
                      f"{preview / floor:>13.2f} {again:>13.1f}  {up / n:.2f} s", flush=True)
    finally:
        bench.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        if started:
            subprocess.run(["bash", str(ROOT / "scripts" / "kube"), "stop", started], capture_output=True)


if __name__ == "__main__":
    main()
