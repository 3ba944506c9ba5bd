"""The Kubernetes model against a real API server (kube-apiserver, controller-manager,
scheduler, etcd, built by scripts/kube; kwok plays the node and its pods).

The user's path (up, second preview, rotation, down and re-attach, delete-data, storageSize,
dev and prod) runs through the real engine and provider in tests/real/engine/test_kube_up.py. What stays
here, applied by tests/harness/kube_apply.py (our replay of pulumi-kubernetes, see its docstring), is
what the engine run does not reach cheaply: many config variants against admission (Pod
Security ``restricted``) and server-side validation, two stacks' field managers in one
namespace, the resize procedure on an expandable StorageClass, and the Gateway API custom
resources (no Gateway controller runs here). What kwok does not prove: a real kubelet (image
pull, probes, the read-only root, the volume mount), CNI enforcement of the NetworkPolicy, an
ingress controller and cert-manager's issuance.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from openhands_cli.render import Rendered, render
from tests.harness.kube_apply import Applier, ApplyError, StackState, Step, UnknownResourceType, whole_numbers

if TYPE_CHECKING:
    from tests.harness.real_kube import Kube

pytest_plugins = ["tests.harness.real_kube"]  # the kube_cluster and kube fixtures
STORAGE_CLASS = "openhands-test"  # tests/harness/real_kube.py creates it

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


# ------------------------------------------------------------------ two stacks, one namespace


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


def test_storage_resize_procedure_is_accepted_by_the_api_server(kube: Kube) -> None:
    """The documented procedure (docs/kubernetes.md): grow the claim itself (its StorageClass must allow expansion),
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
