"""Typed stack configuration.

All of ``openhands:*`` is parsed into these pydantic models before any resource is
registered. Anything wrong (a typo in a value, an unknown or misspelt key, a wrong
type, a blank secret, two settings that contradict each other) ends the program with
one ``ConfigError`` that names every offending key and what it allows.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pulumi
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components import contract

NAMESPACE = "openhands"
MODELS = ("modal", "docker", "ecs", "kubernetes")


class ConfigError(pulumi.RunError):
    """A configuration problem. Pulumi prints a RunError's message with no traceback."""


# --------------------------------------------------------------------------- types

_TENANT_RE = re.compile(r"^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# registry/name[:tag][@sha256:digest], the grammar of docker/distribution's reference package.
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


def _tenant(value: str) -> str:
    if not _TENANT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid tenant name: use 1-20 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-' (it becomes a hostname and resource names)"
        )
    return value


def _domain(value: str) -> str:
    value = value.lower().rstrip(".")
    if not _DOMAIN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid DNS domain")
    return value


def _image(value: str) -> str:
    if not _IMAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not an image reference; expected registry/name:tag or registry/name@sha256:<digest>"
        )
    return value


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty or whitespace (an empty session key disables authentication)")
    return value


TenantName = Annotated[str, AfterValidator(_tenant)]
Domain = Annotated[str, AfterValidator(_domain)]
ImageRef = Annotated[str, AfterValidator(_image)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Secret = Annotated[SecretStr, AfterValidator(_not_blank)]
WORLD = ("0.0.0.0/0", "::/0")


class Settings(BaseModel):
    """Base: camelCase keys in the stack file, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, hide_input_in_errors=True
    )


# --------------------------------------------------------------------------- shared


class Resources(Settings):
    """CPU (vCPU) and memory (MiB) for each agent server."""

    cpu: float = Field(1.0, gt=0, le=16)
    memory: int = Field(2048, ge=512, le=122880)


class Keys(Settings):
    """Key rotation. Raise ``rotation`` by exactly one to rotate every tenant's keys."""

    rotation: int = Field(0, ge=0, le=1000)


class SuppliedKeys(Settings):
    """Keys given as secret config instead of generated ones."""

    session_api_key: Secret
    secret_key: Secret
    previous_session_api_key: Secret | None = None
    previous_secret_keys: list[Secret] = []


# --------------------------------------------------------------------------- docker


# Architectures by instance family: a "g" among the letters after the generation digit
# means Graviton (t4g, m7g, c7gn, r6gd); everything else here is x86_64.
_GRAVITON_RE = re.compile(r"^[a-z]+\d+[a-z-]*g[a-z-]*\.")
# Widest source range accepted for SSH: anything wider is "the internet" in practice.
_MIN_ADMIN_PREFIX = {4: 8, 6: 32}


class VmSettings(Settings):
    """The EC2 VM that hosts the Docker engine when ``docker.engine`` is ``vm``."""

    instance_type: str = Field("t3.large", pattern=r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9]+$")
    # Debian 12 is not offered: its docker.io (20.10, API 1.41) rejects the healthcheck's
    # start interval, which needs Docker API 1.44 (Engine 25). Ubuntu backports Docker to LTS.
    os: Literal["ubuntu-24.04", "debian-13"] = "ubuntu-24.04"
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    subnet_id: str | None = Field(None, pattern=r"^subnet-[0-9a-f]{8,17}$")
    ssh_public_key: str = Field(pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$")
    ssh_private_key_path: str | None = None
    admin_cidrs: list[Cidr]  # required; an empty list is refused below with the reason
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(WORLD), min_length=1)
    root_volume_size: int = Field(30, ge=8, le=1024)
    data_volume_size: int = Field(50, ge=1, le=16384)
    data_volume_type: Literal["gp3", "gp2", "io2", "st1"] = "gp3"
    data_volume_iops: int | None = Field(None, ge=100, le=256000)
    # Restore: create the data volume from this snapshot instead of empty.
    data_snapshot_id: str | None = Field(None, pattern=r"^snap-[0-9a-f]{8,17}$")
    # Daily EBS snapshots of the data volume kept by Data Lifecycle Manager; 0 turns them off.
    daily_snapshots: int = Field(7, ge=0, le=1000)
    hosted_zone_id: str | None = Field(None, pattern=r"^Z[0-9A-Z]{1,32}$")

    @field_validator("admin_cidrs")
    @classmethod
    def _no_world_ssh(cls, cidrs: list[str]) -> list[str]:
        if not cidrs:
            raise ValueError(
                "is required: list the networks allowed to SSH (22) to the VM, e.g. [203.0.113.7/32]; "
                "SSH is never opened to 0.0.0.0/0"
            )
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr)
            if net.prefixlen == 0:
                raise ValueError(
                    f"{cidr} would open SSH (22) to the whole internet; "
                    "give your admin network, e.g. 203.0.113.7/32"
                )
            if net.prefixlen < _MIN_ADMIN_PREFIX[net.version]:
                raise ValueError(
                    f"{cidr} is too wide for SSH (22); use /{_MIN_ADMIN_PREFIX[net.version]} or narrower, "
                    "e.g. 203.0.113.7/32"
                )
        return cidrs

    @model_validator(mode="after")
    def _subnet_needs_vpc(self) -> VmSettings:
        if self.subnet_id and not self.vpc_id:
            raise ValueError("subnetId needs vpcId (the security group is created in that VPC)")
        if self.vpc_id and not self.subnet_id:
            raise ValueError("vpcId needs subnetId (a public subnet of that VPC for the instance)")
        if self.data_volume_iops is not None and self.data_volume_type not in ("gp3", "io2"):
            raise ValueError("dataVolumeIops applies only to dataVolumeType gp3 or io2")
        return self

    @property
    def ssh_user(self) -> str:
        return "ubuntu" if self.os.startswith("ubuntu") else "admin"

    @property
    def architecture(self) -> str:
        return "arm64" if _GRAVITON_RE.match(self.instance_type) else "x86_64"


