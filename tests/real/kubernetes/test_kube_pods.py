"""Real pods: the ``k8s`` stack's agent servers run on a REAL kubelet (``scripts/kube start --node``).

What is real here: kube-apiserver/controller-manager/scheduler/etcd, the kubelet and kube-proxy
(one ``go build`` of k8s.io/kubernetes 1.36.3), Debian's containerd 1.6.20 (CRI) and runc 1.1.5,
the CNI bridge/host-local/portmap plugins, the agent server image under the model's
securityContext, its probes, and dynamic provisioning of its claim (the default StorageClass
``local-path``: scripts/kube's local-path-provisioner makes a ``local`` volume, so the kubelet
applies the pod's fsGroup). The node lives in a network namespace scripts/kube creates; the tests
reach pods the way a user does without an ingress: through the API server (pod proxy, exec).

The real node is tainted (so kwok keeps the scale tests): the stack sets ``kubernetes.nodeSelector:
{openhands.dev/node: real}`` and a toleration of ``openhands.dev/real-node:NoSchedule``, as a user
would for a dedicated node pool. Applied with tests/harness/kube_apply.py's Applier (the replay of
pulumi-kubernetes' apply and await).

The cluster: ``$OPENHANDS_TEST_KUBECONFIG_NODE`` (a cluster started with ``--node``), else one
this session starts with ``scripts/kube start --node`` when the binaries are cached, the image is
in Docker and we are root (netns, cgroups), stopped by PID at the end. With ``CI=true`` a missing
piece fails (tests/harness/ci.py); elsewhere the tests skip with one reason.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from components import contract
from openhands_cli.render import Rendered, render
from tests.harness.kube_apply import Applier, ApplyError, StackState
from tests.harness.real_node import NODE, NODE_SELECTOR, TOLERATION, NodeCluster, node_lock

ROOT = Path(__file__).resolve().parents[3]
STORAGE_CLASS = "local-path"  # the default class scripts/kube --node creates
PROVISIONER = "openhands.dev/local-path"
INGRESS_IP = "192.0.2.10"  # the Ingress status the applier publishes (no controller here)
TENANTS = ["alpha", "beta"]


# ------------------------------------------------------------------ helpers


def render_real(ns: str, tenants: list[str]) -> Rendered:
    # No storageClass: the claim takes the cluster's default class, as on most clusters.
    # The real node is tainted (kwok keeps the scale tests): the stack's own settings put the pods there.
    return render(
        "k8s",
        overrides={
            "tenants": tenants,
            "kubernetes.namespace": ns,
            "kubernetes.storageClass": None,
            "kubernetes.nodeSelector": NODE_SELECTOR,
            "kubernetes.tolerations": [TOLERATION],
        },
    )


def statefulset(r: Rendered, tenant: str) -> dict[str, Any]:
    (sts,) = [
        x.inputs
        for x in r.resources
        if x.type == "kubernetes:apps/v1:StatefulSet"
        and x.inputs["metadata"]["labels"]["openhands.dev/tenant"] == tenant
    ]
    return sts


def pod_name(r: Rendered, tenant: str) -> str:
    return f"{statefulset(r, tenant)['metadata']['name']}-0"


def session_key(c: NodeCluster, ns: str, r: Rendered, tenant: str) -> str:
    """The tenant's session key, read back from the Secret in the cluster."""
    (env,) = [
        e
        for e in statefulset(r, tenant)["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == contract.SESSION_KEY_ENV.format(0)
    ]
    ref = env["valueFrom"]["secretKeyRef"]
    secret = c.client.get(f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def proxy_get(c: NodeCluster, ns: str, pod: str, path: str, key: str | None = None) -> tuple[int, str]:
    """GET on the pod's port through the API server's pod proxy (its egress into the node)."""
    headers = {contract.AUTH_HEADER: key} if key is not None else {}
    url = f"/api/v1/namespaces/{ns}/pods/{pod}:{contract.PORT}/proxy{path}"
    method, full, hdrs, _, _ = c.client.api.param_serialize(
        "GET", url, header_params=headers, auth_settings=["BearerToken"]
    )
    resp = c.client.api.rest_client.pool_manager.request(method, full, headers=hdrs, timeout=30.0)
    return resp.status, resp.data.decode(errors="replace")


def exec_in(c: NodeCluster, ns: str, pod: str, script: str) -> subprocess.CompletedProcess[str]:
    return c.ctl("-n", ns, "exec", pod, "-c", "agent-server", "--", "bash", "-c", script)


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_until(what: str, check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    """A fresh namespace, and the real node to itself while the test runs.

    The node has the machine's CPUs (2 here) and a tenant requests 1 vCPU (Guaranteed QoS), so
    the tests that put real pods there take turns (a file lock, also across xdist workers), and
    each waits until its namespace is gone, its pods' CPU freed, before handing the node on."""
    with node_lock(node_cluster.kubeconfig):
        ns = f"t-pods-{uuid.uuid4().hex[:6]}"
        try:
            yield ns
        finally:
            client = node_cluster.client
            client.request("DELETE", f"/api/v1/namespaces/{ns}", ok404=True)
            deadline = time.monotonic() + 120
            while client.get(f"/api/v1/namespaces/{ns}") is not None and time.monotonic() < deadline:
                time.sleep(0.5)


# ------------------------------------------------------------------ tests


def test_two_tenants_run_the_real_server_ready_through_their_own_probes(
    node_cluster: NodeCluster, namespace: str
) -> None:
    c, ns = node_cluster, namespace
    r = render_real(ns, TENANTS)
    t0 = time.time()
    applier = Applier(c.kubeconfig, ingress_status_ip=INGRESS_IP, settle_seconds=3.0, await_timeout=240.0)
    try:
        steps = applier.apply(r, StackState())
    except ApplyError:
        pods = c.ctl("-n", ns, "describe", "pods").stdout
        raise AssertionError(f"apply failed; pods:\n{pods[-4000:]}") from None
    applied = time.time() - t0
    assert not [w for s in steps for w in s.warnings]

    keys = {t: session_key(c, ns, r, t) for t in TENANTS}
    assert keys["alpha"] != keys["beta"]
    for t in TENANTS:
        pod = c.client.get(f"/api/v1/namespaces/{ns}/pods/{pod_name(r, t)}")
        assert pod["spec"]["nodeName"] == NODE
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["restartCount"] == 0, status
        assert status["image"] == contract.DEFAULT_IMAGE  # the reference users get, loaded, not pulled
        conditions = {x["type"]: x for x in pod["status"]["conditions"]}
        started = ts(status["state"]["running"]["startedAt"])
        ready = ts(conditions["Ready"]["lastTransitionTime"])
        print(f"{t}: container start -> Ready {ready - started:.1f}s (apply to all Ready: {applied:.1f}s)")
        assert 0 <= ready - started < 120

        name = pod_name(r, t)
        assert proxy_get(c, ns, name, contract.READINESS_PROBE.path)[0] == 200
        assert proxy_get(c, ns, name, contract.AUTH_CHECK_PATH)[0] == 401
        assert proxy_get(c, ns, name, contract.AUTH_CHECK_PATH, keys[t])[0] == 200
        other = keys["beta" if t == "alpha" else "alpha"]
        assert proxy_get(c, ns, name, contract.AUTH_CHECK_PATH, other)[0] == 401


def test_the_pod_runs_as_rendered_and_its_claim_is_provisioned_and_survives_the_pod(
    node_cluster: NodeCluster, namespace: str
) -> None:
    c, ns = node_cluster, namespace
    r = render_real(ns, ["alpha"])
    Applier(c.kubeconfig, ingress_status_ip=INGRESS_IP, settle_seconds=3.0, await_timeout=240.0).apply(r, StackState())
    pod = pod_name(r, "alpha")

    # The securityContext as rendered: uid/gid 10001, read-only root, no capabilities.
    run = exec_in(
        c, ns, pod, "id -u; id -g; id -G; grep ^CapEff /proc/self/status; touch /rootfs-probe 2>&1; echo rc=$?"
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == [str(contract.UID), str(contract.GID)]
    assert "CapEff:\t0000000000000000" in lines
    assert "Read-only file system" in run.stdout and "rc=1" in run.stdout

    # The claim: dynamically provisioned (the default class), a `local` volume on the real node,
    # its root group-owned by the fsGroup so the server (uid 10001) writes its state there.
    (claim,) = (c.client.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims") or {})["items"]
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == STORAGE_CLASS
    pv = c.client.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == PROVISIONER
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [NODE]
    run = exec_in(
        c,
        ns,
        pod,
        f"stat -c '%g %A' {contract.DATA_DIR}; ls {contract.DATA_DIR}; "
        f"echo kept > {contract.DATA_DIR}/project-probe && echo wrote; "
        "touch /tmp/t && touch ~/h && echo scratch-ok",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(f"{contract.GID} drwxrws"), run.stdout
    assert "conversations" in run.stdout and "wrote" in run.stdout and "scratch-ok" in run.stdout

    # Delete the pod: the StatefulSet brings it back on the same claim, with the data.
    uid = c.client.get(f"/api/v1/namespaces/{ns}/pods/{pod}")["metadata"]["uid"]
    c.client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod}")

    def back() -> bool:
        p = c.client.get(f"/api/v1/namespaces/{ns}/pods/{pod}")
        return bool(
            p
            and p["metadata"]["uid"] != uid
            and any(x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions", []))
        )

    wait_until("the replacement pod to be Ready", back, timeout=180)
    run = exec_in(c, ns, pod, f"cat {contract.DATA_DIR}/project-probe")
    assert run.stdout.strip() == "kept", (run.stdout, run.stderr)
    assert proxy_get(c, ns, pod, contract.READINESS_PROBE.path)[0] == 200


def test_kwok_keeps_pods_that_do_not_tolerate_the_real_node(node_cluster: NodeCluster, namespace: str) -> None:
    """The scale tests' pods (no toleration) never land on the real node."""
    c, ns = node_cluster, namespace
    c.client.request(
        "POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    )
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": contract.DEFAULT_IMAGE}]},
    }
    c.client.request("POST", f"/api/v1/namespaces/{ns}/pods", json.dumps(body))
    wait_until(
        "the pod to be scheduled",
        lambda: (c.client.get(f"/api/v1/namespaces/{ns}/pods/plain") or {}).get("spec", {}).get("nodeName"),
        timeout=60,
    )
    assert c.client.get(f"/api/v1/namespaces/{ns}/pods/plain")["spec"]["nodeName"] != NODE
