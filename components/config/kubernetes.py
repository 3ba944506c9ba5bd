"""ConfigModel of the Kubernetes model."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import TYPE_CHECKING, Any, Literal

import pulumi
from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components import contract
from components.config.errors import NAMESPACE
from components.config.values import Cidr, ConfigModel, Domain, KubeconfigSecret, pattern

if TYPE_CHECKING:
    from components.config.stack import StackConfig



# --------------------------------------------------------------------------- kubernetes


_K8S_NAME = pattern(  # RFC 1123 label: namespaces, classes, secrets
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    "a Kubernetes name (RFC 1123 label): at most 63 lowercase letters, digits or '-', starting and ending "
    "with a letter or digit",
    "openhands",
)
_K8S_SUBDOMAIN = pattern(  # RFC 1123 subdomain: storage/ingress classes
    r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
    "a Kubernetes name (RFC 1123 subdomain): at most 253 lowercase letters, digits, '-' or '.', starting and "
    "ending with a letter or digit",
    "letsencrypt-prod",
)
_K8S_QUANTITY = pattern(
    r"^[1-9][0-9]*(Mi|Gi|Ti)$", "a whole number without a leading zero and the unit Mi, Gi or Ti", "10Gi"
)


class IngressTls(ConfigModel):
    """Where each tenant host's certificate comes from: a cert-manager issuer or an existing secret."""

    cluster_issuer: str | None = Field(None, pattern=_K8S_SUBDOMAIN)
    issuer: str | None = Field(None, pattern=_K8S_SUBDOMAIN)
    secret_name: str | None = Field(None, pattern=_K8S_SUBDOMAIN)

    @model_validator(mode="after")
    def _exactly_one(self) -> IngressTls:
        if sum(x is not None for x in (self.cluster_issuer, self.issuer, self.secret_name)) != 1:
            raise ValueError(
                "set exactly one of clusterIssuer, issuer (cert-manager issues a certificate per tenant) "
                "or secretName (an existing TLS secret in the namespace, e.g. a wildcard for *.<domain>)"
            )
        return self


