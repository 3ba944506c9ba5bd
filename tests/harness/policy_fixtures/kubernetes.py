"""Kubernetes fixtures: StatefulSets as our model renders them, and Deployments, ConfigMaps,
Ingresses and NetworkPolicies as people write them by hand."""

from __future__ import annotations

import base64
import copy
from typing import Any

from components import contract
from tests.harness.policy_fixtures import Fixture

STS = "kubernetes:apps/v1:StatefulSet"
DEPLOY = "kubernetes:apps/v1:Deployment"
CM = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"

LABELS = {"app.kubernetes.io/name": "openhands", "app.kubernetes.io/instance": "default",
          "app.kubernetes.io/component": contract.ROLE}


def _probe(p: contract.Probe) -> dict[str, Any]:
    return {"httpGet": {"path": p.path, "port": contract.PORT_NAME}, "periodSeconds": p.period_seconds,
            "timeoutSeconds": p.timeout_seconds, "failureThreshold": p.failure_threshold}


def statefulset(**spec_extra: Any) -> dict[str, Any]:
    """Shaped like components/kubernetes.py's StatefulSet."""
    env = [{"name": k, "value": v} for k, v in contract.PLAIN_ENV.items()]
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": "default-keys", "key": n}}}
            for n in ("OH_SESSION_API_KEYS_0", "OH_SECRET_KEY")]
    props = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "agent-default", "namespace": "openhands", "labels": LABELS},
        "spec": {
            "replicas": 1,
            "serviceName": "agent-default",
            "selector": {"matchLabels": {k: LABELS[k] for k in list(LABELS)[:2]}},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": contract.UID, "runAsGroup": contract.GID,
                                        "fsGroup": contract.GID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": contract.ROLE, "image": contract.DEFAULT_IMAGE, "args": list(contract.ARGS),
                        "env": env,
                        "ports": [{"name": contract.PORT_NAME, "containerPort": contract.PORT}],
                        "startupProbe": _probe(contract.STARTUP_PROBE),
                        "readinessProbe": _probe(contract.READINESS_PROBE),
                        "livenessProbe": _probe(contract.LIVENESS_PROBE),
                        "resources": {"requests": {"cpu": "1", "memory": "2048Mi"},
                                      "limits": {"cpu": "1", "memory": "2048Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "state", "mountPath": contract.DATA_DIR}],
                    }],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "state"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}],
        },
    }
    props["spec"].update(spec_extra)
    return props


def container(props: dict[str, Any]) -> dict[str, Any]:
    return props["spec"]["template"]["spec"]["containers"][0]


def variant(edit: Any) -> dict[str, Any]:
    props = copy.deepcopy(statefulset())
    edit(props)
    return props


# What a quick hand-written Deployment of the agent server looks like.
HAND_DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "openhands", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "openhands"}},
        "template": {
            "metadata": {"labels": {"app": "openhands"}},
            "spec": {
                "containers": [{
                    "name": "server", "image": "ghcr.io/openhands/agent-server:latest",
                    "env": [{"name": "OH_SESSION_API_KEYS_0", "value": "my-key"}],
                    "ports": [{"containerPort": 8000}],
                    "volumeMounts": [{"name": "data", "mountPath": "/workspace"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "openhands-data"}}],
            },
        },
    },
}

NETPOL_OK = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "agent-default", "namespace": "openhands"},
             "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "default"}},
                      "policyTypes": ["Ingress", "Egress"],
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "ingress-nginx"}}}], "ports": [{"port": contract.PORT}]}]}}

INGRESS_OK = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
              "metadata": {"name": "agent-default", "annotations": {
                  "cert-manager.io/cluster-issuer": "letsencrypt-prod"}},
              "spec": {"ingressClassName": "nginx",
                       "tls": [{"hosts": ["default.agents.example.com"], "secretName": "agent-default-tls"}],
                       "rules": [{"host": "default.agents.example.com", "http": {"paths": [
                           {"path": "/", "pathType": "Prefix", "backend": {"service": {
                               "name": "agent-default", "port": {"number": contract.PORT}}}}]}}]}}

