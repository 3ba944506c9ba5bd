"""`openhands up` of the k8s stack on REAL pods until every tenant is Ready and serving through the
cluster's controller, for 1 and 3 tenants, against the floor: the agent server's own start in the same pod.

    uv run python bench/kube_pods_bench.py [--tenants 1 3] [--cpu 0.5] [--kubeconfig PATH]

What runs (tests/harness/real_pods.py, as in tests/real/kubernetes/test_kube_pods_engine.py): the operator
CLI → the real Pulumi CLI 3.276.0 and pulumi-resource-kubernetes 4.25.0 (``scripts/engine``) → the cluster
of ``scripts/kube start`` with its real node (kubelet, containerd, runc, the agent-server image), the
default StorageClass ``local-path`` and the caddy-gateway controller (IngressClass ``openhands-caddy``,
HTTPS on the host port in ``DIR/gateway-https-port``). Test-only: the random plugin stand-in and a
throwaway CA's wildcard certificate put in the namespace as soon as the stack creates it.

**resources.cpu is 0.5 here, not the shipped 1**: the real node has this machine's 2 CPUs and a tenant's
requests equal its limits, so three 1-vCPU tenants would not fit (one would stay Pending). At 0.5 vCPU the
CFS quota also slows each server's start; the floor is measured in the same pods, so the ratio compares
like with like.

Measured per tenant count, in one run:
- ``up``: the operator's ``up`` until it returns (the provider waited for each StatefulSet and Ingress);
- ``serving``: from the start of ``up`` until every tenant's ``/ready`` answers 200 through the controller;
- the floor: the server's own start, container start (pod status) → its "Uvicorn running on" log line
  (``kubectl logs --timestamps``), the slowest tenant's; and where the rest goes: until the first
  container starts (the engine, the objects, scheduling, the claim, the sandbox), the last pod Ready (the
  probes after the server listens), and after it (the provider's Service and Ingress awaits, which end
  with a 10 s quiet "settle" on the endpoints).
The 50-tenant scale figures on kwok nodes are bench/kube_up_bench.py's (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.kube_apply import Client  # noqa: E402
from tests.harness.real_engine import make_engine_project  # noqa: E402
from tests.harness.real_pods import NODE, new_pod_stack, node_lock  # noqa: E402


def last_line(*cmd: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def node_ready(kubeconfig: str) -> bool:
    try:
        node = Client(kubeconfig).get(f"/api/v1/nodes/{NODE}") or {}
    except Exception:  # noqa: BLE001 - not a usable cluster
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def one(n: int, cpu: float, kubeconfig: str, kubectl: str, engine: Path, standin: Path, work: Path) -> None:
    tenants = [f"t{i}" for i in range(n)]
    (work / f"n{n}").mkdir()
    project = make_engine_project(engine, work / f"n{n}")
    with node_lock(kubeconfig):
        ns = f"bench-pods{n}-{uuid.uuid4().hex[:6]}"
        s, tls = new_pod_stack(project, kubeconfig, kubectl, standin, work / f"n{n}", tenants, ns, cpu=cpu)
        try:
            t0_wall, t0 = time.time(), time.monotonic()
            s.ok("up", timeout=1800)
            up = time.monotonic() - t0
            serving = {t: s.wait_serving(t, budget=300) - t0 for t in tenants}
            timings = {t: s.timing(t) for t in tenants}
            restarts = sum(s.pod(t)["status"]["containerStatuses"][0]["restartCount"] for t in tenants)
        finally:
            s.run("down", "--delete-data", "--yes", timeout=1800)
            tls.stop()
            s.wait_namespace_gone(timeout=300)
    floor = max(tm.server_start for tm in timings.values())
    all_serving = max(serving.values())
    first_start = min(tm.started for tm in timings.values()) - t0_wall
    last_ready = max(tm.ready for tm in timings.values()) - t0_wall
    print(f"{n:>7} {cpu:>4} {up:>6.1f} {all_serving:>10.1f} {floor:>7.1f} {all_serving / floor:>8.2f} "
          f"{up / floor:>6.2f}  {first_start:>7.1f} {last_ready:>7.1f} "
          + " ".join(f"{tm.server_start:.1f}" for tm in timings.values()).ljust(16)
          + " " + " ".join(f"{tm.probe_lag:.1f}" for tm in timings.values()).ljust(16)
          + f" {restarts}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--cpu", type=float, default=0.5, help="resources.cpu per tenant (the node has 2 CPUs)")
    ap.add_argument("--kubeconfig")
    args = ap.parse_args()
    engine = Path(last_line("bash", str(ROOT / "scripts" / "engine")))
    standin = Path(last_line("bash", str(ROOT / "scripts" / "random-standin")))
    kube_bin = last_line("bash", str(ROOT / "scripts" / "kube"), "build")
    kubectl = str(Path(kube_bin) / "kubectl")
    started = None
    kubeconfig = args.kubeconfig or os.environ.get("OPENHANDS_TEST_KUBECONFIG_NODE")
    shared = os.environ.get("OPENHANDS_TEST_KUBECONFIG")
    if not kubeconfig and shared and node_ready(shared):
        kubeconfig = shared
    if not kubeconfig:
        kubeconfig = last_line("bash", str(ROOT / "scripts" / "kube"), "start", "--node")
        started = str(Path(kubeconfig).parent)
    if not node_ready(kubeconfig):
        sys.exit(f"{kubeconfig}: node {NODE} is not Ready (scripts/kube start, as root)")
    work = Path(tempfile.mkdtemp(prefix="kube-pods-bench-"))
    version = Client(kubeconfig).request("GET", "/version")[0]["gitVersion"]
    load = os.getloadavg()
    print(f"Kubernetes {version}, real node {NODE} (containerd 1.6.20, runc 1.1.5); controller caddy-gateway; "
          f"pulumi {last_line(str(engine / 'pulumi'), 'version')}; {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("floor = the slowest tenant's own server start (container start -> 'Uvicorn running on' in its log)")
    print("times in s from the start of `up`, except the per-tenant columns")
    print(f"{'tenants':>7} {'cpu':>4} {'up s':>6} {'serving s':>10} {'floor s':>7} {'serving/':>8} {'up/':>6}  "
          f"{'1st ctr':>7} {'last':>7} {'server start s':<16} {'serving->Ready s':<16} restarts")
    print(f"{'':>7} {'':>4} {'':>6} {'':>10} {'':>7} {'floor':>8} {'floor':>6}  {'start':>7} {'Ready':>7}")
    try:
        for n in args.tenants:
            one(n, args.cpu, kubeconfig, kubectl, engine, standin, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            subprocess.run(["bash", str(ROOT / "scripts" / "kube"), "stop", started], capture_output=True)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