class DockerSettings(Settings):
    engine: Literal["local", "vm"] = "local"
    host: str | None = Field(None, pattern=r"^(unix|tcp|ssh|npipe)://.+$")
    domain: Domain | None = None
    tls: Literal["internal", "acme", "selfsigned"] | None = None
    acme_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    https_port: int = Field(443, ge=1, le=65535)
    http_port: int = Field(80, ge=1, le=65535)
    caddy_image: ImageRef = "caddy:2.10.2"
    vm: VmSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DockerSettings:
        if self.engine == "vm":
            if self.vm is None:
                raise ValueError("engine 'vm' needs a 'vm' object (sshPublicKey and adminCidrs at least)")
            if self.host:
                raise ValueError("'host' is for engine 'local'; with engine 'vm' the stack connects over SSH")
        elif self.vm is not None:
            raise ValueError("'vm' is set but engine is 'local'; set engine: vm or remove 'vm'")
        if self.https_port == self.http_port:
            raise ValueError("httpsPort and httpPort must differ")
        mode = self.tls_mode
        if mode == "acme":
            if not self.domain:
                raise ValueError("tls 'acme' needs a 'domain' whose tenant hosts resolve to this Docker host")
            if not self.acme_email:
                raise ValueError("tls 'acme' needs 'acmeEmail' for the Let's Encrypt account")
        if mode == "internal" and self.engine == "vm":
            raise ValueError("tls 'internal' is for a local engine; on a VM use 'acme' (with a domain) or 'selfsigned'")
        if self.vm and self.vm.hosted_zone_id and not self.domain:
            raise ValueError("vm.hostedZoneId needs 'domain' (records are <tenant>.<domain>)")
        if self.engine == "vm":
            self._vm_checks()
        return self

    def _vm_checks(self) -> None:
        """On a VM a domain means Let's Encrypt, which must be able to reach ports 80/443."""
        assert self.vm is not None
        if 22 in (self.https_port, self.http_port):
            raise ValueError("httpsPort/httpPort cannot be 22 on a VM: the security group keeps 22 for SSH")
        if self.domain and self.tls is None and not self.acme_email:
            raise ValueError(
                "with a 'domain' the VM gets Let's Encrypt certificates: set 'acmeEmail', "
                "or set tls: selfsigned to use the stack's own CA instead"
            )
        if self.tls_mode == "acme":
            if (self.https_port, self.http_port) != (443, 80):
                raise ValueError(
                    "tls 'acme' on a VM needs httpsPort 443 and httpPort 80 (the ACME challenges use them)"
                )
            if "0.0.0.0/0" not in self.vm.ingress_cidrs:
                raise ValueError(
                    "tls 'acme' needs vm.ingressCidrs to include 0.0.0.0/0: Let's Encrypt validates from "
                    "addresses it does not publish; use tls: selfsigned for a private VM"
                )

    @property
    def tls_mode(self) -> str:
        if self.tls:
            return self.tls
        if self.domain and self.acme_email:
            return "acme"
        return "internal" if self.engine == "local" else "selfsigned"

    def host_for(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}" if self.domain else f"{tenant}.localhost"