# Shaped like components/kubernetes.py's created Gateway (routing: gateway, create: true).
GATEWAY_OK = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
              "metadata": {"name": "openhands-k8s", "namespace": "gateway-system",
                           "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}},
              "spec": {"gatewayClassName": "eg", "listeners": [{
                  "name": "default", "hostname": "default.agents.example.com", "port": 443, "protocol": "HTTPS",
                  "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "agent-default-tls"}]},
                  "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {
                      "kubernetes.io/metadata.name": "openhands"}}}}}]}}
HTTP_LISTENER = {"name": "http", "port": 80, "protocol": "HTTP"}


def gateway(*listeners: dict[str, Any]) -> dict[str, Any]:
    return {**GATEWAY_OK, "spec": {**GATEWAY_OK["spec"], "listeners": list(listeners)}}


FIXTURES: list[Fixture] = [
    # secrets
    Fixture("no-plain-secrets", "statefulset-secret-key-ref", STS, statefulset()),
    Fixture("no-plain-secrets", "hand-written-literal-key", DEPLOY, HAND_DEPLOY, True, name="openhands",
            expect="secretKeyRef"),
    Fixture("no-plain-secrets", "configmap-plain-settings", CM, {"data": {"OH_ENABLE_VSCODE": "false"}}),
    Fixture("no-plain-secrets", "configmap-with-key", CM, {"data": {"OH_SECRET_KEY": "abc"}}, True,
            expect="ConfigMap"),
    Fixture("no-plain-secrets", "configmap-env-file-with-key", CM,
            {"data": {"agent.env": "OH_ENABLE_VSCODE=false\nOH_SESSION_API_KEYS_0=abc\n"}}, True,
            expect="OH_SESSION_API_KEYS_0"),
    Fixture("session-key-not-empty", "secret-with-keys", SECRET,
            {"stringData": {"OH_SESSION_API_KEYS_0": "k" * 48, "OH_SECRET_KEY": "s" * 48}}),
    Fixture("session-key-not-empty", "secret-empty-string-data", SECRET,
            {"stringData": {"OH_SESSION_API_KEYS_0": "", "OH_SECRET_KEY": "s" * 48}}, True, expect="empty"),
    Fixture("session-key-not-empty", "secret-empty-data", SECRET,
            {"data": {"OH_SESSION_API_KEYS_0": base64.b64encode(b" ").decode()}}, True),
    # TLS
    Fixture("ingress-tls", "rendered-ingress", INGRESS, INGRESS_OK),
    Fixture("ingress-tls", "hand-written-no-tls", INGRESS,
            {**INGRESS_OK, "spec": {k: v for k, v in INGRESS_OK["spec"].items() if k != "tls"}}, True,
            expect="spec.tls"),
    Fixture("ingress-tls", "host-not-covered", INGRESS,
            {**INGRESS_OK, "spec": {**INGRESS_OK["spec"], "tls": [{"hosts": ["other.example.com"],
                                                                   "secretName": "x"}]}}, True,
            expect="default.agents.example.com"),
    Fixture("ingress-tls", "wildcard-covers", INGRESS,
            {**INGRESS_OK, "spec": {**INGRESS_OK["spec"], "tls": [{"hosts": ["*.agents.example.com"],
                                                                   "secretName": "wild"}]}}),
    Fixture("ingress-tls", "rendered-gateway", GATEWAY, GATEWAY_OK),
    Fixture("ingress-tls", "gateway-http-only", GATEWAY, gateway(HTTP_LISTENER), True, expect="listener 'http'"),
    Fixture("ingress-tls", "gateway-http-beside-https", GATEWAY,
            gateway(*GATEWAY_OK["spec"]["listeners"], HTTP_LISTENER), True, expect="plain traffic"),
    Fixture("ingress-tls", "gateway-https-without-certificate", GATEWAY,
            gateway({**GATEWAY_OK["spec"]["listeners"][0], "tls": {"mode": "Terminate"}}), True,
            expect="without a certificate"),
    Fixture("ingress-tls", "gateway-tls-passthrough", GATEWAY,
            gateway({"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}})),
    # health checks
    Fixture("agent-server-health-checks", "statefulset-probes", STS, statefulset()),
    Fixture("agent-server-health-checks", "hand-written-no-probes", DEPLOY, HAND_DEPLOY, True,
            expect="startupProbe"),
    Fixture("agent-server-health-checks", "readiness-on-wrong-path", STS,
            variant(lambda p: container(p)["readinessProbe"]["httpGet"].update(path="/")), True),
    # single writer
    Fixture("single-writer", "statefulset-one-replica", STS, statefulset()),
    Fixture("single-writer", "statefulset-three-replicas", STS, statefulset(replicas=3), True, expect="replicas"),
    Fixture("single-writer", "hand-written-rolling-update-on-claim", DEPLOY,
            {**HAND_DEPLOY, "spec": {**HAND_DEPLOY["spec"], "replicas": 1}}, True, expect="Recreate"),
    Fixture("single-writer", "deployment-recreate", DEPLOY,
            {**HAND_DEPLOY, "spec": {**HAND_DEPLOY["spec"], "replicas": 1, "strategy": {"type": "Recreate"}}}),
    Fixture("one-workload-per-volume", "two-deployments-one-claim", stack=[
        (DEPLOY, "a", HAND_DEPLOY), (DEPLOY, "b", HAND_DEPLOY)], violates=True, expect="openhands-data"),
    Fixture("one-workload-per-volume", "statefulsets-own-claims", stack=[(STS, "a", statefulset()),
                                                                         (STS, "b", statefulset())]),
    # hardening
    Fixture("k8s-pod-hardening", "rendered-statefulset", STS, statefulset()),
    Fixture("k8s-pod-hardening", "hand-written-defaults", DEPLOY, HAND_DEPLOY, True, expect="runAsNonRoot"),
    Fixture("k8s-pod-hardening", "capabilities-kept", STS,
            variant(lambda p: container(p)["securityContext"].pop("capabilities")), True, expect="drop: [ALL]"),
    Fixture("k8s-pod-hardening", "root-user", STS,
            variant(lambda p: p["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0)), True),
    Fixture("k8s-network-policy", "selected-by-policy", stack=[(STS, "agent", statefulset()),
                                                               (NETPOL, "np", NETPOL_OK)]),
    Fixture("k8s-network-policy", "no-policy", stack=[(STS, "agent", statefulset())], violates=True,
            expect="NetworkPolicy"),
    Fixture("k8s-network-policy", "policy-selects-other-pods", stack=[
        (STS, "agent", statefulset()),
        (NETPOL, "np", {**NETPOL_OK, "spec": {**NETPOL_OK["spec"], "podSelector": {"matchLabels": {"app": "x"}}}})],
        violates=True),
    Fixture("k8s-network-policy", "policy-in-other-namespace", stack=[
        (STS, "agent", statefulset()),
        (NETPOL, "np", {**NETPOL_OK, "metadata": {"name": "np", "namespace": "default"}})], violates=True),
    # limits
    Fixture("resource-limits", "statefulset-limits", STS, statefulset()),
    Fixture("resource-limits", "hand-written-no-limits", DEPLOY, HAND_DEPLOY, True, expect="limit"),
    # configurable
    Fixture("image-pinned", "statefulset-version-tag", STS, statefulset()),
    Fixture("image-pinned", "digest", STS, variant(lambda p: container(p).update(
        image=f"{contract.IMAGE_REPOSITORY}@sha256:{'a' * 64}"))),
    Fixture("image-pinned", "hand-written-latest", DEPLOY, HAND_DEPLOY, True),
    Fixture("image-pinned", "floating-tag", STS, variant(lambda p: container(p).update(
        image=f"{contract.IMAGE_REPOSITORY}:python")), True),
    Fixture("data-protected", "claim-templates-retained", STS, statefulset()),
    Fixture("data-protected", "claim-templates-deleted", STS, statefulset(
        persistentVolumeClaimRetentionPolicy={"whenDeleted": "Delete", "whenScaled": "Retain"}), True,
        expect="whenDeleted"),
    Fixture("data-protected", "pvc-protected", PVC, {"spec": {"accessModes": ["ReadWriteOnce"]}}, protect=True),
    Fixture("data-protected", "pvc-unprotected", PVC, {"spec": {"accessModes": ["ReadWriteOnce"]}}, True),
]
