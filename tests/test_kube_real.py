"""The Kubernetes model against a real API server (kube-apiserver, controller-manager,
scheduler, etcd, built by scripts/kube; kwok plays the node and its pods).

What is real: admission (Pod Security ``restricted`` enforced on the namespace), defaulting,
server-side validation (Ingress, NetworkPolicy, immutable StatefulSet fields), the
StatefulSet controller's rollouts and its PVC retention policy, the PV binder, garbage
collection, endpoints. What stands in: ``pulumi up``/``destroy`` are replaced by
tests/kube_apply.py (the engine and the kubernetes plugin cannot be built here), which
applies exactly what ``render()`` registers the way pulumi-kubernetes does (server-side
apply, replacement rules, ignoreChanges, await logic; see its docstring). What kwok does not
prove: a real kubelet (image pull, probes, the read-only root, the volume mount), CNI
enforcement of the NetworkPolicy, an ingress controller and cert-manager's issuance.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from components.render import Rendered, render
from tests.kube_apply import Applier, ApplyError, StackState, Step, UnknownResourceType, whole_numbers

if TYPE_CHECKING:
    from tests.real_kube import Kube

pytest_plugins = ["tests.real_kube"]  # the kube_cluster and kube fixtures
STORAGE_CLASS = "openhands-test"  # tests/real_kube.py creates it

DEV = "organization/openhands/dev"
TWO = ["alpha", "beta"]
STS = "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"


# ------------------------------------------------------------------ helpers


def render_k8s(ns: str, tenants: list[str], stack: str = "k8s", **overrides: Any) -> Rendered:
    base = {"tenants": tenants, "kubernetes.namespace": ns, "kubernetes.storageClass": STORAGE_CLASS}
    return render(stack, overrides={**base, **overrides})


def render_prod(ns: str, dev: Rendered, **overrides: Any) -> Rendered:
    base = {"tenants": ["acme", "globex"], "kubernetes.namespace": ns, "kubernetes.storageClass": STORAGE_CLASS}
    return render("prod", overrides={**base, **overrides}, stack_outputs={DEV: dev.outputs})


def volumes_for(kube: Kube, r: Rendered, ns: str) -> None:
    for claim in r.outputs["stateClaims"].values():
        kube.volume_for(ns, claim)


def by_kind(steps: list[Step]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in steps:
        out.setdefault(s.kind, set()).add(s.action)
    return out


def manifests(r: Rendered, kind: str) -> list[dict[str, Any]]:
    return [x.inputs for x in r.resources if x.type.startswith("kubernetes:") and x.inputs.get("kind") == kind]


def subset(want: Any, have: Any, path: str = "") -> list[str]:
    """Where the live object lacks what was rendered (the server may add defaults, never drop)."""
    if isinstance(want, float) and want.is_integer():
        want = int(want)
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [path]
        return [p for k, v in want.items() for p in subset(v, have.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [path]
        return [p for i, (w, h) in enumerate(zip(want, have, strict=True)) for p in subset(w, h, f"{path}[{i}]")]
    return [] if want == have else [f"{path}: {want!r} != {have!r}"]


def pods(kube: Kube, ns: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.items(f"/api/v1/namespaces/{ns}/pods")}


def claims(kube: Kube, ns: str) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in kube.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")}


def restricted_namespace(kube: Kube, label: str) -> str:
    """A namespace the test makes itself (for createNamespace: false), enforcing `restricted`."""
    ns = kube.namespace(label)
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    kube.client.request("POST", "/api/v1/namespaces", json.dumps(body))
    return ns


def wait_until(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def up(kube: Kube, r: Rendered, state: StackState | None = None) -> tuple[StackState, list[Step]]:
    state = state or StackState()
    steps = kube.applier.apply(r, state)
    warnings = [f"{s.kind}/{s.name}: {w}" for s in steps for w in s.warnings]
    assert not warnings, warnings  # e.g. Pod Security "warn" findings, unknown fields
    return state, steps


# ------------------------------------------------------------------ 1. up


def test_two_tenants_are_accepted_and_ready_in_a_restricted_namespace(kube: Kube) -> None:
    ns = kube.namespace("up")
    r = render_k8s(ns, TWO)
    volumes_for(kube, r, ns)
    _, steps = up(kube, r)
    assert {s.action for s in steps} == {"create"}
    assert by_kind(steps).keys() == {
        "Namespace", "Secret", "ServiceAccount", "StatefulSet", "Service", "Ingress", "NetworkPolicy"}

    live_ns = kube.get(f"/api/v1/namespaces/{ns}")
    assert live_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    running = pods(kube, ns)
    assert len(running) == 2
    for p in running.values():
        # Admitted under `restricted`, scheduled onto the kwok node, Ready.
        assert p["spec"]["nodeName"] == "kwok-node-0"
        assert p["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"] == "True"
    for t in TWO:
        (sts,) = [m for m in manifests(r, "StatefulSet") if m["metadata"]["labels"]["openhands.dev/tenant"] == t]
        live = kube.get(STS.format(ns=ns, name=sts["metadata"]["name"]))
        assert live["status"]["readyReplicas"] == 1
        assert not subset(sts["spec"], live["spec"]), subset(sts["spec"], live["spec"])
        # Defaulting happened server-side, and the claim is bound.
        assert live["spec"]["revisionHistoryLimit"] == 10
        claim = claims(kube, ns)[r.outputs["stateClaims"][t]]
        assert claim["status"]["phase"] == "Bound"

    for kind, plural in (("Ingress", "ingresses"), ("NetworkPolicy", "networkpolicies")):
        for m in manifests(r, kind):
            live = kube.get(f"/apis/networking.k8s.io/v1/namespaces/{ns}/{plural}/{m['metadata']['name']}")
            assert live is not None, m["metadata"]["name"]
            assert not subset(m["spec"], live["spec"]), subset(m["spec"], live["spec"])

    # The admission is real, not vacuous: a pod that breaks `restricted` is refused here.
    rogue = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rogue", "namespace": ns},
             "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}
    with pytest.raises(ApplyError, match='violates PodSecurity "restricted:latest"'):
        kube.client.request("POST", f"/api/v1/namespaces/{ns}/pods", json.dumps(rogue))


def test_config_refuses_what_the_api_server_refuses(kube: Kube) -> None:
    """exceptCidrs outside allowCidrs: config.py says the API server rejects it; it does."""
    from components.config import ConfigError

    egress = {"allowCidrs": ["10.0.0.0/8"], "exceptCidrs": ["192.168.0.0/16"]}
    with pytest.raises(ConfigError, match="not strictly inside"):
        render_k8s("t-x", ["alpha"], **{"kubernetes.egress": egress})
    ns = kube.namespace("netpol")
    kube.client.request("POST", "/api/v1/namespaces", json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    (policy,) = [whole_numbers(m) for m in manifests(render_k8s(ns, ["alpha"]), "NetworkPolicy")]
    policy["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]
    with pytest.raises(ApplyError, match="HTTP 422"):
        kube.client.request("POST", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
                            json.dumps(policy))


# ------------------------------------------------------------------ 2 + 3. rotation, no-op


def test_rotation_rolls_exactly_each_tenants_pod_and_replaces_nothing_immutable(kube: Kube) -> None:
    ns = kube.namespace("rot")
    r0 = render_k8s(ns, TWO)
    volumes_for(kube, r0, ns)
    state, _ = up(kube, r0)
    before_pods = {p["metadata"]["labels"]["openhands.dev/tenant"]: p["metadata"]["uid"]
                   for p in pods(kube, ns).values()}
    before_claims = {n: c["metadata"]["uid"] for n, c in claims(kube, ns).items()}
    services = {m["metadata"]["name"]: kube.get(f"/api/v1/namespaces/{ns}/services/{m['metadata']['name']}")
                for m in manifests(r0, "Service")}
    sts_names = [m["metadata"]["name"] for m in manifests(r0, "StatefulSet")]
    revisions = {n: kube.get(STS.format(ns=ns, name=n))["status"]["currentRevision"] for n in sts_names}

    _, steps = up(kube, render_k8s(ns, TWO, **{"keys.rotation": 1}), state)
    actions = by_kind(steps)
    # The Secret's data is a force-new field for the provider: replaced. The StatefulSet is
    # updated (its template's checksum), and nothing else changes.
    assert actions["Secret"] == {"replace"}
    assert actions["StatefulSet"] == {"update"}
    for kind in ("Namespace", "ServiceAccount", "Service", "Ingress", "NetworkPolicy"):
        assert actions[kind] == {"same"}, (kind, actions[kind])
    assert not [s for s in steps if s.action == "same" and s.server_changed]

    after = pods(kube, ns).values()
    after_pods = {p["metadata"]["labels"]["openhands.dev/tenant"]: p["metadata"]["uid"] for p in after}
    assert after_pods.keys() == before_pods.keys() == set(TWO)
    assert all(after_pods[t] != before_pods[t] for t in TWO), "each tenant's pod is a new pod"
    for n in sts_names:
        status = kube.get(STS.format(ns=ns, name=n))["status"]
        assert status["currentRevision"] == status["updateRevision"] != revisions[n]
    assert {n: c["metadata"]["uid"] for n, c in claims(kube, ns).items()} == before_claims
    for name, svc in services.items():
        now = kube.get(f"/api/v1/namespaces/{ns}/services/{name}")
        assert now["metadata"]["uid"] == svc["metadata"]["uid"]
        assert now["spec"]["clusterIP"] == svc["spec"]["clusterIP"]


def test_a_second_apply_changes_nothing_on_the_server(kube: Kube) -> None:
    ns = kube.namespace("noop")
    r = render_k8s(ns, TWO)
    volumes_for(kube, r, ns)
    state, _ = up(kube, r)
    versions = {s: kube.get(f"/api/v1/namespaces/{ns}/secrets/{s}")["metadata"]["resourceVersion"]
                for s in (m["metadata"]["name"] for m in manifests(r, "Secret"))}
    # A fresh render (what the next `pulumi up` computes) is identical, and re-applying it
    # with server-side apply moves no object's resourceVersion.
    _, steps = up(kube, render_k8s(ns, TWO), state)
    assert {s.action for s in steps} == {"same"}
    assert [s.name for s in steps if s.server_changed] == []
    assert {s: kube.get(f"/api/v1/namespaces/{ns}/secrets/{s}")["metadata"]["resourceVersion"]
            for s in versions} == versions


# ------------------------------------------------------------------ 4 + 5. destroy, re-attach


@pytest.mark.parametrize("retain", [True, False], ids=["retainData", "no-retainData"])
def test_destroy_keeps_or_deletes_the_claims_by_the_retention_policy(kube: Kube, retain: bool) -> None:
    ns = restricted_namespace(kube, "keep" if retain else "drop")
    r = render_k8s(ns, TWO, retainData=retain, **{"kubernetes.createNamespace": False})
    volumes_for(kube, r, ns)
    state, _ = up(kube, r)
    assert set(claims(kube, ns)) == set(r.outputs["stateClaims"].values())

    steps = kube.applier.destroy(state)
    assert {s.action for s in steps} == {"delete"}
    assert kube.items(f"/apis/apps/v1/namespaces/{ns}/statefulsets") == []
    if retain:
        kept = claims(kube, ns)
        assert set(kept) == set(r.outputs["stateClaims"].values())
        assert all(c["status"]["phase"] == "Bound" and "deletionTimestamp" not in c["metadata"]
                   for c in kept.values())
    else:
        # The StatefulSet controller owns the claims (whenDeleted: Delete); garbage collection removes them.
        wait_until("the claims to be deleted", lambda: claims(kube, ns) == {})


def test_up_after_a_retained_destroy_reattaches_the_same_claims(kube: Kube) -> None:
    ns = kube.namespace("again")
    r = render_k8s(ns, TWO, retainData=True)
    volumes_for(kube, r, ns)
    state, _ = up(kube, r)
    first = {n: (c["metadata"]["uid"], c["spec"]["volumeName"]) for n, c in claims(kube, ns).items()}

    steps = kube.applier.destroy(state)
    assert {s.kind for s in steps if s.action == "retain"} == {"Namespace"}  # kept with the data
    assert kube.get(f"/api/v1/namespaces/{ns}") is not None

    _, steps = up(kube, render_k8s(ns, TWO, retainData=True))  # a new stack state, as after `destroy`
    again = {n: (c["metadata"]["uid"], c["spec"]["volumeName"]) for n, c in claims(kube, ns).items()}
    assert again == first
    for p in pods(kube, ns).values():
        (vol,) = [v for v in p["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert vol["persistentVolumeClaim"]["claimName"] in first


# ------------------------------------------------------------------ 6. dev + prod, names


def test_dev_and_prod_in_two_namespaces_of_one_cluster(kube: Kube) -> None:
    ns_dev, ns_prod = kube.namespace("dev"), kube.namespace("prod")
    dev = render_k8s(ns_dev, TWO, stack="dev")
    prod = render_prod(ns_prod, dev)  # prod's image and contract come from dev's outputs
    assert prod.outputs["promotedFrom"]["image"] == dev.outputs["image"]
    volumes_for(kube, dev, ns_dev)
    volumes_for(kube, prod, ns_prod)
    dev_state, _ = up(kube, dev)
    up(kube, prod)
    for ns, r in ((ns_dev, dev), (ns_prod, prod)):
        for m in manifests(r, "StatefulSet"):
            live = kube.get(STS.format(ns=ns, name=m["metadata"]["name"]))
            assert live["status"]["readyReplicas"] == 1
            images = [c["image"] for c in live["spec"]["template"]["spec"]["containers"]]
            assert images == [dev.outputs["image"]]
    dev_names = {m["metadata"]["name"] for m in manifests(dev, "StatefulSet") + manifests(dev, "Secret")}
    prod_names = {m["metadata"]["name"] for m in manifests(prod, "StatefulSet") + manifests(prod, "Secret")}
    assert not dev_names & prod_names

    # Destroying dev (retainData: false) takes its namespace and claims, and nothing of prod's.
    prod_versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods(kube, ns_prod).values()}
    steps = kube.applier.destroy(dev_state)
    assert {s.action for s in steps} == {"delete"}
    assert kube.get(f"/api/v1/namespaces/{ns_dev}") is None
    assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"]
            for p in pods(kube, ns_prod).values()} == prod_versions
    assert set(claims(kube, ns_prod)) == set(prod.outputs["stateClaims"].values())


def test_two_stacks_in_one_namespace_never_touch_each_others_objects(kube: Kube) -> None:
    """Issue 13: `k8s` and `prod` in ONE namespace, even with the same tenant name."""
    ns = kube.namespace("shared")
    dev = render("dev")
    k8s = render_k8s(ns, ["acme"])
    prod = render_prod(ns, dev, tenants=["acme"], **{"kubernetes.createNamespace": False})
    names = {r.stack: {(m["kind"], m["metadata"]["name"]) for m in (x.inputs for x in r.resources
                                                                     if x.type.startswith("kubernetes:"))}
             for r in (k8s, prod)}
    assert not names["k8s"] & names["prod"], names["k8s"] & names["prod"]
    volumes_for(kube, k8s, ns)
    volumes_for(kube, prod, ns)
    state_k8s, _ = up(kube, k8s)
    up(kube, prod)
    # Each object is managed by exactly one stack's field manager.
    for plural in ("apps/v1/namespaces/{ns}/statefulsets", "v1/namespaces/{ns}/secrets"):
        items = kube.items(("/apis/" if "/" in plural.split("/namespaces")[0] else "/api/") + plural.format(ns=ns))
        assert len(items) == 2, [i["metadata"]["name"] for i in items]
        for item in items:
            managers = {f["manager"] for f in item["metadata"]["managedFields"] if f["operation"] == "Apply"}
            assert len(managers) == 1, (item["metadata"]["name"], managers)
    # Re-applying k8s changes nothing prod made.
    _, steps = up(kube, render_k8s(ns, ["acme"]), state_k8s)
    assert [s.name for s in steps if s.server_changed] == []


# ------------------------------------------------------------------ 7. storage size


def test_storage_size_change_never_fails_mid_update(kube: Kube) -> None:
    ns = kube.namespace("size")
    r = render_k8s(ns, ["alpha"])
    volumes_for(kube, r, ns)
    state, _ = up(kube, r)
    (sts,) = manifests(r, "StatefulSet")
    name = sts["metadata"]["name"]

    # What the API server refuses: the claim template of a live StatefulSet is immutable.
    changed = json.loads(json.dumps(sts))
    changed["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "20Gi"
    with pytest.raises(ApplyError) as refused:
        kube.client.request(
            "PATCH", STS.format(ns=ns, name=name), json.dumps(changed),
            content_type="application/apply-patch+yaml", query=[("fieldManager", state.field_manager)],
        )
    assert "Forbidden: updates to statefulset spec for fields other than" in str(refused.value)

    # The model ignores the template after creation: the up that follows a storageSize
    # change succeeds, changes no object, and the claim keeps its size.
    claim = r.outputs["stateClaims"]["alpha"]
    _, steps = up(kube, render_k8s(ns, ["alpha"], **{"kubernetes.storageSize": "20Gi"}), state)
    assert {s.action for s in steps} == {"same"}
    live = claims(kube, ns)[claim]
    assert live["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_storage_resize_procedure_is_accepted_by_the_api_server(kube: Kube) -> None:
    """The README procedure: grow the claim itself (its StorageClass must allow expansion),
    then set storageSize for new tenants. The API server accepts the claim's new size; the
    actual expansion is the CSI driver's job, which this cluster does not have."""
    expandable = "openhands-test-expandable"
    kube.client.request(
        "PATCH", f"/apis/storage.k8s.io/v1/storageclasses/{expandable}", json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": expandable},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True}),
        content_type="application/apply-patch+yaml", query=[("fieldManager", "openhands-tests"), ("force", "true")])
    ns = kube.namespace("resize")
    r = render_k8s(ns, ["alpha"], **{"kubernetes.storageClass": expandable})
    claim = r.outputs["stateClaims"]["alpha"]
    pv = kube.volume_for(ns, claim)
    kube.client.request("PATCH", f"/api/v1/persistentvolumes/{pv}", json.dumps(
        {"spec": {"storageClassName": expandable}}), content_type="application/merge-patch+json")
    state, _ = up(kube, r)
    kube.client.request(
        "PATCH", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}",
        json.dumps({"spec": {"resources": {"requests": {"storage": "20Gi"}}}}),
        content_type="application/merge-patch+json")
    assert claims(kube, ns)[claim]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    _, steps = up(kube, render_k8s(ns, ["alpha"], **{"kubernetes.storageClass": expandable,
                                                     "kubernetes.storageSize": "20Gi"}), state)
    assert {s.action for s in steps} == {"same"}