# --------------------------------------------------------------------------- kubernetes


_K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # RFC 1123 label: namespaces, classes, secrets
_K8S_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"  # RFC 1123 subdomain: storage/ingress classes
_K8S_QUANTITY = r"^[1-9][0-9]*(Mi|Gi|Ti)$"


class IngressTls(Settings):
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


class Egress(Settings):
    """Egress is open by default: agents need the internet and the LLM.

    Narrow it with ``allowCidrs`` (and carve holes with ``exceptCidrs``, e.g. the cloud
    metadata endpoint 169.254.169.254/32). DNS (port 53) stays allowed unless ``allowDns`` is false.
    """

    allow_cidrs: list[Cidr] = Field(default_factory=lambda: list(WORLD), min_length=1)
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
        return sorted(self.allow_cidrs) != sorted(WORLD) or bool(self.except_cidrs)


class KubernetesSettings(Settings):
    """The Kubernetes model: one StatefulSet, Service, Ingress and NetworkPolicy per tenant."""

    namespace: str = Field("openhands", pattern=_K8S_NAME)
    create_namespace: bool = True
    kubeconfig: Secret | None = None  # contents or path; None = ambient (KUBECONFIG / ~/.kube/config)
    context: str | None = Field(None, min_length=1)
    domain: Domain
    ingress_class: str = Field("nginx", pattern=_K8S_SUBDOMAIN)
    ingress_namespace: str = Field("ingress-nginx", pattern=_K8S_NAME)
    ingress_annotations: dict[str, str] = {}
    tls: IngressTls
    storage_class: str | None = Field(None, pattern=_K8S_SUBDOMAIN)
    storage_size: str = Field("10Gi", pattern=_K8S_QUANTITY)
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod"] = "ReadWriteOnce"
    scratch_size: str = Field("4Gi", pattern=_K8S_QUANTITY)
    egress: Egress = Egress()

    @field_validator("ingress_annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        key_re = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
        for key in value:
            if not key_re.match(key):
                raise ValueError(f"{key!r} is not a valid annotation key ([prefix/]name)")
            if key.startswith("cert-manager.io/"):
                raise ValueError(f"{key!r}: set the issuer with tls.clusterIssuer / tls.issuer, not an annotation")
        return value

    @model_validator(mode="after")
    def _reuse_needs_namespace(self) -> KubernetesSettings:
        if self.namespace in ("kube-system", "kube-public", "kube-node-lease"):
            raise ValueError(f"namespace {self.namespace!r} is reserved for the cluster; choose another")
        if self.create_namespace and self.namespace == "default":
            raise ValueError("namespace 'default' always exists; set createNamespace: false to reuse it")
        return self

    def host_for(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}"


# --------------------------------------------------------------------------- ecs

_LOG_RETENTION = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                  3288, 3653)

