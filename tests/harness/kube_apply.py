"""A test-only applier: sends what ``render("k8s", ...)`` registers to a real API server.

This is NOT ``pulumi up``. The real engine and pulumi-kubernetes 4.25.0 now run here
(scripts/engine), and the user's path goes through them (tests/real/engine/test_kube_up.py). This replay
remains only for what those runs do not reach cheaply (tests/real/kubernetes/test_kube_real.py: many config
variants against admission and validation in seconds, two stacks' field managers in one
namespace, the claim resize procedure, the Gateway API resources without a controller). It
reproduces the pulumi-kubernetes v4 behaviours those tests depend on (read from its sources,
provider/pkg/await/*.go and provider/pkg/provider/diff.go; facts, not code):

- **Server-side apply.** Create and update are one ``PATCH`` with
  ``application/apply-patch+yaml``, a field manager ``pulumi-kubernetes-<random suffix>``
  (one per stack, kept across runs) and ``force=false``: a conflict with another manager is
  an error, as without the ``pulumi.com/patchForce`` annotation. Create asks for
  ``fieldValidation=Warn``; the server's warnings are collected.
- **Diff on inputs.** A resource whose inputs equal the last applied ones is "same"; the
  applier still re-sends the apply and records whether the server changed the object (the
  provider's SSA preview is a dry-run apply, so a server-side change there is a perpetual diff).
- **Replacement.** A change under a "force new" path of the kind (metadata.name/namespace;
  Secret ``type``/``data``/``stringData`` as ``enableSecretMutable`` is off by default;
  StatefulSet ``selector``, ``serviceName``, ``podManagementPolicy``, ``revisionHistoryLimit``,
  ``volumeClaimTemplates``; Service ``clusterIP``) replaces the object. The objects carry
  explicit names, so the replacement is delete-before-replace.
- **ignoreChanges.** Listed paths keep the inputs last applied (the engine's rule).
- **Order.** Dependencies (depends_on and inputs' sources; a component stands for its
  children) are created first; independent resources run in parallel; destroy goes in
  reverse. ``retainOnDelete`` resources are left in the cluster.
- **Await.** StatefulSet: ``status.replicas == readyReplicas == currentReplicas ==
  spec.replicas`` and ``currentRevision == updateRevision`` (plus, stricter than the
  provider, ``observedGeneration == generation``). Service (ClusterIP with a selector): the
  Endpoints object of the same name has subsets and has been quiet for the provider's 10 s
  settle time. Ingress: an Endpoints object for every backend Service, the same settle, and
  ``status.loadBalancer.ingress`` non-empty. Others (the Gateway API custom resources too):
  none. Timeouts: 10 min; delete: foreground propagation, then wait until the object is gone
  (5 min).

No ingress controller runs in the throwaway cluster, and the Ingress await needs one to
publish a status: with ``ingress_status_ip`` set, the applier writes that status itself
(as a controller with ``--publish-status-address`` would), under its own field manager.

Unknown resource types FAIL (``UnknownResourceType``): a new kind in the model must be
taught here before a test can claim the API server accepted it.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from openhands_cli.render import Rendered, Resource

# type token -> (API prefix, plural, namespaced, force-new paths beyond metadata.name/namespace)
KINDS: dict[str, tuple[str, str, bool, tuple[str, ...]]] = {
    "kubernetes:core/v1:Namespace": ("/api/v1", "namespaces", False, ()),
    "kubernetes:core/v1:Secret": ("/api/v1", "secrets", True, ("type", "data", "stringData")),
    "kubernetes:core/v1:ServiceAccount": ("/api/v1", "serviceaccounts", True, ()),
    "kubernetes:core/v1:Service": ("/api/v1", "services", True, ("spec.clusterIP",)),
    "kubernetes:apps/v1:StatefulSet": (
        "/apis/apps/v1",
        "statefulsets",
        True,
        (
            "spec.podManagementPolicy",
            "spec.revisionHistoryLimit",
            "spec.selector",
            "spec.serviceName",
            "spec.volumeClaimTemplates",
        ),
    ),
    "kubernetes:networking.k8s.io/v1:Ingress": ("/apis/networking.k8s.io/v1", "ingresses", True, ()),
    "kubernetes:networking.k8s.io/v1:NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True, ()),
    # Gateway API (CustomResources; the CRDs must be installed): no force-new field, no await.
    "kubernetes:gateway.networking.k8s.io/v1:Gateway": ("/apis/gateway.networking.k8s.io/v1", "gateways", True, ()),
    "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute": (
        "/apis/gateway.networking.k8s.io/v1", "httproutes", True, ()),
}
# Registered by the program but not sent to the cluster: the explicit provider (the applier
# is given its kubeconfig) and the random passwords (resolved by the mock render).
NOT_APPLIED = ("pulumi:providers:kubernetes", "random:index/randomPassword:RandomPassword")
FORCE_NEW_ALWAYS = ("metadata.name", "metadata.namespace")
AWAIT_TIMEOUT = 600.0
DELETE_TIMEOUT = 300.0
SETTLE_SECONDS = 10.0  # the provider's endpoint settle timer (service.go, ingress.go)
POLL = 0.25


class UnknownResourceType(Exception):
    """The render registered a resource type the applier does not know how to apply."""


class ApplyError(Exception):
    """The API server refused an object, or an await timed out."""


@dataclass
class Step:
    """What the applier did with one resource."""

    urn: str
    kind: str
    name: str
    action: str  # create | update | replace | same | delete | retain
    server_changed: bool = False  # the object's resourceVersion moved
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class StackState:
    """The applier's "state file": last applied inputs by URN, and the field manager."""

    field_manager: str = field(default_factory=lambda: f"pulumi-kubernetes-{secrets.token_hex(4)}")
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)


