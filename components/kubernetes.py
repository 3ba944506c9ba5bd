"""Kubernetes model: one agent server per tenant, each with its own state volume.

Per tenant, in one namespace (created or reused): a Secret with the keys, a
ServiceAccount without a token, a single-replica StatefulSet whose claim holds every
state path, a ClusterIP Service, an Ingress with TLS on ``<tenant>.<domain>`` (or, with
``routing: gateway``, a Gateway API HTTPRoute for that host), and a NetworkPolicy that
admits only the ingress controller's (or the gateway proxies') namespace.

Gateway API objects are CustomResources (pulumi-kubernetes has no typed classes for them):
an HTTPRoute per tenant attached to a Gateway the user names, or to one the stack creates
with an HTTPS listener per tenant host.

Why a StatefulSet (1 replica + volumeClaimTemplate) rather than a Deployment with
``Recreate`` and a PVC: the agent server keeps its state in files, and two processes on
one volume serve stale catalogs and 404s (agent_server_facts.md §5). A StatefulSet
guarantees *at most one* pod per ordinal: it never starts ``-0`` again until the old
``-0`` is confirmed gone, even when its node is unreachable. A Deployment's ReplicaSet
counts a Terminating pod as gone and can start its replacement next to it. The claim is
also named by the StatefulSet (``state-<prefix>-<tenant>-0``), so after a ``pulumi
destroy`` that retained it, the next ``pulumi up`` re-attaches the same data.

Names never collide between stacks or projects: every object name starts with a prefix
made of the project and the stack (``openhands-<stack>``, or ``kubernetes.namePrefix``),
AND each stack gets its own namespace by default (the same prefix). Both, because either
alone leaves a gap: a user-chosen shared namespace would still hold two stacks' objects
(hence the prefix), and one Namespace object created by two stacks would be deleted by
whichever is destroyed first with retainData false (hence the per-stack namespace).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import contract
from components.config import IngressTls, KubernetesSettings, StackConfig
from components.deployment import Deployment
from components.keys import TenantKeys

# The Kubernetes versions we claim: the oldest and newest schemas kubernetes-validate
# 1.37.0 ships. Every rendered object is validated (strict) against both.
SUPPORTED_K8S_VERSIONS = ("1.25.0", "1.37.0")

TENANT_LABEL = contract.K8S_TENANT_LABEL
CHECKSUM_ANNOTATION = contract.K8S_CHECKSUM_ANNOTATION
STATE_VOLUME = "state"
# Long-lived WebSockets on /sockets/*: the server pings every 20 s, but a controller's
# default 60 s read timeout still cuts a quiet stream. One hour, in each controller's terms.
WEBSOCKET_TIMEOUT_SECONDS = 3600
# Gateway API (standard channel; HTTPRoute rule timeouts are standard from v1.2).
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
GATEWAY_HTTPS_PORT = 443
# Labels of the stack-wide objects (the namespace, a created Gateway).
STACK_LABELS = {"app.kubernetes.io/part-of": "openhands", "app.kubernetes.io/managed-by": "pulumi"}
# The server shuts down cleanly in ~1.5 s on SIGTERM and releases its conversation leases;
# leave room for in-flight requests.
TERMINATION_GRACE_SECONDS = 30


def cert_manager_annotations(tls: IngressTls) -> dict[str, str]:
    """cert-manager's ingress-shim and gateway-shim read the same annotations; none with a secret."""
    if tls.cluster_issuer:
        return {"cert-manager.io/cluster-issuer": tls.cluster_issuer}
    if tls.issuer:
        return {"cert-manager.io/issuer": tls.issuer}
    return {}


def websocket_annotations() -> dict[str, str]:
    """Timeouts for the common ingress controllers; each reads only its own prefix.

    Traefik has no per-Ingress timeout: it passes WebSockets through and its limits are
    entrypoint settings (see docs/kubernetes.md)."""
    t = WEBSOCKET_TIMEOUT_SECONDS
    return {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(t),
        "nginx.ingress.kubernetes.io/proxy-send-timeout": str(t),
        "haproxy.org/timeout-tunnel": f"{t}s",  # HAProxy Technologies controller
        "haproxy-ingress.github.io/timeout-tunnel": f"{t}s",  # haproxy-ingress (community)
    }