class Egress(ConfigModel):
    """Egress is open by default: agents need the internet and the LLM.

    Narrow it with ``allowCidrs`` (and carve holes with ``exceptCidrs``, e.g. the cloud
    metadata endpoint 169.254.169.254/32). DNS (port 53) stays allowed unless ``allowDns`` is false.
    """

    allow_cidrs: list[Cidr] = Field(default_factory=lambda: list(contract.WORLD_CIDRS), min_length=1)
    except_cidrs: list[Cidr] = []
    allow_dns: bool = True

    @model_validator(mode="after")
    def _excepts_inside(self) -> Egress:
        allowed = [ipaddress.ip_network(c) for c in self.allow_cidrs]
        for c in self.except_cidrs:
            net = ipaddress.ip_network(c)
            # The API server rejects an ipBlock.except that is not inside its cidr.
            if not any(net.version == a.version and net.subnet_of(a) and net != a for a in allowed):
                raise ValueError(f"exceptCidrs {c} is not strictly inside any of allowCidrs {self.allow_cidrs}")
        return self

    @property
    def restricted(self) -> bool:
        return sorted(self.allow_cidrs) != sorted(contract.WORLD_CIDRS) or bool(self.except_cidrs)


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Toleration(ConfigModel):
    """A pod toleration (Kubernetes' own fields): lets the tenants' pods onto tainted nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.key is not None and not _LABEL_KEY.match(self.key):
            raise ValueError(f"key {self.key!r} is not a valid taint key ([prefix/]name, e.g. dedicated)")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value (it matches any value of the key)")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists (it then tolerates every taint)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        return self


# Gateway API: a Gateway holds at most 64 listeners (the CRD's maxItems), and a created Gateway
# has one HTTPS listener per tenant.
GATEWAY_MAX_LISTENERS = 64


class GatewaySettings(ConfigModel):
    """``routing: gateway``: the Gateway every tenant's HTTPRoute attaches to.

    An existing Gateway (``create: false``, the default) is named by ``name`` and ``namespace``;
    its listeners hold the certificates. With ``create: true`` the stack creates the Gateway in
    ``namespace`` (it must exist), of class ``className``, with one HTTPS listener per tenant host
    whose certificate comes from ``kubernetes.tls``. ``proxyNamespace``: where the controller runs
    the proxy pods (the NetworkPolicy admits that namespace), when not the Gateway's own."""

    create: bool = False
    name: str | None = Field(None, pattern=_K8S_SUBDOMAIN, validate_default=True)  # None with create: <prefix>
    namespace: str = Field(pattern=_K8S_NAME)
    class_name: str | None = Field(None, pattern=_K8S_SUBDOMAIN, validate_default=True)
    section_name: str | None = Field(None, pattern=_K8S_SUBDOMAIN)
    proxy_namespace: str | None = Field(None, pattern=_K8S_NAME)

    @field_validator("name")
    @classmethod
    def _existing_needs_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and not info.data.get("create"):
            raise ValueError("is required: the name of your Gateway (or set create: true for one the stack creates)")
        return value

    @field_validator("class_name")
    @classmethod
    def _class_for_created(cls, value: str | None, info: ValidationInfo) -> str | None:
        create = info.data.get("create")
        if create and value is None:
            raise ValueError("is required with create: true: the GatewayClass of the Gateway the stack creates")
        if create is False and value is not None:
            raise ValueError("is only for create: true; an existing Gateway already has its class, remove it")
        return value

    @field_validator("section_name")
    @classmethod
    def _section_of_existing(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("create"):
            raise ValueError(
                "is only for an existing Gateway (create: false); a created Gateway has one listener per tenant "
                "and each HTTPRoute attaches to its own, remove it"
            )
        return value

    @property
    def source_namespace(self) -> str:
        """The namespace whose pods (the gateway's proxies) may reach the agent servers."""
        return self.proxy_namespace or self.namespace


# A StatefulSet's pods carry the label controller-revision-hash=<name>-<10-char hash>, and a
# label value is at most 63 characters: so the workload name stays within 52. The prefix is
# at most 26 (config) and a tenant at most 20, so "<prefix>-<tenant>" is at most 47.
MAX_PREFIX = 26

_K8S_PREFIX = pattern(  # a DNS-1035 label short enough for "<prefix>-<tenant>" object names
    r"^[a-z]([-a-z0-9]{0,24}[a-z0-9])?$",
    "1-26 lowercase letters, digits or '-', starting with a letter and ending with a letter or digit",
    "openhands-prod",
)


class KubernetesSettings(ConfigModel):
    """The Kubernetes model: one StatefulSet, Service, Ingress (or HTTPRoute) and NetworkPolicy per tenant.

    Routing: ``ingress`` (the default) renders an Ingress per tenant; ``gateway`` an HTTPRoute per
    tenant attached to the Gateway in ``gateway`` (see GatewaySettings).

    Names: every object is ``<namePrefix>-<tenant>[-suffix]``; the prefix defaults to the
    project and stack (``openhands-<stack>``), and so does the namespace, so two stacks or
    projects on one cluster never share an object (see components/kubernetes.py)."""

    namespace: str | None = Field(None, pattern=_K8S_NAME)  # None: the name prefix, one namespace per stack
    name_prefix: str | None = Field(None, pattern=_K8S_PREFIX)  # None: <project>-<stack>
    # A directory: the provider writes manifests there instead of applying them (GitOps).
    render_to: str | None = Field(None, min_length=1)
    create_namespace: bool = True
    kubeconfig: KubeconfigSecret | None = None  # contents or path; None = ambient (KUBECONFIG / ~/.kube/config)
    context: str | None = Field(None, min_length=1)
    domain: Domain
    routing: Literal["ingress", "gateway"] = "ingress"
    ingress_class: str = Field("nginx", pattern=_K8S_SUBDOMAIN)
    ingress_namespace: str = Field("ingress-nginx", pattern=_K8S_NAME)
    ingress_annotations: dict[str, str] = {}
    gateway: GatewaySettings | None = Field(None, validate_default=True)
    # Required, except with an existing Gateway: its listeners hold the certificates.
    tls: IngressTls | None = Field(None, validate_default=True)
    storage_class: str | None = Field(None, pattern=_K8S_SUBDOMAIN)
    storage_size: str = Field("10Gi", pattern=_K8S_QUANTITY)
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod"] = "ReadWriteOnce"
    scratch_size: str = Field("4Gi", pattern=_K8S_QUANTITY)
    egress: Egress = Egress()
    # Where the tenants' pods run: a dedicated node pool, say (labels to match, taints to tolerate).
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []

    @field_validator("ingress_annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        key_re = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
        for key in value:
            if not key_re.match(key):
                raise ValueError(
                    f"{key!r} is not a valid annotation key: [prefix/]name, a name of 1-63 letters, digits, '-', "
                    "'_' or '.' after an optional DNS prefix, e.g. nginx.ingress.kubernetes.io/proxy-body-size"
                )
            if key.startswith("cert-manager.io/"):
                raise ValueError(f"{key!r}: set the issuer with tls.clusterIssuer / tls.issuer, not an annotation")
        return value

    @field_validator("ingress_class", "ingress_namespace", "ingress_annotations")
    @classmethod
    def _ingress_only(cls, value: Any, info: ValidationInfo) -> Any:
        # Defaults are not validated: this runs only for a key the stack sets.
        if info.data.get("routing") == "gateway":
            raise ValueError(
                "is for routing: ingress; with routing: gateway the HTTPRoutes attach to kubernetes.gateway "
                "(the NetworkPolicy admits gateway.namespace, or gateway.proxyNamespace), remove it"
            )
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway_for_routing(cls, value: GatewaySettings | None, info: ValidationInfo) -> GatewaySettings | None:
        routing = info.data.get("routing")
        if routing == "gateway" and value is None:
            raise ValueError(
                "is required with routing: gateway: name and namespace of your Gateway, or create: true with "
                "namespace and className"
            )
        if routing == "ingress" and value is not None:
            raise ValueError("is for routing: gateway; set kubernetes.routing: gateway, or remove it")
        return value

    @field_validator("tls")
    @classmethod
    def _tls_unless_existing_gateway(cls, value: IngressTls | None, info: ValidationInfo) -> IngressTls | None:
        gateway = info.data.get("gateway")
        existing = info.data.get("routing") == "gateway" and gateway is not None and not gateway.create
        if value is None and not existing and "gateway" in info.data:
            raise ValueError("is required: one of clusterIssuer, issuer or secretName")
        if value is not None and existing:
            raise ValueError(
                "is not used with an existing Gateway (gateway.create: false): its listeners hold the "
                "certificates; remove it, or set gateway.create: true"
            )
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid label key ([prefix/]name, e.g. openhands.dev/pool)")
            if not _LABEL_VALUE.match(val):
                raise ValueError(f"{key}: {val!r} is not a valid label value (up to 63 letters, digits, '-', '_', "
                                 "'.', starting and ending with a letter or digit)")
        return value

    @field_validator("render_to")
    @classmethod
    def _render_dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip() or "\n" in value:
            raise ValueError("renderTo is a directory path, e.g. rendered/k8s (relative to the project directory)")
        return value

    @model_validator(mode="after")
    def _reuse_needs_namespace(self) -> KubernetesSettings:
        if self.namespace in ("kube-system", "kube-public", "kube-node-lease"):
            raise ValueError(f"namespace {self.namespace!r} is reserved for the cluster; choose another")
        if self.create_namespace and self.namespace == "default":
            raise ValueError("namespace 'default' always exists; set createNamespace: false to reuse it")
        if self.render_to is not None and (self.kubeconfig is not None or self.context is not None):
            # pulumi-kubernetes refuses a cluster beside renderYamlToDirectory (at `up`, after a wait).
            raise ValueError("renderTo writes manifests without contacting a cluster: remove kubeconfig and "
                             "context, or remove renderTo to deploy to that cluster")
        return self

    def host_for(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}"

    @property
    def source_namespace(self) -> str:
        """The namespace whose pods may reach the agent servers: the ingress controller's, or the
        gateway's proxies'."""
        return self.gateway.source_namespace if self.routing == "gateway" and self.gateway else self.ingress_namespace

    def object_prefix(self, project: str | None = None, stack: str | None = None) -> str:
        """The prefix of every object name: ``namePrefix``, else the project and stack:
        ``openhands-<stack>`` for this project (the Docker model's convention),
        ``openhands-<project>-<stack>`` for another. Made a DNS-1035 label (Services need one);
        shortened with a hash when too long, so the name stays stable for a given project and
        stack and a re-created stack finds its claims."""
        if self.name_prefix:
            return self.name_prefix
        project = project or pulumi.get_project()
        stack = stack or pulumi.get_stack()
        raw = f"{project}-{stack}" if project.startswith("openhands") else f"openhands-{project}-{stack}"
        prefix = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
        prefix = re.sub(r"-{2,}", "-", prefix)
        if len(prefix) > MAX_PREFIX:
            digest = hashlib.sha256(raw.encode()).hexdigest()[:6]
            prefix = f"{prefix[: MAX_PREFIX - 7].rstrip('-')}-{digest}"
        return prefix

    def tenants_namespace(self, prefix: str) -> str:
        """Where the tenants' objects go: ``namespace``, else the object prefix."""
        return self.namespace or prefix

    def gateway_problems(self, cfg: StackConfig) -> list[str]:
        """routing: gateway, against the whole stack: the listener limit of a created Gateway, and a
        NetworkPolicy source that would be the tenants' own namespace."""
        gw = self.gateway
        if self.routing != "gateway" or gw is None:
            return []
        key = f"  - {NAMESPACE}:kubernetes.gateway"
        problems = []
        if gw.create and len(cfg.tenants) > GATEWAY_MAX_LISTENERS:
            problems.append(
                f"{key}.create: a created Gateway has one HTTPS listener per tenant and Gateway API allows "
                f"{GATEWAY_MAX_LISTENERS}; this stack has {len(cfg.tenants)} tenants: attach them to an existing "
                "Gateway with a wildcard listener for *.<domain> (create: false)"
            )
        tenants_ns = self.tenants_namespace(self.object_prefix())
        if gw.source_namespace == tenants_ns:
            which = "proxyNamespace" if gw.proxy_namespace else "namespace"
            problems.append(
                f"{key}.{which}: {tenants_ns!r} is the tenants' namespace; the NetworkPolicy admits the gateway's "
                "proxies by namespace, so it would admit every tenant's pod: put the Gateway in another namespace, "
                "or set gateway.proxyNamespace to where your controller runs its proxies"
            )
        return problems

    def check_stack(self, cfg: StackConfig) -> list[str]:
        """routing: gateway fits the stack (gateway_problems). renderTo, if it exists, must be a
        directory. A kubeconfig given as a path must be a readable file; given as contents, YAML or JSON."""
        problems = self.gateway_problems(cfg)
        if problems:
            return problems
        if self.render_to is not None:
            from pathlib import Path

            # Relative to the project directory: where `pulumi` runs the program and the provider.
            target = Path(self.render_to).expanduser()
            if not target.is_absolute():
                target = contract.PROJECT_ROOT / target
            if target.exists() and not target.is_dir():
                return [f"  - {NAMESPACE}:kubernetes.renderTo: {target} exists and is not a directory"]
        if self.kubeconfig is None:
            return []
        from pathlib import Path

        import yaml

        value = self.kubeconfig.get_secret_value().strip()
        key = f"  - {NAMESPACE}:kubernetes.kubeconfig"
        if "\n" not in value and not value.startswith("{") and "apiVersion" not in value:
            path = Path(value).expanduser()  # the provider takes a path as well as contents
            try:
                value = path.read_text()
            except OSError as exc:
                # The path is not secret, but the value might be contents mistaken for one: do not echo it.
                return [f"{key}: is neither a kubeconfig nor a readable kubeconfig file ({exc.strerror})"]
        try:
            doc = yaml.safe_load(value)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict):
            return [f"{key}: is not a kubeconfig (expected a YAML or JSON mapping with clusters and contexts)"]
        return []