# ------------------------------------------------------------------ REST


class Client:
    """A thin REST client on the kubernetes package's ApiClient (auth and TLS from the kubeconfig)."""

    def __init__(self, kubeconfig: str):
        from kubernetes import config

        self.api = config.new_client_from_config(config_file=kubeconfig)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Iterable[tuple[str, str]] = (),
        ok404: bool = False,
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """One HTTP request; returns (JSON body, the server's Warning headers)."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # The generated client adds the kubeconfig's auth to the headers and builds the URL;
        # the request itself goes through its urllib3 pool (which holds the TLS settings),
        # so bodies are sent exactly as given (the REST layer would re-encode JSON strings).
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list(query), header_params=headers, auth_settings=["BearerToken"]
        )
        if isinstance(body, str):
            body = body.encode()
        resp = self.api.rest_client.pool_manager.request(method, url, body=body, headers=headers, timeout=60.0)
        if ok404 and resp.status == 404:
            return None, []
        text = resp.data.decode() if resp.data else ""
        if not 200 <= resp.status <= 299:
            try:
                detail = json.loads(text).get("message", text)
            except ValueError:
                detail = text
            raise ApplyError(f"{method} {path}: HTTP {resp.status}: {detail}")
        warnings = list(resp.headers.getlist("Warning")) if hasattr(resp.headers, "getlist") else []
        return (json.loads(text) if text.strip().startswith(("{", "[")) else None), warnings

    def get(self, path: str) -> dict[str, Any] | None:
        return self.request("GET", path, ok404=True)[0]


def whole_numbers(value: Any) -> Any:
    """Pulumi's wire format carries numbers as doubles; the provider sends whole ones as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def object_path(typ: str, manifest: dict[str, Any], *, collection: bool = False) -> str:
    prefix, plural, namespaced, _ = KINDS[typ]
    meta = manifest["metadata"]
    base = f"{prefix}/namespaces/{meta['namespace']}/{plural}" if namespaced else f"{prefix}/{plural}"
    return base if collection else f"{base}/{meta['name']}"


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def set_config_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    if value is None:
        obj.pop(parts[-1], None)
    else:
        obj[parts[-1]] = value


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two manifests differ (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += changed_paths(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [prefix]


# ------------------------------------------------------------------ the applier


class Applier:
    def __init__(
        self,
        kubeconfig: str,
        *,
        ingress_status_ip: str | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        await_timeout: float = AWAIT_TIMEOUT,
        workers: int = 8,
    ):
        self.client = Client(kubeconfig)
        self.ingress_status_ip = ingress_status_ip
        self.settle_seconds = settle_seconds
        self.await_timeout = await_timeout
        self.workers = workers

    # -------------------------------------------------------------- planning

    @staticmethod
    def resources(rendered: Rendered) -> dict[str, Resource]:
        """The custom resources to apply, by URN; fails on a type it does not know."""
        if any(p.inputs.get("renderYamlToDirectory") for p in rendered.of_type("pulumi:providers:kubernetes")):
            raise ApplyError("the render sets renderYamlToDirectory: the provider would write files, not apply")
        out: dict[str, Resource] = {}
        for r in rendered.resources:
            if not r.custom or r.type in NOT_APPLIED:
                continue
            if r.type not in KINDS:
                raise UnknownResourceType(
                    f"{r.type} ({r.name}): the test applier does not know this resource type; "
                    "teach tests/harness/kube_apply.py its path, force-new fields and await logic"
                )
            out[r.urn] = r
        return out

    @staticmethod
    def dependencies(rendered: Rendered, resources: dict[str, Resource]) -> dict[str, set[str]]:
        """URN -> the applied URNs it waits for (a component dependency means all its children)."""
        children: dict[str, list[str]] = {}
        for r in rendered.resources:
            children.setdefault(r.parent, []).append(r.urn)

        def expand(urn: str) -> set[str]:
            if urn in resources:
                return {urn}
            found: set[str] = set()
            for c in children.get(urn, []):
                found |= expand(c)
            return found

        return {u: set().union(*(expand(d) for d in r.dependencies)) - {u} if r.dependencies else set()
                for u, r in resources.items()}

    @staticmethod
    def manifest(r: Resource) -> dict[str, Any]:
        return whole_numbers(copy.deepcopy(r.inputs))

    # -------------------------------------------------------------- apply

    def apply(self, rendered: Rendered, state: StackState) -> list[Step]:
        """``pulumi up``'s create/update/replace and await, then the deletes of resources the
        render no longer has. Returns one Step per resource."""
        resources = self.resources(rendered)
        deps = self.dependencies(rendered, resources)
        steps = self._run(list(resources), deps, lambda urn: self._apply_one(resources[urn], state))
        gone = {u: r for u, r in state.resources.items() if u not in resources}
        if gone:
            steps += self._destroy(gone, state)
        state.resources.update(resources)
        return steps

    def destroy(self, state: StackState) -> list[Step]:
        return self._destroy(dict(state.resources), state)

    def _run(self, urns: list[str], deps: dict[str, set[str]], fn) -> list[Step]:
        """Run ``fn`` per URN, each after its dependencies, independent ones in parallel."""
        done: set[str] = set()
        steps: list[Step] = []
        pending = set(urns)
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(self.workers) as pool:
            while pending or running:
                for urn in sorted(pending):
                    if deps.get(urn, set()) <= done:
                        running[pool.submit(fn, urn)] = urn
                        pending.discard(urn)
                if not running:
                    raise ApplyError(f"dependency cycle among {sorted(pending)}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    urn = running.pop(fut)
                    steps.append(fut.result())  # re-raises the first failure, as `pulumi up` stops
                    done.add(urn)
        return steps

    def _apply_one(self, r: Resource, state: StackState) -> Step:
        t0 = time.monotonic()
        desired = self.manifest(r)
        path = object_path(r.type, desired)
        old = state.inputs.get(r.urn)
        live = self.client.get(path)
        if old is not None:
            for p in r.ignore_changes:
                # The engine replaces an ignored path's new input with the old one before the
                # diff. (The provider then sends the live value where it still owns the field;
                # sending the old input is the same while no other manager changed it.)
                set_config_path(desired, p, copy.deepcopy(_get_path(old, p)))
        step = Step(r.urn, desired["kind"], desired["metadata"]["name"], "create")
        if old is not None:
            diff = changed_paths(old, desired)
            force_new = FORCE_NEW_ALWAYS + KINDS[r.type][3]
            if not diff:
                step.action = "same"
            elif any(d == f or d.startswith(f + ".") for d in diff for f in force_new):
                step.action = "replace"
            else:
                step.action = "update"
        if step.action == "replace" and live is not None:
            self._delete(r.type, desired, path)
            live = None
        before = (live or {}).get("metadata", {}).get("resourceVersion")
        query = [("fieldManager", state.field_manager), ("force", "false")]
        if step.action == "create":
            query.append(("fieldValidation", "Warn"))
        obj, warnings = self.client.request(
            "PATCH", path, json.dumps(desired), content_type="application/apply-patch+yaml", query=query
        )
        step.warnings = warnings
        step.server_changed = obj["metadata"]["resourceVersion"] != before
        state.inputs[r.urn] = desired
        if step.action != "same":
            self._await(r.type, desired, path)
        step.seconds = time.monotonic() - t0
        return step

    # -------------------------------------------------------------- await

    def _until(self, what: str, check) -> None:
        deadline = time.monotonic() + self.await_timeout
        last = None
        while time.monotonic() < deadline:
            ok, last = check()
            if ok:
                return
            time.sleep(POLL)
        raise ApplyError(f"timed out after {self.await_timeout:.0f}s waiting for {what}: {last}")

    def _await(self, typ: str, m: dict[str, Any], path: str) -> None:
        kind = m["kind"]
        ns = m["metadata"].get("namespace")
        if kind == "StatefulSet":
            def ready() -> tuple[bool, str]:
                s = self.client.get(path) or {}
                st, want = s.get("status", {}), s.get("spec", {}).get("replicas", 1)
                ok = (
                    st.get("observedGeneration") == s.get("metadata", {}).get("generation")
                    and st.get("replicas", 0) == want
                    and st.get("readyReplicas", 0) == want
                    and st.get("currentReplicas", 0) == want
                    and bool(st.get("currentRevision"))
                    and st.get("currentRevision") == st.get("updateRevision")
                )
                return ok, json.dumps(st)

            self._until(f"StatefulSet {ns}/{m['metadata']['name']}", ready)
        elif kind == "Service" and m.get("spec", {}).get("selector") and m["spec"].get("clusterIP") != "None":
            self._settled_endpoints([m["metadata"]["name"]], ns, need_subsets=True)
        elif kind == "Ingress":
            backends = [
                p["backend"]["service"]["name"]
                for rule in m.get("spec", {}).get("rules", [])
                for p in rule.get("http", {}).get("paths", [])
                if p.get("backend", {}).get("service")
            ]
            if self.ingress_status_ip:
                # Standing in for the ingress controller that would publish this status.
                body = {"status": {"loadBalancer": {"ingress": [{"ip": self.ingress_status_ip}]}}}
                self.client.request(
                    "PATCH", path + "/status", json.dumps(body), content_type="application/merge-patch+json",
                    query=[("fieldManager", "test-ingress-controller")],
                )
            self._settled_endpoints(backends, ns, need_subsets=False)

            def published() -> tuple[bool, str]:
                s = self.client.get(path) or {}
                lb = s.get("status", {}).get("loadBalancer", {}).get("ingress") or []
                return bool(lb), "status.loadBalancer.ingress is empty (no ingress controller published it)"

            self._until(f"Ingress {ns}/{m['metadata']['name']}", published)

    def _settled_endpoints(self, services: list[str], ns: str, *, need_subsets: bool) -> None:
        """Endpoints exist (with subsets, for a Service) and did not change for the settle time."""
        seen: dict[str, str | None] = {}
        changed_at = time.monotonic()  # the informer's initial list counts as an event

        def check() -> tuple[bool, str]:
            nonlocal changed_at
            state = []
            for svc in services:
                ep = self.client.get(f"/api/v1/namespaces/{ns}/endpoints/{svc}")
                rv = ep["metadata"]["resourceVersion"] if ep else None
                if seen.get(svc, "unseen") != rv:
                    seen[svc] = rv
                    changed_at = time.monotonic()
                ok = ep is not None and (bool(ep.get("subsets")) or not need_subsets)
                state.append((svc, ok))
            quiet = time.monotonic() - changed_at >= self.settle_seconds
            return all(ok for _, ok in state) and quiet, f"endpoints {state}, quiet={quiet}"

        self._until(f"endpoints of {services} in {ns}", check)

    # -------------------------------------------------------------- delete

    def _delete(self, typ: str, m: dict[str, Any], path: str) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"})
        self.client.request("DELETE", path, body, ok404=True)
        deadline = time.monotonic() + DELETE_TIMEOUT
        while time.monotonic() < deadline:
            if self.client.get(path) is None:
                return
            time.sleep(POLL)
        raise ApplyError(f"timed out waiting for the deletion of {path}")

    def _destroy(self, resources: dict[str, Resource], state: StackState) -> list[Step]:
        # Reverse order: a resource is deleted after everything that depends on it.
        urns = list(resources)
        forward: dict[str, set[str]] = {u: set() for u in urns}
        for u, r in resources.items():
            for d in r.dependencies:
                if d in forward and d != u:
                    forward[d].add(u)  # d must wait for u's deletion
        # Components: a dependency on a component means its children; re-derive from parents.
        by_parent: dict[str, list[str]] = {}
        for u, r in resources.items():
            by_parent.setdefault(r.parent, []).append(u)
        for u, r in resources.items():
            for d in r.dependencies:
                if d not in resources:
                    for c in _descendants(d, by_parent):
                        if c != u:
                            forward[c].add(u)

        def one(urn: str) -> Step:
            r = resources[urn]
            m = state.inputs.get(urn) or self.manifest(r)
            step = Step(urn, m["kind"], m["metadata"]["name"], "retain" if r.retain_on_delete else "delete")
            t0 = time.monotonic()
            if not r.retain_on_delete:
                self._delete(r.type, m, object_path(r.type, m))
            state.inputs.pop(urn, None)
            state.resources.pop(urn, None)
            step.seconds = time.monotonic() - t0
            return step

        return self._run(urns, forward, one)


def _descendants(urn: str, by_parent: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for c in by_parent.get(urn, []):
        out.append(c)
        out += _descendants(c, by_parent)
    return out