def names(tenant: str, prefix: str) -> dict[str, str]:
    """Explicit object names: the same for a given project, stack and tenant, so a re-created
    stack finds its claim; different between stacks and projects, so they never collide."""
    base = f"{prefix}-{tenant}"
    return {
        "workload": base,
        "service": base,
        "secret": f"{base}-keys",
        "service_account": base,
        "ingress": base,
        "http_route": base,
        "network_policy": base,
        "tls_secret": f"{base}-tls",
        "claim": f"{STATE_VOLUME}-{base}-0",  # <template>-<statefulset>-<ordinal>
    }


def gateway_name(settings: KubernetesSettings, prefix: str) -> str:
    """The Gateway the routes attach to: the one named, else (created) the stack's prefix."""
    assert settings.gateway is not None
    return settings.gateway.name or prefix


def namespace_selector(namespace: str) -> dict[str, Any]:
    # Every namespace carries this label (set by the API server since 1.21).
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def selector_labels(tenant: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "openhands-agent-server", "app.kubernetes.io/instance": f"agent-{tenant}"}


def labels(tenant: str) -> dict[str, str]:
    return {
        **selector_labels(tenant),
        "app.kubernetes.io/component": contract.ROLE,
        "app.kubernetes.io/part-of": "openhands",
        "app.kubernetes.io/managed-by": "pulumi",
        TENANT_LABEL: tenant,
    }