# One host rule and one target group per tenant; AWS's default ALB quotas are 100 of each.
ALB_MAX_TENANTS = 100

# Fargate task sizes: vCPU -> (min MiB, max MiB, step MiB), from the ECS task-size table.
FARGATE_SIZES: dict[float, tuple[int, int, int]] = {
    0.25: (512, 2048, 512),  # 512, 1024, 2048 (1536 is refused; checked below)
    0.5: (1024, 4096, 1024),
    1.0: (2048, 8192, 1024),
    2.0: (4096, 16384, 1024),
    4.0: (8192, 30720, 1024),
    8.0: (16384, 61440, 4096),
    16.0: (32768, 122880, 8192),
}


def fargate_size_problem(cpu: float, memory: int) -> str | None:
    """Why ``cpu`` vCPU / ``memory`` MiB is not a Fargate task size, or None if it is."""
    if cpu not in FARGATE_SIZES:
        allowed = ", ".join(f"{c:g}" for c in FARGATE_SIZES)
        return f"cpu {cpu:g} is not a Fargate size; use one of {allowed} vCPU"
    low, high, step = FARGATE_SIZES[cpu]
    ok = low <= memory <= high and (memory - low) % step == 0 and not (cpu == 0.25 and memory == 1536)
    if not ok:
        allowed = "512, 1024 or 2048" if cpu == 0.25 else f"{low}-{high} in steps of {step}"
        return f"memory {memory} MiB does not fit {cpu:g} vCPU on Fargate; use {allowed} MiB"
    return None


class EcsSettings(Settings):
    domain: Domain
    hosted_zone_id: str | None = Field(None, pattern=r"^Z[0-9A-Z]{1,32}$")
    certificate_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$"
    )
    create_dns_records: bool | None = None  # default: on when hostedZoneId is set
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    public_subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = []
    private_subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = []
    vpc_cidr: Cidr = "10.40.0.0/16"
    nat_gateways: Literal["single", "perAz"] = "single"
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(WORLD), min_length=1)
    log_retention_days: int = 30
    efs_backups: bool = True
    idle_timeout: int = Field(3600, ge=60, le=4000)
    # TLS 1.3 policies only (TLS 1.2 fallback allowed by the default one).
    ssl_policy: str = Field("ELBSecurityPolicy-TLS13-1-2-2021-06", pattern=r"^ELBSecurityPolicy-TLS13-[0-9A-Za-z-]+$")
    deregistration_delay: int = Field(10, ge=0, le=3600)

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, days: int) -> int:
        if days not in _LOG_RETENTION:
            raise ValueError(f"CloudWatch accepts only {', '.join(map(str, _LOG_RETENTION))} days")
        return days

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc_size(cls, cidr: str) -> str:
        net = ipaddress.ip_network(cidr)
        if net.version != 4 or not 16 <= net.prefixlen <= 24:
            raise ValueError(f"{cidr} must be an IPv4 block from /16 to /24 (it is cut into 4 subnets)")
        return cidr

    @model_validator(mode="after")
    def _consistent(self) -> EcsSettings:
        if not self.hosted_zone_id and not self.certificate_arn:
            raise ValueError(
                "set hostedZoneId (ACM certificate, DNS-validated) or certificateArn (existing certificate)"
            )
        if self.create_dns_records and not self.hosted_zone_id:
            raise ValueError("createDnsRecords needs hostedZoneId")
        reuse = (self.vpc_id, self.public_subnet_ids, self.private_subnet_ids)
        if any(reuse) and not all(reuse):
            raise ValueError("to reuse a VPC set vpcId, publicSubnetIds and privateSubnetIds together")
        if self.vpc_id and (len(self.public_subnet_ids) < 2 or len(self.private_subnet_ids) < 1):
            raise ValueError("an ALB needs publicSubnetIds in 2 or more AZs, and tasks need privateSubnetIds")
        for ids in (self.public_subnet_ids, self.private_subnet_ids):
            if len(set(ids)) != len(ids):
                raise ValueError("subnet ids must not repeat")
        return self

    @property
    def dns_records(self) -> bool:
        return self.hosted_zone_id is not None if self.create_dns_records is None else self.create_dns_records

    def host_for(self, tenant: str) -> str:
        return f"{tenant}.{self.domain}"

    def check_stack(self, cfg: StackConfig) -> list[str]:
        """Checks that need the whole stack: Fargate only runs fixed cpu/memory pairs."""
        out = []
        problem = fargate_size_problem(cfg.resources.cpu, cfg.resources.memory)
        if problem:
            out.append(f"  - {NAMESPACE}:resources: {problem} (model 'ecs')")
        if len(cfg.tenants) > ALB_MAX_TENANTS:
            out.append(
                f"  - {NAMESPACE}:tenants: {len(cfg.tenants)} tenants, but one ALB holds {ALB_MAX_TENANTS} "
                "listener rules and target groups by default (AWS quota); split the tenants over stacks"
            )
        return out