# ------------------------------------------------------------------ 8. Gateway API routing (issue 19)

GATEWAY_API = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/{plural}/{name}"
TO_GATEWAY = {"kubernetes.routing": "gateway", "kubernetes.ingressClass": None, "kubernetes.ingressNamespace": None}


def plain_namespace(kube: Kube, label: str) -> str:
    ns = kube.namespace(label)
    kube.client.request("POST", "/api/v1/namespaces", json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    return ns


def test_created_gateway_and_routes_pass_the_gateway_api_crds(kube: Kube, gateway_api_crds: list[str]) -> None:
    """The API server validates the rendered Gateway and HTTPRoutes against the standard-channel CRDs
    (OpenAPI schema, defaults and CEL rules), with no unknown-field warning; no controller runs here."""
    ns, gw_ns = kube.namespace("gw"), plain_namespace(kube, "gwsys")
    gateway = {"create": True, "namespace": gw_ns, "className": "openhands-test"}
    r = render_k8s(ns, TWO, **TO_GATEWAY, **{"kubernetes.gateway": gateway})
    volumes_for(kube, r, ns)
    state, steps = up(kube, r)
    assert by_kind(steps).keys() == {
        "Namespace", "Secret", "ServiceAccount", "StatefulSet", "Service", "Gateway", "HTTPRoute", "NetworkPolicy"}

    (gw,) = [whole_numbers(m) for m in manifests(r, "Gateway")]
    live = kube.get(GATEWAY_API.format(ns=gw_ns, plural="gateways", name=gw["metadata"]["name"]))
    assert not subset(gw["spec"], live["spec"]), subset(gw["spec"], live["spec"])
    assert live["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert len(live["spec"]["listeners"]) == 2
    for m in manifests(r, "HTTPRoute"):
        route = whole_numbers(m)
        live = kube.get(GATEWAY_API.format(ns=ns, plural="httproutes", name=route["metadata"]["name"]))
        assert not subset(route["spec"], live["spec"]), subset(route["spec"], live["spec"])
        # The CRD's defaults were applied: the schema, not a schemaless store, took the object.
        (parent,) = live["spec"]["parentRefs"]
        assert (parent["group"], parent["kind"]) == ("gateway.networking.k8s.io", "Gateway")
        (backend,) = live["spec"]["rules"][0]["backendRefs"]
        assert (backend["kind"], backend["weight"]) == ("Service", 1)
    for m in manifests(r, "NetworkPolicy"):
        live = kube.get(f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{m['metadata']['name']}")
        source = live["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
        assert source == {"kubernetes.io/metadata.name": gw_ns}

    # A fresh render is the same. Re-applying it moves only the Gateway's resourceVersion, once, with no
    # visible change: the Gateway CRD (alone) defaults `status`, and the first update stores that default
    # (a cluster without a controller; measured). The apply after that changes nothing: no perpetual diff.
    def again() -> list[Step]:
        _, steps = up(kube, render_k8s(ns, TWO, **TO_GATEWAY, **{"kubernetes.gateway": dict(gateway)}), state)
        assert {s.action for s in steps} == {"same"}
        return [s for s in steps if s.server_changed]

    assert {s.kind for s in again()} <= {"Gateway"}
    assert again() == []

    # The validation is real: what the schema and its CEL rules refuse is refused.
    def refused(plural: str, namespace: str, body: dict[str, Any], words: str) -> None:
        body = json.loads(json.dumps(body))
        body["metadata"] = {"name": "refused", "namespace": namespace}
        with pytest.raises(ApplyError, match="HTTP 422") as info:
            kube.client.request("POST", f"/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/{plural}",
                                json.dumps(body), query=[("dryRun", "All")])
        assert words in str(info.value), info.value

    route = whole_numbers(manifests(r, "HTTPRoute")[0])
    route["spec"]["rules"][0]["timeouts"]["request"] = "1 hour"
    refused("httproutes", ns, route, "spec.rules[0].timeouts.request")
    no_cert = json.loads(json.dumps(gw))
    del no_cert["spec"]["listeners"][0]["tls"]["certificateRefs"]
    refused("gateways", gw_ns, no_cert, "certificateRefs or options must be specified")
    # config.GATEWAY_MAX_LISTENERS: the CRD allows 64 listeners, so the config refuses a 65th tenant.
    many = json.loads(json.dumps(gw))
    first = many["spec"]["listeners"][0]
    many["spec"]["listeners"] = [{**first, "name": f"t{i}", "hostname": f"t{i}.agents.example.com"}
                                 for i in range(65)]
    refused("gateways", gw_ns, many, "must have at most 64 items")

    steps = kube.applier.destroy(state)
    assert {s.kind for s in steps if s.action == "delete"} >= {"Gateway", "HTTPRoute"}
    assert kube.get(GATEWAY_API.format(ns=gw_ns, plural="gateways", name=gw["metadata"]["name"])) is None


def test_routes_attach_to_an_existing_gateway_in_another_namespace(kube: Kube, gateway_api_crds: list[str]) -> None:
    """An existing Gateway (the platform team's), whose listener admits the tenants' namespace."""
    ns, infra = kube.namespace("gwx"), plain_namespace(kube, "infra")
    existing = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "shared", "namespace": infra},
                "spec": {"gatewayClassName": "openhands-test", "listeners": [{
                    "name": "https", "hostname": "*.agents.example.com", "port": 443, "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "wildcard-tls"}]},
                    "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {
                        "kubernetes.io/metadata.name": ns}}}}}]}}
    kube.client.request("POST", f"/apis/gateway.networking.k8s.io/v1/namespaces/{infra}/gateways",
                        json.dumps(existing))
    r = render_k8s(ns, ["alpha"], **TO_GATEWAY, **{"kubernetes.tls": None, "kubernetes.gateway": {
        "name": "shared", "namespace": infra, "sectionName": "https"}})
    assert not manifests(r, "Gateway")
    volumes_for(kube, r, ns)
    _, steps = up(kube, r)
    assert "HTTPRoute" in by_kind(steps)
    (route,) = [whole_numbers(m) for m in manifests(r, "HTTPRoute")]
    live = kube.get(GATEWAY_API.format(ns=ns, plural="httproutes", name=route["metadata"]["name"]))
    assert not subset(route["spec"], live["spec"]), subset(route["spec"], live["spec"])
    assert live["spec"]["parentRefs"][0]["namespace"] == infra


# ------------------------------------------------------------------ the applier itself


def test_the_applier_fails_on_a_resource_type_it_does_not_know(kube_cluster) -> None:
    r = render_k8s("t-unknown", ["alpha"])
    r.resources[0].type = "kubernetes:batch/v1:CronJob"
    r.resources[0].custom = True
    with pytest.raises(UnknownResourceType, match="kubernetes:batch/v1:CronJob"):
        Applier(kube_cluster.kubeconfig).apply(r, StackState())


def test_the_server_reports_the_version_we_claim(kube_cluster) -> None:
    from components.kubernetes import SUPPORTED_K8S_VERSIONS

    info, _ = kube_cluster.client.request("GET", "/version")
    version = tuple(int(x) for x in info["gitVersion"].lstrip("v").split(".")[:2])
    low, high = (tuple(int(x) for x in v.split(".")[:2]) for v in SUPPORTED_K8S_VERSIONS)
    assert low <= version <= high, info["gitVersion"]