def _probe(p: contract.Probe) -> dict[str, Any]:
    # GET only: the server answers HEAD with 405.
    return {
        "httpGet": {"path": p.path, "port": contract.PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": p.period_seconds,
        "timeoutSeconds": p.timeout_seconds,
        "failureThreshold": p.failure_threshold,
        "successThreshold": 1,
    }


def _resources(cfg: StackConfig) -> dict[str, Any]:
    # requests == limits: Guaranteed QoS, so a busy node does not evict an agent mid-task.
    # The API server's canonical form (it stores 1000m as "1" and 2048Mi as "2Gi"), so the
    # live object reads back exactly as rendered.
    millis, mebis = round(cfg.resources.cpu * 1000), cfg.resources.memory
    cpu = str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"
    memory = f"{mebis // 1024}Gi" if mebis % 1024 == 0 else f"{mebis}Mi"
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def _scratch_volume(path: str) -> str:
    return "scratch-" + (path.strip("/").replace("/", "-") or "root")


def network_policy_spec(tenant: str, settings: KubernetesSettings) -> dict[str, Any]:
    """Ingress: the contract port, only from the ingress controller's (or the gateway proxies')
    namespace. Egress: open unless ``egress`` narrows it; DNS stays reachable when narrowed."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(tenant)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": namespace_selector(settings.source_namespace)}],
                "ports": [{"protocol": "TCP", "port": contract.PORT}],
            }
        ],
    }
    egress = settings.egress
    if not egress.restricted:
        spec["egress"] = [{}]  # everything: the internet, the LLM, in-cluster services
        return spec
    import ipaddress

    rules: list[dict[str, Any]] = []
    for cidr in egress.allow_cidrs:
        net = ipaddress.ip_network(cidr)
        inside = [
            e for e in egress.except_cidrs
            if ipaddress.ip_network(e).version == net.version and ipaddress.ip_network(e).subnet_of(net)
        ]
        block: dict[str, Any] = {"cidr": cidr}
        if inside:
            block["except"] = inside
        rules.append({"to": [{"ipBlock": block}]})
    if egress.allow_dns:
        # Port 53 to any destination: works with CoreDNS, NodeLocal DNSCache and CNIs
        # whose ipBlocks never match in-cluster pods (Cilium).
        rules.append({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    spec["egress"] = rules
    return spec


def http_route_spec(tenant: str, settings: KubernetesSettings, prefix: str) -> dict[str, Any]:
    """The tenant's host, every path, to its Service. A created Gateway has a listener per tenant
    (named after it): the route attaches to that one alone; else to ``sectionName``, if given."""
    gw = settings.gateway
    assert gw is not None
    parent: dict[str, Any] = {"name": gateway_name(settings, prefix), "namespace": gw.namespace}
    section = tenant if gw.create else gw.section_name
    if section:
        parent["sectionName"] = section
    return {
        "parentRefs": [parent],
        "hostnames": [settings.host_for(tenant)],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],  # /api and /sockets/*
                "backendRefs": [{"name": names(tenant, prefix)["service"], "port": contract.PORT}],
                # The whole request, in Gateway API's one portable timeout (standard channel, Extended
                # support). Envoy-based gateways apply it to the upgrade, not to the open WebSocket, and
                # raise the stream idle timeout to match (Envoy Gateway: at least an hour).
                "timeouts": {"request": f"{WEBSOCKET_TIMEOUT_SECONDS}s"},
            }
        ],
    }


def gateway_spec(settings: KubernetesSettings, prefix: str, tenants: list[str]) -> dict[str, Any]:
    """A created Gateway: one HTTPS listener per tenant host, terminating TLS with the tenant's
    certificate (cert-manager's ``<prefix>-<tenant>-tls``, or the existing ``tls.secretName``), and
    admitting HTTPRoutes from the tenants' namespace only."""
    gw, tls = settings.gateway, settings.tls
    assert gw is not None and gw.class_name and tls is not None
    allowed = {"namespaces": {"from": "Selector", "selector": namespace_selector(settings.tenants_namespace(prefix))},
               "kinds": [{"kind": "HTTPRoute"}]}
    return {
        "gatewayClassName": gw.class_name,
        "listeners": [
            {
                "name": t,
                "hostname": settings.host_for(t),
                "port": GATEWAY_HTTPS_PORT,
                "protocol": "HTTPS",
                "tls": {
                    "mode": "Terminate",
                    "certificateRefs": [{"kind": "Secret", "name": tls.secret_name or names(t, prefix)["tls_secret"]}],
                },
                "allowedRoutes": allowed,
            }
            for t in tenants
        ],
    }


def object_meta(
    name: str,
    annotations: Mapping[str, pulumi.Input[str]] | None = None,
    *,
    namespace: pulumi.Input[str],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """A tenant object's metadata: its name in the tenants' namespace, the tenant's labels and,
    when given, annotations."""
    m: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        m["annotations"] = dict(annotations)
    return m


Meta = Callable[..., dict[str, Any]]  # object_meta with the namespace and labels bound


def container_spec(cfg: StackConfig, keys: TenantKeys, secret_name: str) -> dict[str, Any]:
    """The agent-server container, all from the runtime contract: keys from the Secret by
    secretKeyRef, state on the claim, scratch dirs on emptyDirs, a read-only root, no privilege."""
    plain = contract.container_env(contract.SHARED_PID_NAMESPACE)  # the pod's shareProcessNamespace
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": name}}}
        for name in keys.env_names
    ]
    mounts = [{"name": STATE_VOLUME, "mountPath": contract.DATA_DIR}]
    mounts += [{"name": _scratch_volume(p), "mountPath": p} for p in contract.SCRATCH_DIRS]
    return {
        "name": contract.ROLE,
        "image": cfg.image,
        # A pinned tag or digest: a restart must not depend on the registry being up.
        "imagePullPolicy": "IfNotPresent",
        "args": contract.args(),
        "ports": [{"name": contract.PORT_NAME, "containerPort": contract.PORT, "protocol": "TCP"}],
        "env": env,
        "startupProbe": _probe(contract.STARTUP_PROBE),
        "readinessProbe": _probe(contract.READINESS_PROBE),
        "livenessProbe": _probe(contract.LIVENESS_PROBE),
        "resources": _resources(cfg),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": contract.UID,
            "runAsGroup": contract.GID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def claim_spec(settings: KubernetesSettings) -> dict[str, Any]:
    """The state claim template's spec: access mode, size and (when set) storage class."""
    spec: dict[str, Any] = {
        "accessModes": [settings.access_mode],
        "resources": {"requests": {"storage": settings.storage_size}},
    }
    if settings.storage_class:
        spec["storageClassName"] = settings.storage_class
    return spec


class KubernetesTenant(pulumi.ComponentResource):
    """One tenant's agent server and everything that reaches it.

    The constructor runs the steps in dependency order; each step registers its objects
    as children of this component and keeps them as attributes."""

    secret: k8s.core.v1.Secret | None  # None in render mode (renderTo)
    service_account: k8s.core.v1.ServiceAccount
    stateful_set: k8s.apps.v1.StatefulSet
    service: k8s.core.v1.Service
    ingress: k8s.networking.v1.Ingress | None  # routing: ingress
    http_route: k8s.apiextensions.CustomResource | None  # routing: gateway
    network_policy: k8s.networking.v1.NetworkPolicy
    url: pulumi.Output[str]

    def __init__(
        self,
        tenant: str,
        *,
        namespace: pulumi.Input[str],
        keys: TenantKeys,
        cfg: StackConfig,
        prefix: str,
        gateway: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        # The type token keeps its first name: it is in every deployed stack's URNs.
        super().__init__("openhands:kubernetes:AgentServer", tenant, None, opts)
        settings: KubernetesSettings = cfg.kubernetes  # type: ignore[assignment]
        child = pulumi.ResourceOptions(parent=self)
        n = names(tenant, prefix)
        host = settings.host_for(tenant)
        meta: Meta = functools.partial(object_meta, namespace=namespace, labels=labels(tenant))

        self._secret(tenant, settings, keys, n, meta, child)
        self._service_account(tenant, n, meta, child)
        self._workload(tenant, cfg, keys, n, meta, child)
        self._service(tenant, n, meta, child)
        self._routing(tenant, settings, prefix, n, host, gateway, meta, child)
        self._network_policy(tenant, settings, n, meta, child)
        self.url = pulumi.Output.from_input(f"https://{host}")
        self.register_outputs({"url": self.url, "claim": n["claim"]})

    def _secret(self, tenant: str, settings: KubernetesSettings, keys: TenantKeys, n: dict[str, str], meta: Meta,
                child: pulumi.ResourceOptions) -> None:
        """The keys, only here: the container reads each one with secretKeyRef.

        Not in render mode (None there): the provider would write the values in plaintext into
        the manifest directory (its documented behaviour); there the Secret comes from the
        user's secret store."""
        self.secret = None
        if settings.render_to is None:
            self.secret = k8s.core.v1.Secret(
                f"{tenant}-keys",
                metadata=meta(n["secret"]),
                type="Opaque",
                string_data=keys.env,
                opts=child,
            )

    def _service_account(self, tenant: str, n: dict[str, str], meta: Meta, child: pulumi.ResourceOptions) -> None:
        """The pod's identity, without API access: the agent runs arbitrary code, so it gets no token."""
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{tenant}-sa",
            metadata=meta(n["service_account"]),
            automount_service_account_token=False,
            opts=child,
        )

    def _workload(self, tenant: str, cfg: StackConfig, keys: TenantKeys, n: dict[str, str], meta: Meta,
                  child: pulumi.ResourceOptions) -> None:
        """The single-replica StatefulSet (at most one pod on the state volume) with its claim
        template; the keys' checksum on the pod template rolls the pod on a rotation."""
        settings: KubernetesSettings = cfg.kubernetes  # type: ignore[assignment]
        lbl = labels(tenant)
        # The claim outlives the StatefulSet (pulumi destroy) unless retainData is false.
        retention = "Retain" if cfg.retain_data else "Delete"
        self.stateful_set = k8s.apps.v1.StatefulSet(
            f"{tenant}-agent-server",
            metadata=meta(n["workload"]),
            spec={
                "replicas": 1,  # never more: one pod per state volume
                "serviceName": n["service"],
                "podManagementPolicy": "OrderedReady",
                "updateStrategy": {"type": "RollingUpdate"},  # 1 replica: stop -0, then start -0
                "selector": {"matchLabels": selector_labels(tenant)},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": retention, "whenScaled": "Retain"},
                "template": {
                    "metadata": {
                        "labels": lbl,
                        # A rotation changes the checksum, so the pod rolls onto the new keys.
                        "annotations": {CHECKSUM_ANNOTATION: keys.checksum},
                    },
                    "spec": {
                        "serviceAccountName": n["service_account"],
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                        # One PID namespace for the pod's life (its pause process is PID 1), so a server
                        # restarted after a crash or an OOM kill never gets the dead one's PID back: the
                        # server then sees the lease's owner is gone and takes its conversations over at once,
                        # instead of answering 404 until the 45 s lease expires (docs/faults.md).
                        "shareProcessNamespace": True,
                        **({"nodeSelector": dict(settings.node_selector)} if settings.node_selector else {}),
                        **({"tolerations": [t.model_dump(by_alias=True, exclude_none=True)
                                            for t in settings.tolerations]} if settings.tolerations else {}),
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": contract.UID,
                            "runAsGroup": contract.GID,
                            "fsGroup": contract.GID,
                            # Skip the recursive chown of a large volume on every start.
                            "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container_spec(cfg, keys, n["secret"])],
                        # The root filesystem is read-only; these are the writable, disposable dirs.
                        "volumes": [
                            {"name": _scratch_volume(p), "emptyDir": {"sizeLimit": settings.scratch_size}}
                            for p in contract.SCRATCH_DIRS
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {"metadata": {"name": STATE_VOLUME, "labels": lbl}, "spec": claim_spec(settings)}
                ],
            },
            opts=child.merge(
                pulumi.ResourceOptions(
                    depends_on=[r for r in (self.secret, self.service_account) if r is not None],
                    # The claim template is immutable on a live StatefulSet, and the provider
                    # would REPLACE the StatefulSet for a change there (with retainData false
                    # that deletes the claim: the tenant's data). A storageSize change applies
                    # to new tenants; an existing claim is resized in place (docs/kubernetes.md procedure).
                    ignore_changes=["spec.volumeClaimTemplates"],
                )
            ),
        )

    def _service(self, tenant: str, n: dict[str, str], meta: Meta, child: pulumi.ResourceOptions) -> None:
        """The ClusterIP Service in front of the pod: what the Ingress or HTTPRoute sends traffic to."""
        self.service = k8s.core.v1.Service(
            f"{tenant}-service",
            metadata=meta(n["service"]),
            spec={
                "type": "ClusterIP",
                "selector": selector_labels(tenant),
                "ports": [
                    {"name": contract.PORT_NAME, "port": contract.PORT, "targetPort": contract.PORT_NAME,
                     "protocol": "TCP"}
                ],
            },
            opts=child,
        )

    def _routing(self, tenant: str, settings: KubernetesSettings, prefix: str, n: dict[str, str], host: str,
                 gateway: pulumi.Resource | None, meta: Meta, child: pulumi.ResourceOptions) -> None:
        """How the tenant's host reaches the Service: an HTTPRoute (``routing: gateway``) or an
        Ingress (the default); the other attribute stays None."""
        self.ingress = self.http_route = None
        if settings.routing == "gateway":
            self.http_route = self._http_route(tenant, settings, prefix, n, gateway, meta, child)
        else:
            self.ingress = self._ingress(tenant, settings, n, host, meta, child)

    def _http_route(self, tenant: str, settings: KubernetesSettings, prefix: str, n: dict[str, str],
                    gateway: pulumi.Resource | None, meta: Meta,
                    child: pulumi.ResourceOptions) -> k8s.apiextensions.CustomResource:
        """A Gateway API HTTPRoute for the tenant's host, attached to the stack's Gateway (created
        first, when the stack creates it) or to the one the user names."""
        return k8s.apiextensions.CustomResource(
            f"{tenant}-route",
            api_version=GATEWAY_API_VERSION,
            kind="HTTPRoute",
            metadata=meta(n["http_route"]),
            spec=http_route_spec(tenant, settings, prefix),
            opts=child.merge(pulumi.ResourceOptions(depends_on=[r for r in (self.service, gateway) if r])),
        )

    def _ingress(self, tenant: str, settings: KubernetesSettings, n: dict[str, str], host: str, meta: Meta,
                 child: pulumi.ResourceOptions) -> k8s.networking.v1.Ingress:
        """An Ingress with TLS for the tenant's host: WebSocket timeouts for the common controllers,
        cert-manager's issuer annotation, then the user's own annotations."""
        annotations = websocket_annotations()
        tls = settings.tls
        assert tls is not None
        annotations.update(cert_manager_annotations(tls))
        annotations.update(settings.ingress_annotations)
        return k8s.networking.v1.Ingress(
            f"{tenant}-ingress",
            metadata=meta(n["ingress"], annotations),
            spec={
                "ingressClassName": settings.ingress_class,
                # cert-manager writes one secret per tenant; an existing secret is shared (a wildcard).
                "tls": [{"hosts": [host], "secretName": tls.secret_name or n["tls_secret"]}],
                "rules": [
                    {
                        "host": host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": n["service"], "port": {"name": contract.PORT_NAME}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.service])),
        )

    def _network_policy(self, tenant: str, settings: KubernetesSettings, n: dict[str, str], meta: Meta,
                        child: pulumi.ResourceOptions) -> None:
        """The NetworkPolicy: in only from the ingress controller's (or gateway proxies') namespace,
        out as ``egress`` allows (network_policy_spec)."""
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{tenant}-netpol",
            metadata=meta(n["network_policy"]),
            spec=network_policy_spec(tenant, settings),
            opts=child,
        )


class KubernetesDeployment(pulumi.ComponentResource):
    """All tenants in one namespace. The cluster comes from the provider in ``opts``."""

    namespace: k8s.core.v1.Namespace | None
    gateway: k8s.apiextensions.CustomResource | None  # routing: gateway with create: true
    namespace_name: pulumi.Output[str]
    prefix: str
    servers: dict[str, KubernetesTenant]
    urls: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        cfg: StackConfig,
        keys: Mapping[str, TenantKeys],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:kubernetes:KubernetesDeployment", name, None, opts)
        settings: KubernetesSettings = cfg.kubernetes  # type: ignore[assignment]
        child = pulumi.ResourceOptions(parent=self)
        self.prefix = settings.object_prefix()
        namespace = settings.tenants_namespace(self.prefix)
        self.namespace = None
        if settings.create_namespace:
            # Deleting a namespace deletes every claim in it, so it is retained with the data.
            self.namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata={
                    "name": namespace,
                    "labels": {
                        **STACK_LABELS,
                        # The pods meet the "restricted" Pod Security Standard; enforce it.
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/warn": "restricted",
                    },
                },
                opts=child.merge(pulumi.ResourceOptions(retain_on_delete=cfg.retain_data)),
            )
            self.namespace_name = self.namespace.metadata.apply(lambda m: m.name)
        else:
            self.namespace_name = pulumi.Output.from_input(namespace)
        self.gateway = None
        gw = settings.gateway if settings.routing == "gateway" else None
        if gw is not None and gw.create:
            metadata: dict[str, Any] = {
                "name": gateway_name(settings, self.prefix),
                # The tenants' namespace, when the stack creates it, must exist first.
                "namespace": self.namespace_name if gw.namespace == namespace else gw.namespace,
                "labels": dict(STACK_LABELS),
            }
            # cert-manager's gateway-shim issues a certificate per listener into its certificateRefs secret.
            annotations = cert_manager_annotations(settings.tls)  # type: ignore[arg-type]
            if annotations:
                metadata["annotations"] = annotations
            self.gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                api_version=GATEWAY_API_VERSION,
                kind="Gateway",
                metadata=metadata,
                spec=gateway_spec(settings, self.prefix, cfg.tenants),
                opts=child,
            )
        self.servers = {
            t: KubernetesTenant(t, namespace=self.namespace_name, keys=keys[t], cfg=cfg, prefix=self.prefix,
                           gateway=self.gateway, opts=child)
            for t in cfg.tenants
        }
        self.urls = {t: s.url for t, s in self.servers.items()}
        self.register_outputs({"urls": self.urls, "namespace": self.namespace_name})


def build(cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment:
    settings: KubernetesSettings = cfg.kubernetes  # type: ignore[assignment]
    kubeconfig = (
        pulumi.Output.secret(settings.kubeconfig.get_secret_value()) if settings.kubeconfig is not None else None
    )
    # Explicit provider: ambient kubeconfig (KUBECONFIG / ~/.kube/config) unless config gives one.
    # renderTo: the provider writes manifests to that directory instead of applying them. A
    # relative path is passed as written (the engine starts the provider in the project
    # directory), so the provider's inputs do not change between checkouts at other paths.
    if settings.render_to is not None:
        # Given None, the SDK fills kubeconfig from $KUBECONFIG, and the provider refuses any
        # kubeconfig beside renderYamlToDirectory: "" is "none" to both.
        kubeconfig = ""
    provider = k8s.Provider(
        "kubernetes", kubeconfig=kubeconfig, context=settings.context, render_yaml_to_directory=settings.render_to
    )
    deployment = KubernetesDeployment(
        "kubernetes", cfg=cfg, keys=keys, opts=pulumi.ResourceOptions(providers={"kubernetes": provider})
    )
    if settings.render_to is not None:
        secrets = ", ".join(names(t, deployment.prefix)["secret"] for t in cfg.tenants)
        pulumi.log.warn(
            f"kubernetes.renderTo: manifests go to {settings.render_to}; the keys Secrets ({secrets}) are not "
            "written there (they would be plaintext). Create them from your secret store with the keys in the "
            "secret outputs (see docs/kubernetes.md, renderTo)."
        )
    return Deployment(
        resource=deployment,
        urls=deployment.urls,
        exports={
            "namespace": deployment.namespace_name,
            "stateClaims": {t: names(t, deployment.prefix)["claim"] for t in cfg.tenants},
        },
    )