# --------------------------------------------------------------------------- modal


# Modal object names: letters, digits, '-', '_', '.'; at most 64 characters (modal's
# check_object_name). Each tenant gets <appName>-<tenant>, <appName>-<tenant>-keys and
# <volumeName>-<tenant>, so the base names leave room for the longest tenant name.
_MODAL_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
MODAL_NAME_MAX = 64


class ModalSettings(Settings):
    """The Modal model: per tenant one Modal app, one Secret (the keys) and one Volume (the state)."""

    environment: str | None = Field(None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
    app_name: str = "openhands-agent-server"
    volume_name: str = "openhands-state"
    min_containers: int = 1
    max_containers: int = 1
    scaledown_window: int = Field(300, ge=2, le=3600)
    timeout: int = Field(3600, ge=10, le=86400)
    max_inputs: int = Field(100, ge=1, le=1000)
    canvas_ui: bool = False
    # Directory (relative to the project) that holds canvas_ui_tool.py, baked into the image.
    canvas_ui_dir: str = "tools"
    token_id: Secret | None = None
    token_secret: Secret | None = None

    @field_validator("min_containers")
    @classmethod
    def _warm_or_zero(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError(
                f"must be 1 (always warm, ~1 container billed all the time) or 0 (scale to zero: "
                f"cold start on the first request), got {value}; maxContainers is 1, so more cannot run"
            )
        return value

    @field_validator("max_containers")
    @classmethod
    def _single_writer(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                f"must be 1, got {value}: the agent server keeps its state in files and two containers "
                "on one volume serve stale catalogs and 404s; add tenants to scale out"
            )
        return value

    @field_validator("app_name", "volume_name")
    @classmethod
    def _modal_name(cls, value: str, info: ValidationInfo) -> str:
        # Longest suffix: "-<tenant>-keys" for the app (Secret name), "-<tenant>" for the volume.
        limit = MODAL_NAME_MAX - 21 - (5 if info.field_name == "app_name" else 0)
        if not re.match(_MODAL_NAME, value):
            raise ValueError(
                f"{value!r} is not a Modal name: use letters, digits, '-', '_' or '.', starting with a "
                "letter or digit"
            )
        if len(value) > limit:
            raise ValueError(
                f"{value!r} is {len(value)} characters; at most {limit}, so that the per-tenant names "
                f"stay within Modal's {MODAL_NAME_MAX}"
            )
        if re.match(r"^[a-z]{2}-[a-zA-Z0-9]{22}$", value):
            raise ValueError(f"{value!r} looks like a Modal object id; choose a name")
        return value

    @model_validator(mode="after")
    def _token_pair(self) -> ModalSettings:
        if (self.token_id is None) != (self.token_secret is None):
            raise ValueError(
                "set both tokenId and tokenSecret, or neither (then MODAL_TOKEN_ID/SECRET are used)"
            )
        return self

    def app_for(self, tenant: str) -> str:
        return f"{self.app_name}-{tenant}"

    def secret_for(self, tenant: str) -> str:
        return f"{self.app_name}-{tenant}-keys"

    def volume_for(self, tenant: str) -> str:
        return f"{self.volume_name}-{tenant}"

    @property
    def canvas_ui_path(self) -> str:
        from pathlib import Path

        path = Path(self.canvas_ui_dir)
        return str(path if path.is_absolute() else Path(__file__).resolve().parent.parent / path)

    def check_stack(self, cfg: StackConfig) -> list[str]:
        """Checks that need the disk: the Canvas UI tool must exist to be baked into the image."""
        problems = []
        if self.canvas_ui:
            from pathlib import Path

            tool = Path(self.canvas_ui_path) / "canvas_ui_tool.py"
            if not tool.is_file():
                problems.append(
                    f"  - {NAMESPACE}:modal.canvasUi: needs the Agent Canvas UI tool at {tool} "
                    "(set modal.canvasUiDir to the directory holding canvas_ui_tool.py, or canvasUi: false)"
                )
        return problems


# --------------------------------------------------------------------------- promotion

_STACK_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"


class EmergencyOverride(Settings):
    """Break-glass: deploy something dev did not run. Logged in the stack outputs."""

    image: ImageRef | None = None  # None: still dev's image, only the contract check is waived
    reason: str = Field(max_length=500)

    @field_validator("reason")
    @classmethod
    def _real_reason(cls, value: str) -> str:
        if len(value.strip()) < 10:
            raise ValueError("give a real reason (at least 10 characters, e.g. an incident id and why)")
        return value.strip()


class PromotionSettings(Settings):
    """Prod promotes dev's image and contract version instead of choosing its own (components/promotion.py)."""

    from_stack: str  # <org>/<project>/<stack>; DIY backends use organization/<project>/<stack>
    emergency_override: EmergencyOverride | None = None

    @field_validator("from_stack")
    @classmethod
    def _qualified(cls, value: str) -> str:
        if not re.match(_STACK_REF, value):
            raise ValueError(
                f"{value!r} is not a fully qualified stack name; use <org>/<project>/<stack>, e.g. "
                "organization/openhands/dev on a DIY backend or acme/openhands/dev on Pulumi Cloud"
            )
        return value


# --------------------------------------------------------------------------- stack


class StackConfig(Settings):
    model: Literal["modal", "docker", "ecs", "kubernetes"]
    tenants: list[TenantName] = Field(default_factory=lambda: ["default"], min_length=1, max_length=200)
    image: ImageRef = contract.DEFAULT_IMAGE
    resources: Resources = Resources()
    keys: Keys = Keys()
    tenant_keys: dict[str, SuppliedKeys] = {}
    retain_data: bool = True
    docker: DockerSettings | None = None
    kubernetes: KubernetesSettings | None = None
    ecs: EcsSettings | None = None
    modal: ModalSettings | None = None
    promotion: PromotionSettings | None = None

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[str]) -> list[str]:
        dupes = sorted({t for t in tenants if tenants.count(t) > 1})
        if dupes:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dupes)}")
        return tenants

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        unknown = sorted(set(self.tenant_keys) - set(self.tenants))
        if unknown:
            raise ValueError(f"tenantKeys names {', '.join(unknown)}, which are not in tenants {self.tenants}")
        others = [m for m in MODELS if m != self.model and getattr(self, m) is not None]
        if others:
            raise ValueError(
                f"model is {self.model!r} but settings for {', '.join(others)} are present; remove them "
                "(a stack deploys one model)"
            )
        if self.model in ("kubernetes", "ecs") and getattr(self, self.model) is None:
            raise ValueError(f"model {self.model!r} needs the '{self.model}' object (at least its domain and TLS)")
        return self

    @property
    def settings(self) -> Any:
        """The chosen model's settings object (defaults where the model allows them)."""
        value = getattr(self, self.model)
        if value is None:
            value = {"docker": DockerSettings, "modal": ModalSettings}[self.model]()
        return value


