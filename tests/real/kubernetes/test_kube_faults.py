"""Faults and load on REAL pods (issue 21, the cases that apply to Kubernetes), as a user sees them.

One ``uv run openhands up`` of the ``k8s`` stack with two tenants onto ``real-node-0`` of ``scripts/kube
start`` (tests/harness/real_pods.py: the real engine and provider, kubelet + containerd + runc, the
controller caddy-gateway + Caddy 2.11.9 routing HTTPS to each tenant through its Ingress). Clients go
where a user's go: HTTPS to ``<tenant>.<domain>`` on the controller's port, with the tenant's key.
Each tenant stores a secret and opens a conversation, then, in order:

1. **load** (case 1): 5 clients per tenant (authenticated REST calls in a loop, one WebSocket each),
   15 s through the controller: no error, every WebSocket held, nothing lost;
2. **crash** (case 4): the agent server of ``alpha`` SIGKILLed by PID on the node (its process in the
   pod's container, found through the container's cgroup; not a pod delete) while ``beta`` is under
   load: beta sees no error; alpha's container is restarted in the same pod (restartCount + 1, exit
   137), serves again, and its secret is served at once. Then a second crash, minutes later: the kubelet
   waits out its CrashLoopBackOff first. Kubernetes keeps the server's conversation leases (45 s); the
   pod's one PID namespace (``shareProcessNamespace``) gives the restarted server a new PID, so it sees
   the lease's owner is dead and takes the conversation over at once. Asserted each time: a new, higher
   PID, no 404, the conversation served within 5 s of ``/ready``; printed: the PIDs and the times;
3. **an OOM kill**: alpha's server made the OOM killer's choice and memory eaten in its container up
   to the module's 768 MiB limit: the container restarts in the same pod, ``OOMKilled``, nothing lost;
4. **rotation under load** (case 2): ``openhands rotate`` with both tenants under load, the clients
   holding the old keys: every pod rolls, each tenant fails only inside its own restart window and only
   as "no server", and everything stored is served after with the new keys and the old ones;
5. **one tenant changed under load** (case 2): alpha's session key replaced through ``tenantKeys``
   (the old key kept as the previous one) and ``openhands up``, with both tenants under load: only
   alpha's pod rolls; alpha's calls fail only inside its own restart window and only as "no server"
   (502/503, dropped connections; never 401/404/500); beta sees no error and keeps its WebSockets;
   nothing is lost;
6. **full volume** (case 5): the claims ask 32Mi. alpha's volume is local-path's (a directory: it holds
   more than its claim); beta's claim is bound to a test-made PersistentVolume on a 32 MiB tmpfs (a
   filesystem of the claim's size, as a CSI driver provisions): filled until ENOSPC, writes answer 500,
   reads work, the pod stays Ready and is not restarted, alpha writes as usual, and freeing space
   recovers at once.

The proxy's death (case 6) is the user's ingress controller on Kubernetes, not the stack's: not tested
here (docs/faults.md says what applies).

Recovery times are printed (``-s``); docs/faults.md holds the figures. Root is needed for the tmpfs and to
signal the server by its host PID. The module holds the node lock from before ``up`` until its namespace
is gone. Without a node cluster, engine, stand-in or root: FAIL under CI=true, one skip reason elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from components import contract
from tests.harness import real_pods
from tests.harness.ci import unavailable
from tests.harness.load_client import LoadResult, Target, load
from tests.harness.real_engine import make_engine_project, pulumi_bin, random_standin_bin  # noqa: F401 - fixture
from tests.harness.real_node import NodeCluster, ts
from tests.harness.real_pods import NODE, STACK, PodStack, new_pod_stack, node_lock, served

CRASHED = "alpha"  # crashed (case 4), OOM-killed, then its keys changed (case 2)
SMALL = "beta"  # on the size-capped volume (case 5)
TENANTS = [CRASHED, SMALL]
SECRET = "GITHUB_TOKEN"
LEASE_TTL_SECONDS = 45  # the server's OH_LEASE_TTL_SECONDS default; the Kubernetes model keeps it
STORAGE = "32Mi"  # every claim's request (storageSize)
SMALL_MIB = 32  # beta's filesystem
CLIENTS = 5
# What a client sees while no server is behind the route (never 401, 404 or 500).
NO_SERVER = (": 502", ": 503", "ConnectionLost", "ConnectionResetError", "ConnectionRefusedError",
             "IncompleteReadError", "BrokenPipeError", "TimeoutError", "websocket: ")
MEMORY_MIB = 768  # each server's memory request and limit (Guaranteed): an idle server holds about 300 MiB
OFFSET = time.time() - time.monotonic()  # monotonic -> epoch
MEASURED: dict[str, object] = {}


def secret_value(tenant: str) -> str:
    return f"ghp_kube_fault_{tenant}_0123456789"


# ------------------------------------------------------------------ a size-capped volume for beta


class SmallVolume:
    """A tmpfs of ``SMALL_MIB`` MiB on the host (the node shares its mounts) and a ``local``
    PersistentVolume on it, pre-bound (``claimRef``) to the claim the StatefulSet will make: the PV
    controller binds the claim to it instead of local-path provisioning a directory. Retain: the test
    deletes it, then unmounts."""

    def __init__(self, s: PodStack, directory: Path, claim: str) -> None:
        self.s, self.dir, self.claim = s, directory, claim
        self.name = f"{s.namespace}-{SMALL}-small"
        self.mounted = False

    def create(self) -> None:
        self.dir.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_MIB}m,mode=0755", "tmpfs", str(self.dir)],
                       check=True, capture_output=True, timeout=30)
        self.mounted = True
        pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": self.name},
              "spec": {"capacity": {"storage": STORAGE}, "accessModes": ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local-path",
                       "volumeMode": "Filesystem", "local": {"path": str(self.dir)},
                       "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                                    "namespace": self.s.namespace, "name": self.claim},
                       "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}}}
        self.s.client.request("POST", "/api/v1/persistentvolumes", json.dumps(pv))

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.s.client.request("DELETE", f"/api/v1/persistentvolumes/{self.name}", ok404=True)
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def stack(node_cluster: NodeCluster, pulumi_bin: Path, tmp_path_factory) -> Iterator[PodStack]:  # noqa: F811
    if os.geteuid() != 0:
        unavailable("the Kubernetes fault tests need root (a tmpfs for the size-capped volume, and "
                    "SIGKILL to the agent server by its PID on the node)")
    standin = random_standin_bin()
    work = tmp_path_factory.mktemp("kube-faults")
    project = make_engine_project(pulumi_bin, work)
    with node_lock(node_cluster.kubeconfig):
        ns = f"t-kfault-{uuid.uuid4().hex[:6]}"
        s, tls = new_pod_stack(project, node_cluster.kubeconfig, node_cluster.kubectl, standin, work, TENANTS, ns)
        data = s.data()
        data["config"]["openhands:kubernetes"]["storageSize"] = STORAGE
        data["config"]["openhands:resources"]["memory"] = MEMORY_MIB
        s.write(data)
        small = SmallVolume(s, work / "small-volume", s.names(SMALL)["claim"])
        try:
            small.create()
            t0 = time.monotonic()
            s.ok("up")
            MEASURED["openhands up (2 tenants) -> returned"] = time.monotonic() - t0
            # `up` returns once the pods are Ready; the controller may route them a moment later (one clean-clone
            # run got a 502 on the first call), as in the other real-pod modules.
            for t in TENANTS:
                s.wait_serving(t)
            MEASURED["-> every tenant served through the controller"] = time.monotonic() - t0
            assert s.claim(SMALL)["spec"]["volumeName"] == small.name, "beta's claim is not on the small volume"
            yield s
        finally:
            try:
                s.tear_down(tls)
            finally:
                small.remove()


# ------------------------------------------------------------------ helpers


def report(name: str) -> None:
    real_pods.report(MEASURED, name)


def store(s: PodStack) -> dict[str, str]:
    """Per tenant: a stored secret and a live conversation (the server holds its lease)."""
    ids = {}
    for t in TENANTS:
        key = s.key(t)
        status, body = s.https(t, "/api/settings/secrets", key, method="PUT",
                               body={"name": SECRET, "value": secret_value(t)})
        assert status == 200, body
        status, body = s.new_conversation(t, key)
        assert status == 201, f"{t}: {status} {body[:300]}"
        ids[t] = json.loads(body)["id"]
    return ids


def assert_state(s: PodStack, stored: dict[str, str], tenants: list[str] = TENANTS, key_of=None) -> None:
    for t in tenants:
        key = (key_of or s.key)(t)
        assert s.https(t, f"/api/settings/secrets/{SECRET}", key) == (200, secret_value(t))
        status, body = s.https(t, served(stored[t]), key)
        assert status == 200, f"{t}: conversation {stored[t]} -> {status} {body[:200]}"


def targets(s: PodStack, tenants: list[str], stored: dict[str, str], keys: dict[str, str] | None = None) -> list:
    """Load targets through the controller: loopback port, SNI and Host the tenant's, the test's CA."""
    ctx = ssl.create_default_context(cafile=str(s.ca))
    return [Target(t, "127.0.0.1", s.gateway_port, s.host(t), (keys or {}).get(t) or s.key(t), ctx, stored[t])
            for t in tenants]


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()), daemon=True)
    thread.start()
    return thread, out


def assert_no_errors(result: LoadResult, tenant: str, label: str) -> None:
    """No failed call and every WebSocket held to the end. A GET that found its idle keep-alive connection
    closed by the controller (caddy-gateway reloads Caddy when its config changes: other tests' routes,
    and see docs/faults.md) is resent once on a new connection, as browsers do (tests/harness/load_client.py)."""
    stats = result.per_target[tenant]
    assert stats.errors == 0, f"{label}: {tenant} saw {stats.errors} error(s): {stats.error_samples[:10]}"
    assert stats.ws_failed == 0 and stats.ws_opened == CLIENTS, (tenant, stats.ws_opened, stats.ws_failed)


def server_process(s: PodStack, tenant: str) -> tuple[int, int]:
    """(host PID, PID in the container) of the tenant's agent server: the process in its container's
    cgroup (the kubelet's cgroup path ends in the container ID) that runs the server, tini's child."""
    (status,) = s.pod(tenant)["status"]["containerStatuses"]
    cid = status["containerID"].split("://", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if cid not in (proc / "cgroup").read_text():
                continue
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            nspid = [ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("NSpid:")]
        except OSError:
            continue
        if cmd[0] != b"tini" and any(b"openhands-agent-server" in c for c in cmd):
            return int(proc.name), int(nspid[0].split()[-1])
    raise AssertionError(f"{tenant}: no agent-server process in container {cid[:12]} on this host")


def wait_conversation(s: PodStack, tenant: str, cid: str, key: str, budget: float) -> tuple[float, list[int]]:
    """Monotonic time the conversation is first served, and the statuses before: only 404 (its lease still
    held by the dead server) or "no server" (0: no connection, 502, 503) may come."""
    deadline = time.monotonic() + budget
    seen: list[int] = []
    while True:
        try:
            status, body = s.https(tenant, served(cid), key, timeout=5)
        except OSError:
            status, body = 0, ""
        if status == 200:
            return time.monotonic(), seen
        seen.append(status)
        assert status in (0, 404, 502, 503), f"{tenant}: {status} {body[:300]}"
        assert time.monotonic() < deadline, f"{tenant}: conversation not served within {budget}s ({sorted(set(seen))})"
        time.sleep(0.5)


# ------------------------------------------------------------------ 1. load


def load_case(s: PodStack, stored: dict[str, str]) -> None:
    result = load(targets(s, TENANTS, stored), clients=CLIENTS, duration=15, think=0.1, timeout=30)
    MEASURED["2 tenants x 5 clients + 5 WebSockets, 15 s, through the controller"] = result.summary()
    for t in TENANTS:
        assert_no_errors(result, t, "load")
        assert len(result.per_target[t].latencies) >= CLIENTS * 20, (t, len(result.per_target[t].latencies))
    assert_state(s, stored)
    report("load")


# ------------------------------------------------------------------ 2. an agent server crashes


def crash(s: PodStack, stored: dict[str, str], label: str) -> float:
    """SIGKILL the tenant's agent server by its PID on the node (a crash, not a pod delete), then wait
    until it serves again; asserts the restart in place and the lease taken over, records the times."""
    a = CRASHED
    pod = s.pod(a)
    uid, before = pod["metadata"]["uid"], pod["status"]["containerStatuses"][0]["restartCount"]
    host_pid, pid = server_process(s, a)
    t0 = time.monotonic()
    os.kill(host_pid, signal.SIGKILL)  # as the kernel would (OOM, a segfault)
    ready = s.wait_serving(a, budget=240)
    assert s.https(a, f"/api/settings/secrets/{SECRET}", s.key(a)) == (200, secret_value(a))  # at once
    conversation, seen = wait_conversation(s, a, stored[a], s.key(a), budget=LEASE_TTL_SECONDS + 60)
    pod = s.pod(a)
    (status,) = pod["status"]["containerStatuses"]
    assert pod["metadata"]["uid"] == uid, "the pod was replaced: a crash restarts the container in place"
    assert status["restartCount"] == before + 1, status
    assert status["lastState"]["terminated"]["exitCode"] == 137, status["lastState"]  # 128 + SIGKILL, via tini
    _, new_pid = server_process(s, a)
    started = ts(status["state"]["running"]["startedAt"]) - (t0 + OFFSET)
    MEASURED[f"{label}: kill -> container started (kubelet, 1 s resolution)"] = started
    MEASURED[f"{label}: kill -> /ready through the controller"] = ready - t0
    MEASURED[f"{label}: kill -> the conversation served"] = conversation - t0
    MEASURED[f"{label}: 404s before it was served"] = seen.count(404)
    MEASURED[f"{label}: server PID in its container before/after"] = f"{pid}/{new_pid}"
    assert_taken_over(pid, new_pid, ready, conversation, seen)
    return t0


def assert_taken_over(pid: int, new_pid: int, ready: float, conversation: float, seen: list[int]) -> None:
    """The restarted server took the dead one's conversation lease over at once. The lease names its owner
    by hostname (the pod's, the same after a container restart) and PID; the pod's one PID namespace
    (``shareProcessNamespace``) outlives the container, so the new server never gets the dead one's PID and
    sees the owner is gone. Without it the new PID was often the same (6-8 in a fresh namespace), and the
    conversation answered 404 until the 45 s lease expired."""
    assert new_pid > pid, (pid, new_pid)
    assert 404 not in seen and conversation - ready <= 5, (conversation - ready, sorted(set(seen)))


def crash_case(s: PodStack, stored: dict[str, str]) -> None:
    """alpha crashes while beta is under load; then once more (a second crash within minutes)."""
    stop = threading.Event()
    thread, out = in_background(lambda: load(targets(s, [SMALL], stored), clients=CLIENTS, duration=120,
                                             think=0.1, timeout=30, stop=stop))
    try:
        time.sleep(2)
        crash(s, stored, "crash")
    finally:
        stop.set()
        thread.join()
    result = out["result"]
    MEASURED[f"{SMALL} under load meanwhile"] = result.summary()
    assert_no_errors(result, SMALL, "crash")  # the other tenant never noticed
    assert_state(s, stored)
    report("crash")
    # A second crash: the kubelet waits out its CrashLoopBackOff (10 s after one restart) before it starts
    # the container again.
    crash(s, stored, "second crash")
    assert_state(s, stored)
    report("second crash")


# ------------------------------------------------------------------ an operator command under load


def run_under_load(s: PodStack, stored: dict[str, str], keys: dict[str, str], command: str,
                   rolled: list[str]) -> tuple[str, float, float, dict[str, float], LoadResult]:
    """``openhands <command>`` while both tenants are under load (the clients holding ``keys``), then wait
    until each ``rolled`` tenant serves again through the controller; the load goes on 3 s more. Returns
    the command's output, when it started and returned, when each rolled tenant served again, the load."""
    stop = threading.Event()
    thread, out = in_background(lambda: load(targets(s, TENANTS, stored, keys=keys), clients=CLIENTS, duration=300,
                                             think=0.1, timeout=30, stop=stop))
    time.sleep(3)
    t0 = time.monotonic()
    try:
        text = s.ok(command)
        returned = time.monotonic()
        back = {t: s.wait_serving(t, budget=60) for t in rolled}
        time.sleep(3)
    finally:
        stop.set()
        thread.join()
    assert "rollout: every tenant's pod runs the applied spec and is Ready" in text
    return text, t0, returned, back, out["result"]


def assert_failed_only_in_its_restart(result: LoadResult, tenant: str, t0: float, back: float) -> list[float]:
    """The tenant's calls failed only as "no server" (never 401/404/500) and only between the command's
    start and its server serving again; returns the failed calls' times (a dropped WebSocket is found, and
    recorded, when the run ends, so it is not among them)."""
    stats = result.per_target[tenant]
    kinds = [x for x in stats.error_samples if not any(k in x for k in NO_SERVER)]
    assert not kinds, f"{tenant}: failures other than 'no server': {kinds}"
    calls = stats.error_times[:len(stats.error_times) - stats.ws_failed]
    assert not calls or (min(calls) >= t0 - 1 and max(calls) <= back + 1), \
        (tenant, "failed outside its restart", [round(x - t0, 1) for x in calls[:5]], round(back - t0, 1))
    assert len(stats.latencies) > 0
    return calls


# ------------------------------------------------------------------ 3. an OOM kill


def oom_case(s: PodStack, stored: dict[str, str]) -> None:
    """alpha's container reaches its memory limit: the kernel kills the server, the kubelet restarts the
    container in the same pod (reason OOMKilled), and nothing stored is lost. As on Docker, the test makes
    the server the OOM killer's choice (``oom_score_adj`` 1000, from the node: a Guaranteed pod's processes
    all get -997, so a tool the agent runs that eats memory is the one killed, and the server lives on), then
    runs ``tail /dev/zero`` in the container (a line that never ends) until the limit is reached."""
    a = CRASHED
    pod = s.pod(a)
    uid, before = pod["metadata"]["uid"], pod["status"]["containerStatuses"][0]["restartCount"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == f"{MEMORY_MIB}Mi"
    host_pid, pid = server_process(s, a)
    Path(f"/proc/{host_pid}/oom_score_adj").write_text("1000")
    t0 = time.monotonic()
    eater = subprocess.Popen([s.kubectl, "--kubeconfig", s.kubeconfig, "-n", s.namespace, "exec", s.pod_name(a),
                              "-c", "agent-server", "--", "timeout", "60", "tail", "/dev/zero"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while s.pod(a)["status"]["containerStatuses"][0]["restartCount"] == before:  # still eating
            assert time.monotonic() < deadline, f"{a}: no OOM kill within 120 s ({eater.poll()=})"
            time.sleep(0.2)
        killed = time.monotonic()
        ready = s.wait_serving(a, budget=240)
    finally:
        eater.kill()
        eater.wait(timeout=30)
    assert s.https(a, f"/api/settings/secrets/{SECRET}", s.key(a)) == (200, secret_value(a))
    conversation, seen = wait_conversation(s, a, stored[a], s.key(a), budget=LEASE_TTL_SECONDS + 60)
    _, new_pid = server_process(s, a)
    assert_taken_over(pid, new_pid, ready, conversation, seen)
    pod = s.pod(a)
    (status,) = pod["status"]["containerStatuses"]
    assert pod["metadata"]["uid"] == uid, "the pod was replaced: an OOM kill restarts the container in place"
    assert status["restartCount"] == before + 1, status
    last = status["lastState"]["terminated"]
    assert last["reason"] == "OOMKilled" and last["exitCode"] == 137, last
    MEASURED["memory limit"] = f"{MEMORY_MIB} MiB"
    MEASURED["last state"] = f"{last['reason']}, exit {last['exitCode']}"
    MEASURED["memory eaten from -> the restart seen"] = killed - t0
    MEASURED["-> /ready through the controller"] = ready - t0
    MEASURED["-> the conversation served"] = conversation - t0
    MEASURED["server PID before/after"] = f"{pid}/{new_pid}"
    assert_state(s, stored)
    report("OOM kill")


# ------------------------------------------------------------------ 4. every tenant rotated under load


def rotate_case(s: PodStack, stored: dict[str, str]) -> None:
    """``openhands rotate`` while both tenants are under load, the clients holding the old keys (kept as the
    previous keys): every pod rolls, each tenant fails only inside its own restart window and only as "no
    server" (never 401/404/500), and every stored secret and conversation is served after, with either key."""
    old = {t: s.key(t) for t in TENANTS}
    pods = {t: s.pod(t)["metadata"]["uid"] for t in TENANTS}
    claims = {t: s.claim(t)["metadata"]["uid"] for t in TENANTS}
    text, t0, returned, back, result = run_under_load(s, stored, old, "rotate", TENANTS)
    assert "keys.rotation: 0 -> 1" in text
    MEASURED["openhands rotate"] = returned - t0
    for t in TENANTS:
        stats = result.per_target[t]
        calls = assert_failed_only_in_its_restart(result, t, t0, back[t])
        window = (max(calls) - min(calls)) if calls else 0.0
        MEASURED[f"{t}: failed calls / failing window / serving again"] = (
            f"{len(calls)} / {window:.1f} s / {back[t] - t0:.1f} s")
        MEASURED[f"{t}: WebSockets dropped by its restart"] = f"{stats.ws_failed}/{CLIENTS}"
        assert s.pod(t)["metadata"]["uid"] != pods[t], f"{t}: the pod was not rolled"
        assert s.claim(t)["metadata"]["uid"] == claims[t], f"{t}: the claim changed"
        assert s.key(t) != old[t] and s.key(t, 1) == old[t]
    MEASURED["load meanwhile"] = result.summary()
    assert_state(s, stored)  # the new keys
    assert_state(s, stored, key_of=lambda t: old[t])  # the keys the clients held
    report("rotation under load")


# ------------------------------------------------------------------ 5. one tenant changed under load




def change_case(s: PodStack, stored: dict[str, str]) -> None:
    """alpha's session key replaced through tenantKeys (the old one kept as the previous key, the secret
    key unchanged), then ``openhands up``: only alpha's Secret and pod change."""
    a, b = CRASHED, SMALL
    old = {t: s.key(t) for t in TENANTS}
    secret = s.get("/api/v1", f"secrets/{s.names(a)['secret']}")
    secret_key = base64.b64decode(secret["data"][contract.SECRET_KEY_ENV]).decode()
    new = secrets.token_hex(24)
    for path, value in (("sessionApiKey", new), ("previousSessionApiKey", old[a]), ("secretKey", secret_key)):
        s.project.pulumi("config", "set", "--secret", "--path", f"openhands:tenantKeys.{a}.{path}", value,
                         "--stack", STACK)
    pods = {t: s.pod(t) for t in TENANTS}
    claims = {t: s.claim(t)["metadata"]["uid"] for t in TENANTS}
    _, t0, returned, served_again, result = run_under_load(s, stored, old, "up", [a])
    back = served_again[a]
    stats = result.per_target[a]
    calls = assert_failed_only_in_its_restart(result, a, t0, back)
    window = (max(calls) - min(calls)) if calls else 0.0
    MEASURED["openhands up (one tenant's keys)"] = returned - t0
    MEASURED[f"{a}: failed calls / failing window"] = f"{len(calls)} / {window:.1f} s"
    MEASURED[f"{a}: up started -> failures began / ended / serving again"] = (
        f"{min(calls) - t0:.1f} / {max(calls) - t0:.1f} / {back - t0:.1f} s" if calls else f"- / - / {back - t0:.1f} s")
    MEASURED[f"{a}: failure kinds"] = sorted({re.sub(r"^GET \S+: ", "", x)[:60] for x in stats.error_samples})
    MEASURED[f"{a}: WebSockets dropped by its restart"] = f"{stats.ws_failed}/{CLIENTS}"
    MEASURED["load meanwhile"] = result.summary()
    assert_no_errors(result, b, "change")  # the untouched tenant: no error, its WebSockets held
    assert s.pod(b)["metadata"]["uid"] == pods[b]["metadata"]["uid"]
    assert s.pod(b)["status"]["containerStatuses"][0]["restartCount"] == \
        pods[b]["status"]["containerStatuses"][0]["restartCount"]
    assert s.pod(a)["metadata"]["uid"] != pods[a]["metadata"]["uid"], f"{a}: the pod was not rolled"
    for t in TENANTS:
        assert s.claim(t)["metadata"]["uid"] == claims[t]
    assert s.key(a) == new and s.key(a, 1) == old[a]
    assert_state(s, stored)  # the new key
    assert_state(s, stored, key_of=lambda t: old[t])  # the key the clients held
    report("one tenant changed under load")


# ------------------------------------------------------------------ 6. a full volume


def full_volume_case(s: PodStack, stored: dict[str, str]) -> None:
    data = contract.DATA_DIR
    # local-path: a directory on the node's disk; the claim's 32Mi is not enforced.
    run = s.exec(CRASHED, f"dd if=/dev/zero of={data}/.fill bs=1M count=48 2>&1 && rm -f {data}/.fill && echo done")
    assert run.returncode == 0 and run.stdout.strip().endswith("done"), run.stdout + run.stderr
    # beta: a filesystem of the claim's size.
    key = s.key(SMALL)
    restarts = s.pod(SMALL)["status"]["containerStatuses"][0]["restartCount"]
    run = s.exec(SMALL, f"dd if=/dev/zero of={data}/.fill bs=1M 2>&1; df -m {data} | tail -1")
    assert "No space left on device" in run.stdout, run.stdout + run.stderr
    MEASURED["df after the fill"] = " ".join(run.stdout.strip().splitlines()[-1].split()[1:5])
    try:
        status, body = s.https(SMALL, "/api/settings/secrets", key, method="PUT", body={"name": "OTHER", "value": "x"})
        assert status == 500, body
        MEASURED["PUT secret"] = f"{status} {body[:100]}"
        status, body = s.new_conversation(SMALL, key)
        assert status == 500 and "No space left on device" in body, body
        MEASURED["POST conversation"] = f"{status} {body[:120]}"
        # Reads work, /ready is 200, and the pod stays Ready: no probe notices.
        assert_state(s, stored, [SMALL])
        assert s.https(SMALL, contract.READINESS_PROBE.path) == (200, '{"status":"ready"}')
        # The other tenant writes as usual.
        status, body = s.https(CRASHED, "/api/settings/secrets", s.key(CRASHED), method="PUT",
                               body={"name": "OTHER", "value": "x"})
        assert status == 200, body
    finally:
        run = s.exec(SMALL, f"rm -f {data}/.fill")
        assert run.returncode == 0, run.stderr
    pod = s.pod(SMALL)
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
    assert pod["status"]["containerStatuses"][0]["restartCount"] == restarts
    # Space freed: writes work at once; the conversation is intact.
    status, body = s.https(SMALL, "/api/settings/secrets", key, method="PUT", body={"name": "OTHER", "value": "x"})
    assert status == 200, body
    assert s.new_conversation(SMALL, key)[0] == 201
    assert_state(s, stored, [SMALL])
    report("full volume")


# ------------------------------------------------------------------ the module's one test


def test_real_pods_under_load_and_faults(stack: PodStack) -> None:
    """One test, in order, on the module's deployment (xdist must not spread the cases over workers, each
    would deploy its own): the state stored first is checked after every case."""
    report("up")
    stored = store(stack)
    load_case(stack, stored)
    crash_case(stack, stored)
    oom_case(stack, stored)
    rotate_case(stack, stored)
    change_case(stack, stored)
    full_volume_case(stack, stored)
