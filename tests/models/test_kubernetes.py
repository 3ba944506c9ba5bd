"""The Kubernetes model, offline: rendered manifests, validators, and the real server.

Every rendered object is checked with kubernetes-validate (strict) against the oldest
and newest Kubernetes version we claim (SUPPORTED_VERSIONS), and with checkov; then the
container spec taken from the rendered StatefulSet boots the real agent server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from components import contract
from components.config import ConfigError
from components.kubernetes import SUPPORTED_K8S_VERSIONS
from openhands_cli.render import Rendered, imported_sdks_for, render
from tests.harness import checkov_runner
from tests.harness.kube_apply import whole_numbers

STACK = "k8s"
THREE = ["alpha", "bravo", "charlie"]
# The range we claim (docs/kubernetes.md): the oldest and newest schemas kubernetes-validate ships.
SUPPORTED_VERSIONS = SUPPORTED_K8S_VERSIONS


# ------------------------------------------------------------------ helpers


def manifests(r: Rendered) -> list[dict[str, Any]]:
    return [x.inputs for x in r.resources if x.type.startswith("kubernetes:")]


def of_kind(r: Rendered, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(r) if m["kind"] == kind]


def by_name(r: Rendered, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in of_kind(r, kind)}


def tenant_of(m: dict[str, Any]) -> str:
    return m["metadata"]["labels"]["openhands.dev/tenant"]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def resolved_env(r: Rendered, sts: dict[str, Any]) -> dict[str, str]:
    """The container env as the kubelet would build it: secretKeyRefs read from the rendered Secret."""
    secrets = by_name(r, "Secret")
    env = {}
    for e in container(sts)["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


# ------------------------------------------------------------------ validators


VARIANTS = {
    "stack file, 1 tenant": {},
    "3 tenants": {"tenants": THREE},
    "existing TLS secret, reused namespace": {
        "kubernetes.tls": {"secretName": "wildcard-agents-tls"}, "kubernetes.createNamespace": False,
        "kubernetes.storageClass": None,
    },
    "namespaced issuer, restricted egress, RWOP, no retention": {
        "kubernetes.tls": {"issuer": "letsencrypt"},
        "kubernetes.accessMode": "ReadWriteOncePod",
        "kubernetes.egress": {"allowCidrs": ["0.0.0.0/0", "10.0.0.0/8"], "exceptCidrs": ["169.254.169.254/32"]},
        "retainData": False,
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_object_passes_kubernetes_validate_strict(variant: str, version: str) -> None:
    r = render(STACK, overrides=VARIANTS[variant])
    objs = manifests(r)
    assert {m["kind"] for m in objs} >= {"Secret", "ServiceAccount", "StatefulSet", "Service", "Ingress",
                                         "NetworkPolicy"}
    for m in objs:
        assert m["metadata"].get("name"), f"{m['kind']} has no explicit name"
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{m['kind']}/{m['metadata']['name']} is invalid for Kubernetes {version}: {exc.message}")


def test_supported_versions_are_what_kubernetes_validate_ships() -> None:
    from kubernetes_validate.utils import all_versions

    shipped = all_versions()
    assert shipped[0] == SUPPORTED_VERSIONS[0] and shipped[-1] == SUPPORTED_VERSIONS[-1], shipped


def test_checkov_finds_nothing_beyond_the_documented_skips(three: Rendered, tmp_path: Path) -> None:
    skips = checkov_runner.skips()
    assert skips and all(reason.strip() and "\n" not in reason.strip() for reason in skips.values())
    checkov_runner.write_manifests([whole_numbers(m) for m in manifests(three)], tmp_path / "manifests")
    report = checkov_runner.run(tmp_path / "manifests")
    assert report["summary"]["parsing_errors"] == 0
    # checkov counts each object, plus each container on its own.
    assert report["summary"]["resource_count"] == len(manifests(three)) + len(of_kind(three, "StatefulSet"))
    assert report["summary"]["passed"] > 50
    failed = {(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]}
    unexpected = sorted(f for f in failed if f[0] not in skips)
    assert not unexpected, f"checkov findings not in tests/harness/checkov_skips.yaml: {unexpected}"
    stale = sorted(set(skips) - {check for check, _ in failed})
    assert not stale, f"skips that no longer fail, remove them: {stale}"


# ------------------------------------------------------------------ what users notice


def test_no_key_is_a_literal_env_value(three: Rendered) -> None:
    api_keys = three.outputs["apiKey"]
    for secret in of_kind(three, "Secret"):
        values = set(secret["stringData"].values())
        assert len(values) >= 2  # session key + secret key
        dumped = json.dumps(of_kind(three, "StatefulSet"))
        assert not any(v in dumped for v in values), "a key value appears in a StatefulSet"
    for sts in of_kind(three, "StatefulSet"):
        env = container(sts)["env"]
        for e in env:
            if e["name"].startswith(("OH_SESSION_API_KEYS", "OH_SECRET_KEY", "OH_PREVIOUS_SECRET_KEYS")):
                assert "value" not in e and e["valueFrom"]["secretKeyRef"], e
        assert not any(e.get("value") in api_keys.values() for e in env)
    # The Secret's data reached the engine as a secret, not plain state.
    for res in three.resources:
        if res.type == "kubernetes:core/v1:Secret":
            assert res.is_secret("stringData") or any(p.startswith("stringData") for p in res.secret_paths)
    assert "apiKey" in three.secret_outputs


def test_secret_key_refs_cover_every_key_name_and_rotation_rolls_the_pod() -> None:
    before = render(STACK)
    after = render(STACK, overrides={"keys": {"rotation": 1}})

    def refs(r: Rendered) -> list[str]:
        return [e["name"] for e in container(of_kind(r, "StatefulSet")[0])["env"] if "valueFrom" in e]

    def checksum(r: Rendered) -> str:
        return of_kind(r, "StatefulSet")[0]["spec"]["template"]["metadata"]["annotations"][
            "openhands.dev/keys-checksum"]

    assert refs(before) == ["OH_SESSION_API_KEYS_0", "OH_SECRET_KEY"]
    assert set(refs(after)) == set(of_kind(after, "Secret")[0]["stringData"])
    # After a rotation the previous session key still works and the old secret key still decrypts.
    assert refs(after) == ["OH_SESSION_API_KEYS_0", "OH_SESSION_API_KEYS_1", "OH_SECRET_KEY",
                           "OH_PREVIOUS_SECRET_KEYS_0"]
    assert len(checksum(before)) == 64 and checksum(before) != checksum(after)


def test_probes_ports_and_args_follow_the_contract(one: Rendered) -> None:
    c = container(of_kind(one, "StatefulSet")[0])
    assert c["args"] == contract.args()
    assert c["ports"] == [{"name": contract.PORT_NAME, "containerPort": contract.PORT, "protocol": "TCP"}]
    for field, probe in (("startupProbe", contract.STARTUP_PROBE), ("readinessProbe", contract.READINESS_PROBE),
                         ("livenessProbe", contract.LIVENESS_PROBE)):
        p = c[field]
        assert p["httpGet"]["path"] == probe.path and p["httpGet"]["port"] == contract.PORT_NAME
        assert (p["periodSeconds"], p["timeoutSeconds"], p["failureThreshold"]) == (
            probe.period_seconds, probe.timeout_seconds, probe.failure_threshold)
    assert c["startupProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/alive"
    # Room for the measured 6-11 s start plus a state scan before liveness can kill the pod.
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    # The API server's canonical form (tests/real/kubernetes/test_kube_real.py reads it back unchanged).
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                              "limits": {"cpu": "1", "memory": "2Gi"}}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: env[k] for k in contract.container_env()} == contract.container_env()


def test_pod_is_hardened(one: Rendered) -> None:
    sts = of_kind(one, "StatefulSet")[0]
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": contract.UID, "runAsGroup": contract.GID, "fsGroup": contract.GID,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # Read-only root: every scratch dir the server writes is an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in contract.SCRATCH_DIRS:
        assert "emptyDir" in volumes[mounts[path]], path
    assert mounts[contract.DATA_DIR] == "state"
    (sa,) = of_kind(one, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == sa["metadata"]["name"] and pod["automountServiceAccountToken"] is False
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == contract.ROLE and labels["openhands.dev/tenant"] == "default"
    (ns,) = of_kind(one, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_one_pod_per_volume_and_the_claim_survives_destroy(one: Rendered) -> None:
    assert not of_kind(one, "Deployment") and not of_kind(one, "PersistentVolumeClaim")
    sts = of_kind(one, "StatefulSet")[0]
    spec = sts["spec"]
    assert spec["replicas"] == 1 and spec["podManagementPolicy"] == "OrderedReady"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == "gp3" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert not any("persistentVolumeClaim" in v for v in spec["template"]["spec"]["volumes"])
    # Every state path of the contract lives on the claim.
    assert all(p.startswith(contract.DATA_DIR + "/") for p in contract.state_paths())
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Deleting a namespace deletes its claims: the namespace is kept too.
    (ns,) = [x for x in one.resources if x.type == "kubernetes:core/v1:Namespace"]
    assert ns.retain_on_delete
    assert one.outputs["stateClaims"] == {"default": "state-openhands-k8s-default-0"}
    # A storageSize change must not replace the StatefulSet (immutable template; with
    # retainData false that would delete the claim): the provider is told to ignore it.
    (sts_res,) = one.of_type("kubernetes:apps/v1:StatefulSet")
    assert sts_res.ignore_changes == ["spec.volumeClaimTemplates"]

    opted_out = render(STACK, overrides={"retainData": False})
    sts = of_kind(opted_out, "StatefulSet")[0]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert not [x for x in opted_out.resources if x.type == "kubernetes:core/v1:Namespace"][0].retain_on_delete


def test_ingress_tls_host_and_websocket_timeouts_per_tenant(three: Rendered) -> None:
    ingresses = of_kind(three, "Ingress")
    assert sorted(tenant_of(i) for i in ingresses) == THREE
    services = by_name(three, "Service")
    for ing in ingresses:
        t = tenant_of(ing)
        host = f"{t}.agents.example.com"
        (rule,) = ing["spec"]["rules"]
        (tls,) = ing["spec"]["tls"]
        assert rule["host"] == host and tls["hosts"] == [host]
        assert tls["secretName"] == f"openhands-k8s-{t}-tls"
        assert ing["spec"]["ingressClassName"] == "nginx"
        ann = ing["metadata"]["annotations"]
        assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
        assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
        assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
        assert ann["haproxy.org/timeout-tunnel"] == "3600s"
        (path,) = rule["http"]["paths"]
        backend = path["backend"]["service"]
        assert path["path"] == "/" and path["pathType"] == "Prefix"  # /api and /sockets/*
        svc = services[backend["name"]]
        assert tenant_of(svc) == t and svc["spec"]["type"] == "ClusterIP"
        assert svc["spec"]["ports"][0]["port"] == contract.PORT
    assert three.outputs["url"] == {t: f"https://{t}.agents.example.com" for t in THREE}

    existing = render(STACK, overrides={"kubernetes.tls": {"secretName": "wildcard-tls"}})
    (ing,) = of_kind(existing, "Ingress")
    assert ing["spec"]["tls"][0]["secretName"] == "wildcard-tls"
    assert not any(k.startswith("cert-manager.io/") for k in ing["metadata"]["annotations"])


def test_network_policy_per_tenant(three: Rendered) -> None:
    policies = of_kind(three, "NetworkPolicy")
    assert sorted(tenant_of(p) for p in policies) == THREE
    pods = {tenant_of(s): s["spec"]["template"]["metadata"]["labels"] for s in of_kind(three, "StatefulSet")}
    for p in policies:
        spec = p["spec"]
        t = tenant_of(p)
        sel = spec["podSelector"]["matchLabels"]
        assert [u for u, labels in pods.items() if sel.items() <= labels.items()] == [t]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        (rule,) = spec["ingress"]
        ingress_ns = {"kubernetes.io/metadata.name": "ingress-nginx"}
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": ingress_ns}}]
        assert rule["ports"] == [{"protocol": "TCP", "port": contract.PORT}]
        assert spec["egress"] == [{}]  # open by default: the internet and the LLM

    narrowed = render(STACK, overrides={
        "kubernetes.ingressNamespace": "traefik",
        "kubernetes.egress": {"allowCidrs": ["0.0.0.0/0"], "exceptCidrs": ["169.254.169.254/32", "10.0.0.0/8"]}})
    (spec,) = [p["spec"] for p in of_kind(narrowed, "NetworkPolicy")]
    source = spec["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    assert source == {"kubernetes.io/metadata.name": "traefik"}
    assert spec["egress"] == [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32", "10.0.0.0/8"]}}]},
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    ]
    no_dns = render(STACK, overrides={"kubernetes.egress": {"allowCidrs": ["203.0.113.0/24"], "allowDns": False}})
    assert of_kind(no_dns, "NetworkPolicy")[0]["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]


def test_three_tenants_are_three_isolated_servers(three: Rendered) -> None:
    sts = {tenant_of(s): s for s in of_kind(three, "StatefulSet")}
    assert sorted(sts) == THREE
    secrets = {tenant_of(s): s for s in of_kind(three, "Secret")}
    sas = {tenant_of(s): s["metadata"]["name"] for s in of_kind(three, "ServiceAccount")}
    services = {tenant_of(s): s for s in of_kind(three, "Service")}
    claims, selectors = set(), []
    for t, s in sts.items():
        spec = s["spec"]
        claims.add(f"{spec['volumeClaimTemplates'][0]['metadata']['name']}-{s['metadata']['name']}-0")
        selectors.append(json.dumps(spec["selector"], sort_keys=True))
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container(s)["env"] if "valueFrom" in e}
        assert refs == {secrets[t]["metadata"]["name"]}
        assert spec["template"]["spec"]["serviceAccountName"] == sas[t]
        # Each Service selects its own tenant's pod and no other.
        svc_sel = services[t]["spec"]["selector"]
        pod_labels = {u: o["spec"]["template"]["metadata"]["labels"] for u, o in sts.items()}
        assert [u for u, labels in pod_labels.items() if svc_sel.items() <= labels.items()] == [t]
    assert len(claims) == len(set(selectors)) == len(set(sas.values())) == 3
    assert len({s["metadata"]["name"] for s in secrets.values()}) == 3
    keys = [tuple(s["stringData"].values()) for s in secrets.values()]
    assert len({k for ks in keys for k in ks}) == 6  # no key shared between tenants
    assert set(three.outputs["stateClaims"].values()) == claims
    assert len(set(three.outputs["apiKey"].values())) == 3


def test_provider_uses_a_secret_kubeconfig_and_context() -> None:
    ambient = render(STACK)
    (prov,) = [x for x in ambient.resources if x.type == "pulumi:providers:kubernetes"]
    assert "kubeconfig" not in prov.inputs and "context" not in prov.inputs
    kinds = [x for x in ambient.resources if x.type.startswith("kubernetes:")]
    assert kinds and all(x.provider.startswith(prov.urn) for x in kinds)

    kubeconfig = "apiVersion: v1\nkind: Config\nclusters: []\n"
    given = render(STACK, secrets={"kubernetes.kubeconfig": kubeconfig, "kubernetes.context": "prod"})
    (prov,) = [x for x in given.resources if x.type == "pulumi:providers:kubernetes"]
    assert prov.inputs["kubeconfig"] == kubeconfig and prov.is_secret("kubeconfig")
    assert prov.inputs["context"] == "prod"


# ------------------------------------------------------------------ bad config


BAD = {
    "missing domain": ({"kubernetes.domain": None}, "openhands:kubernetes.domain: is required"),
    "missing tls": ({"kubernetes.tls": None}, "openhands:kubernetes.tls: is required"),
    "clusterIssuer and secretName": ({"kubernetes.tls.secretName": "x"}, "set exactly one of clusterIssuer"),
    "unknown key": ({"kubernetes.storageClas": "gp3"}, "did you mean 'storageClass'"),
    "bad size": ({"kubernetes.storageSize": "10GB"}, "openhands:kubernetes.storageSize"),
    "kubeconfig in plain text": ({"kubernetes.kubeconfig": "apiVersion: v1"}, "a kubeconfig is a credential"),
    "except outside allow": (
        {"kubernetes.egress": {"allowCidrs": ["10.0.0.0/8"], "exceptCidrs": ["192.168.0.0/16"]}},
        "not strictly inside",
    ),
    "reserved namespace": ({"kubernetes.namespace": "kube-system"}, "reserved"),
    "name prefix too long": ({"kubernetes.namePrefix": "a" * 27}, "openhands:kubernetes.namePrefix"),
    "name prefix not a label": ({"kubernetes.namePrefix": "Prod_1"}, "openhands:kubernetes.namePrefix"),
    "renderTo blank": ({"kubernetes.renderTo": "  "}, "renderTo is a directory path"),
    "renderTo is a file": ({"kubernetes.renderTo": "Pulumi.yaml"}, "exists and is not a directory"),
    "toleration without a key": ({"kubernetes.tolerations": [{"value": "x"}]}, "needs operator Exists"),
    "toleration Exists with a value": ({"kubernetes.tolerations": [{"key": "a", "operator": "Exists", "value": "v"}]},
                                       "takes no value"),
    "nodeSelector bad key": ({"kubernetes.nodeSelector": {"bad key!": "x"}}, "not a valid label key"),
    "renderTo with a context": ({"kubernetes.renderTo": "out", "kubernetes.context": "prod"},
                                "renderTo writes manifests without contacting a cluster"),
    "no kubernetes object": ({"kubernetes": None}, "needs the 'kubernetes' object"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_is_a_config_error_with_nothing_registered(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from openhands_cli import render as render_mod

    monitors: list[Any] = []

    class Recording(render_mod._Monitor):
        def __init__(self, mocks):
            super().__init__(mocks)
            monitors.append(self)

    monkeypatch.setattr(render_mod, "_Monitor", Recording)
    overrides, message = BAD[case]
    with pytest.raises(ConfigError) as exc:
        render(STACK, overrides=overrides)
    assert message in str(exc.value)
    assert monitors and monitors[-1].records == []


def test_k8s_program_imports_no_aws_sdk() -> None:
    sdks = imported_sdks_for(STACK)
    assert "pulumi_kubernetes" in sdks and "pulumi_aws" not in sdks, sdks


# ------------------------------------------------------------------ the real server


def test_rendered_container_spec_boots_the_real_agent_server(one: Rendered, start_agent_server) -> None:
    sts = of_kind(one, "StatefulSet")[0]
    c = container(sts)
    env = resolved_env(one, sts)
    key = one.outputs["apiKey"]["default"]
    assert env["OH_SESSION_API_KEYS_0"] == key
    server = start_agent_server(env, c["args"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        status, _ = server.get(c[probe]["httpGet"]["path"])
        assert status == 200, probe
    assert server.get("/api/conversations/count")[0] == 401
    assert server.get("/api/conversations/count", key="wrong")[0] == 401
    assert server.get("/api/conversations/count", key=key) == (200, "0")
    # State lands on the data volume, per the rendered env.
    assert (server.workdir / "data" / "conversations").is_dir()


def test_server_runs_on_a_read_only_root_with_the_rendered_scratch_dirs(one: Rendered) -> None:
    """readOnlyRootFilesystem, emulated: in a private mount namespace / is remounted read-only,
    /tmp is a fresh tmpfs (the /tmp emptyDir), and only the data and home dirs stay writable.
    The server must start, serve /ready and create a conversation (state writes) without a
    write error. The image runs a PyInstaller build of the same code; this runs the wheel."""
    from tests.harness import agent_server
    from tests.harness.ci import unavailable

    if not (os.geteuid() == 0 and shutil.which("unshare")):
        unavailable("needs root and unshare(1) to give the server a read-only root filesystem")

    sts = of_kind(one, "StatefulSet")[0]
    c = container(sts)
    assert "/tmp" in contract.SCRATCH_DIRS
    key = one.outputs["apiKey"]["default"]
    # Outside /tmp, which the namespace replaces with an empty tmpfs.
    workdir = Path(tempfile.mkdtemp(prefix="oh-k8s-ro-", dir="/var/tmp"))
    data, home = workdir / "data", workdir / "home"
    for d in (data, home):
        d.mkdir()
    port = agent_server.free_port()
    env = contract.map_paths(resolved_env(one, sts), {contract.DATA_DIR: str(data), contract.HOME_DIR: str(home)})
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", **env}
    exe = agent_server.ensure_agent_server()
    script = "set -e; mount --make-rprivate /; "
    script += "".join(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))}; " for d in (data, home))
    venv = agent_server.venv_dir().resolve()
    keep = [venv] if venv.is_relative_to("/tmp") else []  # e.g. a CI clone under /tmp
    for i, path in enumerate(keep):  # carry it through the fresh /tmp at the same path
        stage = workdir / f"keep{i}"
        stage.mkdir()
        script += f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(stage))}; "
    script += "mount -t tmpfs -o size=1g,mode=1777 scratch /tmp; "
    for i, path in enumerate(keep):
        q = shlex.quote(str(path))
        script += f"mkdir -p {q}; mount --bind {shlex.quote(str(workdir / f'keep{i}'))} {q}; "
    script += "mount -o remount,bind,ro /; cd /; "
    script += "exec " + " ".join(shlex.quote(a) for a in [str(exe), *agent_server.local_args(c["args"], port)])
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = agent_server.RunningServer(process=proc, port=port, workdir=workdir, env=full_env, log=log)
    try:
        agent_server.wait_ready(server)
        assert server.get(c["readinessProbe"]["httpGet"]["path"])[0] == 200
        status, body = agent_server.http(
            "POST", server.url + "/api/conversations", {contract.AUTH_HEADER: key},
            {"agent": {"llm": {"model": "openai/gpt-4o", "api_key": "dummy"}, "tools": []},
             "workspace": {"working_dir": f"{data}/project"}},
        )
        assert status == 201, body[:500]
        assert server.get("/api/conversations/count", key=key) == (200, "1")
        # The root really was read-only for the server, and it never needed to write there.
        probe = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "touch", "/oh-ro-probe"],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Read-only" in probe.stderr
    finally:
        server.stop()
        text = log.read_text(errors="replace")
        shutil.rmtree(workdir, ignore_errors=True)
    assert "Read-only file system" not in text, text[-3000:]


# ------------------------------------------------------------------ names (issue 13)


def global_names(r: Rendered) -> set[tuple[str, str | None, str]]:
    """(kind, namespace, name) of every object: what must not be shared between stacks."""
    return {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests(r)}


def test_two_stacks_side_by_side_share_no_name() -> None:
    from tests.operator.test_promotion import dev_outputs

    same_tenants = {"tenants": ["acme", "globex"]}
    k8s = render(STACK, overrides=same_tenants)
    prod = render("prod", overrides=same_tenants, stack_outputs=dev_outputs())
    dev = render("dev", overrides=same_tenants)
    stacks = {"k8s": global_names(k8s), "prod": global_names(prod), "dev": global_names(dev)}
    for a in stacks:
        for b in stacks:
            if a < b:
                assert not stacks[a] & stacks[b], (a, b, stacks[a] & stacks[b])
    # Even forced into one namespace, the object names differ (kind and name).
    shared = {"kubernetes.namespace": "openhands", **same_tenants}
    a = {(k, n) for k, _, n in global_names(render(STACK, overrides=shared)) if k != "Namespace"}
    b = {(k, n) for k, _, n in global_names(render("prod", overrides=shared, stack_outputs=dev_outputs()))
         if k != "Namespace"}
    assert not a & b, a & b
    # Each stack has its own namespace by default.
    assert k8s.outputs["namespace"] == "openhands-k8s" and prod.outputs["namespace"] == "openhands-prod"


def test_another_project_gets_other_names_and_long_ones_are_shortened_stably() -> None:
    from components.config import KubernetesSettings
    from components.config.kubernetes import MAX_PREFIX

    settings = KubernetesSettings.model_validate({"domain": "example.com", "tls": {"clusterIssuer": "x"}})
    assert settings.object_prefix("openhands", "prod") == "openhands-prod"
    assert settings.object_prefix("acme-agents", "prod") == "openhands-acme-agents-prod"
    stack = "feature-branch-with-a-very-long-name"
    long = settings.object_prefix("openhands", stack)
    assert len(long) <= MAX_PREFIX and long == settings.object_prefix("openhands", stack)  # stable
    assert long != settings.object_prefix("openhands", stack + "2")  # the hash tells them apart
    label = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for project, stack in (("OpenHands_Deploy", "Prod.EU"), ("openhands", "x" * 90), ("openhands", "dev--1")):
        p = settings.object_prefix(project, stack)
        assert len(p) <= MAX_PREFIX and label.match(p), p
    pinned = KubernetesSettings.model_validate({"domain": "example.com", "tls": {"clusterIssuer": "x"},
                                                "namePrefix": "agent"})
    assert pinned.object_prefix("openhands", "prod") == "agent"  # the names of earlier releases


def test_longest_names_fit_kubernetes_limits() -> None:
    """A 26-character prefix and a 20-character tenant: every name is a valid DNS label, and
    the StatefulSet name leaves room for the controller-revision-hash pod label (63)."""
    tenant = "t" * 20
    r = render(STACK, overrides={"kubernetes.namePrefix": "p" * 26, "tenants": [tenant]})
    for m in manifests(r):
        assert len(m["metadata"]["name"]) <= 63, m["metadata"]["name"]
    (sts,) = of_kind(r, "StatefulSet")
    assert len(sts["metadata"]["name"]) + 1 + 10 <= 63


# ------------------------------------------------------------------ renderTo (issue 11)


def test_render_to_sets_the_providers_directory_and_writes_no_plaintext_key() -> None:
    """The provider's inputs; the files it writes are checked through the real provider in
    tests/real/engine/test_kube_up.py."""
    r = render(STACK, overrides={"kubernetes.renderTo": "rendered/k8s", "tenants": THREE})
    (prov,) = r.of_type("pulumi:providers:kubernetes")
    # Passed as written: the engine starts the provider in the project directory, and a
    # relative path keeps the provider's inputs equal between checkouts at other paths.
    assert prov.inputs["renderYamlToDirectory"] == "rendered/k8s"
    assert not of_kind(r, "Secret"), "the provider would write the keys in plaintext"
    assert any("renderTo" in w and "not written" in w for w in r.warnings), r.warnings
    # The pods still read the keys by reference, from the Secret the user provides.
    for sts in of_kind(r, "StatefulSet"):
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container(sts)["env"] if "valueFrom" in e}
        assert refs == {f"openhands-k8s-{tenant_of(sts)}-keys"}
    absolute = render(STACK, overrides={"kubernetes.renderTo": "/tmp/openhands-rendered"})
    assert absolute.one("pulumi:providers:kubernetes").inputs["renderYamlToDirectory"] == "/tmp/openhands-rendered"
    assert "renderYamlToDirectory" not in render(STACK).one("pulumi:providers:kubernetes").inputs


# ------------------------------------------------------------------ Gateway API routing (issue 19)

GATEWAY_NS = "gateway-system"
# The k8s stack file sets ingressClass and ingressNamespace: ingress-only keys, removed for routing: gateway.
TO_GATEWAY = {"kubernetes.routing": "gateway", "kubernetes.ingressClass": None, "kubernetes.ingressNamespace": None}
CREATED = {**TO_GATEWAY, "kubernetes.gateway": {"create": True, "namespace": GATEWAY_NS, "className": "eg"}}
EXISTING = {**TO_GATEWAY, "kubernetes.tls": None,
            "kubernetes.gateway": {"name": "shared", "namespace": "infra", "sectionName": "https",
                                   "proxyNamespace": "envoy-gateway-system"}}


def render_gw(overrides: dict[str, Any]) -> Rendered:
    # A copy: render() sets dotted keys inside the objects it is given.
    return render(STACK, overrides=copy.deepcopy(overrides))


def gateway_kinds(r: Rendered) -> list[str]:
    return sorted(m["kind"] for m in manifests(r) if m["apiVersion"].startswith("gateway.networking.k8s.io/"))


def test_ingress_stays_the_default_and_an_explicit_ingress_renders_the_same(one: Rendered) -> None:
    assert gateway_kinds(one) == [] and len(of_kind(one, "Ingress")) == 1
    explicit = render_gw({"kubernetes.routing": "ingress"})

    def dump(r: Rendered) -> list[str]:  # registration order varies between renders
        return sorted(json.dumps(m, sort_keys=True) for m in manifests(r))

    assert dump(explicit) == dump(one)


def test_created_gateway_has_an_https_listener_per_tenant_and_a_route_each() -> None:
    r = render_gw({**CREATED, "tenants": THREE})
    assert not of_kind(r, "Ingress")
    (gw,) = of_kind(r, "Gateway")
    assert gw["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gw["metadata"]["name"] == "openhands-k8s" and gw["metadata"]["namespace"] == GATEWAY_NS
    # cert-manager's gateway-shim: the same annotation as on an Ingress, one certificate per listener.
    assert gw["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}
    assert gw["spec"]["gatewayClassName"] == "eg"
    listeners = {x["name"]: x for x in gw["spec"]["listeners"]}
    assert sorted(listeners) == THREE
    routes = {tenant_of(m): m for m in of_kind(r, "HTTPRoute")}
    assert sorted(routes) == THREE
    services = by_name(r, "Service")
    for t in THREE:
        host = f"{t}.agents.example.com"
        assert listeners[t] == {
            "name": t, "hostname": host, "port": 443, "protocol": "HTTPS",
            "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": f"openhands-k8s-{t}-tls"}]},
            "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {
                "kubernetes.io/metadata.name": "openhands-k8s"}}}, "kinds": [{"kind": "HTTPRoute"}]},
        }
        route = routes[t]
        assert route["metadata"]["name"] == f"openhands-k8s-{t}"
        assert route["metadata"]["namespace"] == "openhands-k8s"
        spec = route["spec"]
        # Attached to its own listener only, on the same host the Ingress would use.
        assert spec["parentRefs"] == [{"name": "openhands-k8s", "namespace": GATEWAY_NS, "sectionName": t}]
        assert spec["hostnames"] == [host]
        (rule,) = spec["rules"]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
        (backend,) = rule["backendRefs"]
        svc = services[backend["name"]]
        assert tenant_of(svc) == t and backend["port"] == svc["spec"]["ports"][0]["port"] == contract.PORT
        assert rule["timeouts"] == {"request": "3600s"}  # WebSockets, as the Ingress annotations
    assert r.outputs["url"] == {t: f"https://{t}.agents.example.com" for t in THREE}
    # The Gateway and each route are children of the model's components, created in order.
    (gw_res,) = r.of_type("kubernetes:gateway.networking.k8s.io/v1:Gateway")
    assert gw_res.parent.endswith("KubernetesDeployment::kubernetes")
    for route_res in r.of_type("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"):
        assert route_res.parent.endswith(f"AgentServer::{route_res.name.removesuffix('-route')}")
        assert gw_res.urn in route_res.dependencies


def test_network_policy_admits_the_gateway_namespace_or_its_proxy_namespace() -> None:
    for overrides, source in ((CREATED, GATEWAY_NS), (EXISTING, "envoy-gateway-system"),
                              ({**EXISTING, "kubernetes.gateway.proxyNamespace": None}, "infra")):
        (policy,) = of_kind(render_gw(overrides), "NetworkPolicy")
        (rule,) = policy["spec"]["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": source}}}]
        assert rule["ports"] == [{"protocol": "TCP", "port": contract.PORT}]


def test_existing_gateway_gets_routes_only_and_needs_no_tls() -> None:
    r = render_gw({**EXISTING, "tenants": ["alpha", "bravo"]})
    assert gateway_kinds(r) == ["HTTPRoute", "HTTPRoute"]
    for route in of_kind(r, "HTTPRoute"):
        assert route["spec"]["parentRefs"] == [{"name": "shared", "namespace": "infra", "sectionName": "https"}]
    no_section = render_gw({**EXISTING, "kubernetes.gateway.sectionName": None})
    assert of_kind(no_section, "HTTPRoute")[0]["spec"]["parentRefs"] == [{"name": "shared", "namespace": "infra"}]


def test_created_gateway_tls_from_an_issuer_or_an_existing_secret() -> None:
    issuer = render_gw({**CREATED, "kubernetes.tls": {"issuer": "letsencrypt"}})
    (gw,) = of_kind(issuer, "Gateway")
    assert gw["metadata"]["annotations"] == {"cert-manager.io/issuer": "letsencrypt"}
    wildcard = render_gw({**CREATED, "kubernetes.tls": {"secretName": "wildcard-tls"},
                                        "kubernetes.gateway.name": "agents", "tenants": THREE})
    (gw,) = of_kind(wildcard, "Gateway")
    assert "annotations" not in gw["metadata"] and gw["metadata"]["name"] == "agents"
    refs = {x["tls"]["certificateRefs"][0]["name"] for x in gw["spec"]["listeners"]}
    assert refs == {"wildcard-tls"}
    assert {m["spec"]["parentRefs"][0]["name"] for m in of_kind(wildcard, "HTTPRoute")} == {"agents"}


def test_created_gateway_in_the_tenants_namespace_waits_for_it() -> None:
    r = render_gw({**CREATED, "kubernetes.gateway.namespace": "openhands-k8s",
                                 "kubernetes.gateway.proxyNamespace": "envoy-gateway-system"})
    (gw_res,) = r.of_type("kubernetes:gateway.networking.k8s.io/v1:Gateway")
    (ns_res,) = r.of_type("kubernetes:core/v1:Namespace")
    assert gw_res.inputs["metadata"]["namespace"] == "openhands-k8s" and ns_res.urn in gw_res.dependencies


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("overrides", [CREATED, EXISTING], ids=["created", "existing"])
def test_gateway_variants_built_in_objects_pass_kubernetes_validate_strict(overrides: dict[str, Any],
                                                                          version: str) -> None:
    """The Gateway API objects are custom resources (no schema here): tests/real/kubernetes/test_kube_real.py has the
    API server validate them against the CRDs."""
    for m in manifests(render_gw(overrides)):
        if m["apiVersion"].startswith("gateway.networking.k8s.io/"):
            continue
        kubernetes_validate.validate(m, version, strict=True)


@pytest.mark.parametrize("overrides", [CREATED, EXISTING], ids=["created", "existing"])
def test_gateway_stacks_pass_the_policy_pack(overrides: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from openhands_cli import check

    argv = ["-s", STACK, "--json"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}=" + ("" if value is None else json.dumps(value))]
    assert check.main(argv) == 0, capsys.readouterr()
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["summary"]["mandatoryViolations"] == 0, report
    assert {p["name"]: p["violations"] for p in report["policies"]}["ingress-tls"] == 0
    assert "no schema for Gateway" in report["validators"]["kubernetes-validate"] or "HTTPRoute" in \
        report["validators"]["kubernetes-validate"]


GATEWAY_BAD = {
    "ingress key with gateway routing": (
        {**CREATED, "kubernetes.ingressClass": "nginx"},
        "openhands:kubernetes.ingressClass: is for routing: ingress"),
    "ingress annotations with gateway routing": (
        {**CREATED, "kubernetes.ingressAnnotations": {"a/b": "c"}},
        "openhands:kubernetes.ingressAnnotations: is for routing: ingress"),
    "gateway routing without a gateway": (TO_GATEWAY, "openhands:kubernetes.gateway: is required with routing"),
    "gateway with ingress routing": (
        {"kubernetes.gateway": {"name": "x", "namespace": "infra"}},
        "openhands:kubernetes.gateway: is for routing: gateway"),
    "existing gateway without a name": (
        {**EXISTING, "kubernetes.gateway.name": None}, "openhands:kubernetes.gateway.name: is required"),
    "created gateway without a class": (
        {**CREATED, "kubernetes.gateway.className": None},
        "openhands:kubernetes.gateway.className: is required with create: true"),
    "class of an existing gateway": (
        {**EXISTING, "kubernetes.gateway.className": "eg"}, "openhands:kubernetes.gateway.className: is only for"),
    "section of a created gateway": (
        {**CREATED, "kubernetes.gateway.sectionName": "https"},
        "openhands:kubernetes.gateway.sectionName: is only for an existing Gateway"),
    "tls with an existing gateway": (
        {**EXISTING, "kubernetes.tls": {"clusterIssuer": "x"}}, "openhands:kubernetes.tls: is not used"),
    "created gateway without tls": ({**CREATED, "kubernetes.tls": None}, "openhands:kubernetes.tls: is required"),
    "gateway namespace without a namespace": (
        {**TO_GATEWAY, "kubernetes.gateway": {"name": "x"}}, "openhands:kubernetes.gateway.namespace: is required"),
    "proxies in the tenants' namespace": (
        {**CREATED, "kubernetes.gateway.namespace": "openhands-k8s"},
        "openhands:kubernetes.gateway.namespace: 'openhands-k8s' is the tenants' namespace"),
    "proxy namespace is the tenants'": (
        {**EXISTING, "kubernetes.namespace": "agents", "kubernetes.gateway.proxyNamespace": "agents"},
        "openhands:kubernetes.gateway.proxyNamespace: 'agents' is the tenants' namespace"),
    "more tenants than listeners": (
        {**CREATED, "tenants": [f"t{i}" for i in range(65)]},
        "openhands:kubernetes.gateway.create: a created Gateway has one HTTPS listener per tenant"),
}


@pytest.mark.parametrize("case", list(GATEWAY_BAD))
def test_bad_gateway_config_is_one_config_error_naming_the_key(case: str) -> None:
    from openhands_cli import render as render_mod

    overrides, message = GATEWAY_BAD[case]
    with pytest.raises(ConfigError) as exc:
        render_gw(overrides)
    problems = [ln for ln in str(exc.value).splitlines() if ln.startswith("  - ")]
    assert len(problems) == 1 and message in problems[0], str(exc.value)
    assert not [x for x in render_mod.registered_before(exc.value) if x.type.startswith("kubernetes:")]


def test_node_selector_and_tolerations_place_every_tenants_pod() -> None:
    """A dedicated node pool: each pod template gets the labels to match and the taints to tolerate;
    without the settings the pod spec has neither (existing stacks render as before)."""
    r = render(STACK, overrides={"tenants": THREE, "kubernetes.nodeSelector": {"pool": "agents"},
                                 "kubernetes.tolerations": [{"key": "dedicated", "value": "agents",
                                                             "effect": "NoSchedule"}]})
    for sts in of_kind(r, "StatefulSet"):
        spec = sts["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"pool": "agents"}
        assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "agents",
                                        "effect": "NoSchedule"}]
    for sts in of_kind(render(STACK, overrides={"tenants": THREE}), "StatefulSet"):
        assert not {"nodeSelector", "tolerations"} & set(sts["spec"]["template"]["spec"])