SECRET_FIELDS = ("tenantKeys",)


# --------------------------------------------------------------------------- loading


def _raw() -> tuple[dict[str, Any], set[str]]:
    """All ``openhands:*`` config (as Pulumi hands it to the program) and the secret keys."""
    from pulumi.runtime import config as rc

    merged: dict[str, Any] = {**rc.get_config_env(), **rc.CONFIG.get()}
    secret = set(rc._SECRET_KEYS.get()) | set(rc.get_config_secret_keys_env())
    prefix = NAMESPACE + ":"
    values = {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}
    return values, {k[len(prefix) :] for k in secret if k.startswith(prefix)}


def _decode(value: Any) -> Any:
    # Pulumi passes every value as a string; objects, lists, numbers and booleans as JSON.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _walk_model(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings class found at ``loc`` (to list the keys it allows)."""
    import typing

    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return model if part == loc[-1] else None
        model = _model_in(field.annotation, typing)
    return model


def _model_in(annotation: Any, typing: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg, typing)
        if found:
            return found
    return None


def _key(loc: tuple[Any, ...]) -> str:
    out = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if i else "") + str(part)
    return out


def _format(errors: list[dict[str, Any]], stack: str) -> str:
    lines = [f"invalid configuration for stack {stack!r}:"]
    for err in errors:
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_tenant(), str]",))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _walk_model(StackConfig, loc[:-1]) if len(loc) > 1 else StackConfig
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            msg += f"; allowed: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "is required"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind in ("literal_error", "enum"):
                got = err.get("input")
                msg += f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        lines.append(f"  - {_key(loc) if loc else NAMESPACE}: {msg}")
    return "\n".join(lines)


def parse(
    values: Mapping[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(), stack: str = "?"
) -> StackConfig:
    """Parse decoded ``openhands:*`` values (keys without the namespace) into a StackConfig."""
    problems: list[str] = []
    for key in SECRET_FIELDS:
        if key in values and key not in secret_keys:
            problems.append(
                f"  - {NAMESPACE}:{key}: holds keys but is stored in plain text; set it with "
                f"`pulumi config set --secret --path '{key}.<tenant>.sessionApiKey' ...`"
            )
    k8s = _decode(values.get("kubernetes"))  # Pulumi hands objects over as JSON strings
    if isinstance(k8s, dict) and k8s.get("kubeconfig") and "kubernetes" not in secret_keys:
        problems.append(
            f"  - {NAMESPACE}:kubernetes.kubeconfig: a kubeconfig is a credential; set it with "
            "`pulumi config set --secret --path kubernetes.kubeconfig < ~/.kube/config`"
        )
    modal = _decode(values.get("modal"))
    if isinstance(modal, dict) and modal.get("tokenSecret") and "modal" not in secret_keys:
        problems.append(
            f"  - {NAMESPACE}:modal.tokenSecret: a Modal token is a credential; set it with "
            "`pulumi config set --secret --path modal.tokenSecret ...`"
        )
    try:
        cfg = StackConfig.model_validate({k: _decode(v) for k, v in values.items()})
    except ValidationError as exc:
        message = _format(exc.errors(), stack)
        if problems:
            message += "\n" + "\n".join(problems)
        raise ConfigError(message) from None
    # Model settings may check the whole stack (e.g. ECS: Fargate cpu/memory pairs).
    check = getattr(cfg.settings, "check_stack", None)
    if check is not None:
        problems += check(cfg)
    if problems:
        raise ConfigError(f"invalid configuration for stack {stack!r}:\n" + "\n".join(problems))
    return cfg


def load() -> StackConfig:
    """Read and validate the stack's ``openhands:*`` config. Raises ConfigError."""
    values, secret_keys = _raw()
    return parse(values, secret_keys, pulumi.get_stack())
