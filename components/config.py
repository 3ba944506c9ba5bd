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

# Every ``pattern=`` constraint in these models is registered here with words and an example:
# pydantic's own message ("String should match pattern '^...$'") would show the user a regex.
# tests/config/test_config_errors.py walks the models and fails on a pattern missing from this table.
PATTERN_WORDS: dict[str, tuple[str, str]] = {}


def _pattern(regex: str, words: str, example: str) -> str:
    PATTERN_WORDS[regex] = (words, example)
    return regex


_VPC_ID = _pattern(r"^vpc-[0-9a-f]{8,17}$", "a VPC id: 'vpc-' and 8 or 17 hex digits", "vpc-0123456789abcdef0")
_SUBNET_ID = _pattern(
    r"^subnet-[0-9a-f]{8,17}$", "a subnet id: 'subnet-' and 8 or 17 hex digits", "subnet-0123456789abcdef0"
)
_HOSTED_ZONE_ID = _pattern(
    r"^Z[0-9A-Z]{1,32}$",
    "a Route 53 hosted zone id: 'Z' and up to 32 uppercase letters or digits, without '/hostedzone/'",
    "Z0123456789ABCDEFGHIJ",
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
        raise ValueError(
            f"{value!r} is not a DNS domain: dot-separated labels of lowercase letters, digits and '-', "
            "e.g. agents.example.com"
        )
    return value


def _image(value: str) -> str:
    if not _IMAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not an image reference; expected registry/name:tag or registry/name@sha256:<digest>"
        )
    return value


def image_parts(ref: str) -> tuple[str | None, str, str | None, str | None]:
    """(registry, repository, tag, digest) of an image reference; registry None when it names none.

    Docker's rule: the first path component is a registry when it has a '.' or ':' or is 'localhost'."""
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    if ":" in name[slash + 1 :]:
        name, tag = name.rsplit(":", 1)
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag, digest or None
    return None, name, tag, digest or None


def image_issues(ref: str) -> tuple[str | None, str | None]:
    """(why it is not pinned, why it names no registry); each None when fine."""
    registry, repo, tag, digest = image_parts(ref)
    unpinned = None
    if digest is None and tag is None:
        unpinned = "has no tag, so it means ':latest', which moves"
    elif digest is None and tag.lower() == "latest":
        unpinned = f"uses the moving tag {tag!r}"
    elif digest is None and not any(ch.isdigit() for ch in tag):
        # The policy pack's image-pinned rule too: a tag without a version (main, stable) moves.
        unpinned = f"uses the tag {tag!r}, which names no version and moves"
    bare = None
    if registry is None:
        full = f"docker.io/{repo if '/' in repo else 'library/' + repo}"
        bare = f"names no registry, so it silently means Docker Hub ({full}); write the registry out"
    return unpinned, bare


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None


def _bind_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address of this host; use e.g. 127.0.0.1 (this machine only), "
            "192.168.1.20 (one LAN interface) or 0.0.0.0 (every interface)"
        ) from None


def _not_blank(reason: str) -> Any:
    """A validator refusing an empty or whitespace secret, with the reason that matters for this value."""

    def check(value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(f"must not be empty or whitespace ({reason})")
        return value

    return AfterValidator(check)


# Supplied keys shorter than this are refused: a short key can be guessed or brute-forced
# (the generated ones have 48 characters).
MIN_KEY_LENGTH = 32


def _strong_key(value: SecretStr) -> SecretStr:
    n = len(value.get_secret_value().strip())
    if n < MIN_KEY_LENGTH:
        raise ValueError(
            f"is {n} characters; a supplied key needs at least {MIN_KEY_LENGTH} (a shorter one can be "
            "brute-forced); generate one with `openssl rand -hex 32`"
        )
    return value


TenantName = Annotated[str, AfterValidator(_tenant)]
Domain = Annotated[str, AfterValidator(_domain)]
ImageRef = Annotated[str, AfterValidator(_image)]
Cidr = Annotated[str, AfterValidator(_cidr)]
BindAddress = Annotated[str, AfterValidator(_bind_address)]
# A supplied session or secret key: never empty, never short.
SuppliedKey = Annotated[
    SecretStr, _not_blank("an empty key disables authentication or encryption"), AfterValidator(_strong_key)
]
KubeconfigSecret = Annotated[
    SecretStr,
    _not_blank("remove the key to use the ambient kubeconfig: KUBECONFIG or ~/.kube/config"),
]
ModalToken = Annotated[
    SecretStr,
    _not_blank("remove tokenId and tokenSecret to use MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml"),
]
WORLD = ("0.0.0.0/0", "::/0")


class Settings(BaseModel):
    """Base: camelCase keys in the stack file, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, hide_input_in_errors=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bools_are_bools(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read true as 1 for a number, and 1 or "yes" as true for a switch; in a
        # stack file either is a mistake, so only true/false are switches and never numbers.
        if value is None or not info.field_name:
            return value
        import typing

        annotation = cls.model_fields[info.field_name].annotation
        kinds = set(typing.get_args(annotation)) | {annotation}
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError(f"is {str(value).lower()} (a boolean); expected a number")
        if not isinstance(value, bool) and bool in kinds and kinds <= {bool, type(None), annotation}:
            raise ValueError(f"is {value!r}; expected true or false")
        return value


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

    session_api_key: SuppliedKey
    secret_key: SuppliedKey
    previous_session_api_key: SuppliedKey | None = None
    previous_secret_keys: list[SuppliedKey] = []


# --------------------------------------------------------------------------- docker


# Architectures by instance family: a "g" among the letters after the generation digit
# means Graviton (t4g, m7g, c7gn, r6gd); everything else here is x86_64.
_GRAVITON_RE = re.compile(r"^[a-z]+\d+[a-z-]*g[a-z-]*\.")
# Widest source range accepted for SSH: anything wider is "the internet" in practice.
_MIN_ADMIN_PREFIX = {4: 8, 6: 32}


# Families whose instances this stack cannot launch as it stands.
_UNSUPPORTED_FAMILIES = {
    "mac": "Mac instances run only on a Dedicated Host, which this stack does not allocate",
}


def instance_type_problem(value: str) -> str | None:
    """Why ``value`` is not an EC2 instance type this stack can use, or None."""
    from components.ec2_types import BOTOCORE_VERSION, INSTANCE_TYPES

    family, _, size = value.partition(".")
    for prefix, why in _UNSUPPORTED_FAMILIES.items():
        if family.startswith(prefix):
            return f"{value!r}: {why}; choose e.g. t3.large, m7i.large or t4g.large (Graviton)"
    if family not in INSTANCE_TYPES:
        near = difflib.get_close_matches(family, INSTANCE_TYPES, n=3)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        return (
            f"{value!r}: unknown instance family {family!r}; {hint}families are those EC2 lists "
            f"(as of botocore {BOTOCORE_VERSION}), e.g. t3, t3a, t4g, m7i, m7g, c7i, r7i"
        )
    sizes = INSTANCE_TYPES[family].split()
    if size not in sizes:
        return f"{value!r}: {family} has no size {size!r}; its sizes are {', '.join(sizes)}"
    return None


# EBS limits by volume type (CreateVolume in botocore's EC2 model): size in GiB, IOPS, IOPS per GiB.
EBS_SIZE = {"gp2": (1, 16384), "gp3": (1, 65536), "io2": (4, 65536), "st1": (125, 16384)}
EBS_IOPS = {"gp3": (3000, 80000, 500), "io2": (100, 256000, 1000)}


def ebs_size_problem(kind: str, size: int) -> str | None:
    """Why AWS would refuse an EBS volume of this type and size (GiB), or None."""
    low, high = EBS_SIZE[kind]
    if not low <= size <= high:
        why = " (st1 is a throughput HDD volume)" if kind == "st1" else ""
        return f"{kind} needs dataVolumeSize {low}-{high} GiB{why}, got {size} (an AWS EBS rule)"
    return None


def ebs_iops_problem(kind: str, size: int, iops: int | None) -> str | None:
    """Why AWS would refuse these IOPS for an EBS volume of this type and size, or None."""
    if iops is None:
        if kind == "io2":
            return (
                "is required with dataVolumeType io2: AWS provisions io2 by IOPS (100-256000, at most 1000 "
                f"per GiB, so at most {min(256000, 1000 * size)} for {size} GiB), e.g. dataVolumeIops: 3000"
            )
        return None
    if kind not in EBS_IOPS:
        return None  # refused with its own message: IOPS apply to gp3 and io2 only
    least, most, per_gib = EBS_IOPS[kind]
    # gp3's baseline of 3000 IOPS holds for any size; above it, at most 500 per GiB.
    ceiling = min(most, max(per_gib * size, least if kind == "gp3" else 0))
    if not least <= iops <= ceiling:
        return (
            f"{iops} is out of range for {kind} with {size} GiB: AWS allows {least}-{most} IOPS "
            f"and at most {per_gib} per GiB, so {least}-{ceiling} here"
        )
    return None


def read_private_key(path_text: str) -> str:
    """The private key file's text. Raises ValueError: missing, unreadable, not a key, or too open for ssh."""
    import os
    import stat
    from pathlib import Path

    path = Path(path_text).expanduser()
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a file; give the private key file, or remove the key to use the SSH agent")
        text = path.read_text()
    except OSError as exc:
        raise ValueError(
            f"cannot read {path} ({exc.strerror}); give a readable private key file, or remove the key to use "
            "the SSH agent"
        ) from None
    except UnicodeDecodeError:
        text = ""
    if "PRIVATE KEY" not in text:
        raise ValueError(f"{path} is not a PEM or OpenSSH private key")
    # ssh (the Docker provider runs it with -i) ignores a key others can read.
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        raise ValueError(
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); ssh refuses such a key: "
            f"chmod 600 {path}"
        )
    return text


class VmSettings(Settings):
    """The EC2 VM that hosts the Docker engine when ``docker.engine`` is ``vm``."""

    instance_type: str = Field(
        "t3.large",
        pattern=_pattern(
            r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9]+$", "an EC2 instance type: <family>.<size>", "t3.large"
        ),
    )
    # Each ships a docker.io the containers run on (API >= contract.DOCKER_MIN_API, Docker 20.10).
    os: Literal["ubuntu-24.04", "debian-13", "debian-12"] = "ubuntu-24.04"
    vpc_id: str | None = Field(None, pattern=_VPC_ID)
    subnet_id: str | None = Field(None, pattern=_SUBNET_ID)
    ssh_public_key: str = Field(
        pattern=_pattern(
            r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$",
            "an OpenSSH public key line: its type (ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521), "
            "the base64 key and an optional comment: the contents of ~/.ssh/id_ed25519.pub, not its path",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... you@laptop",
        )
    )
    ssh_private_key_path: str | None = None
    admin_cidrs: list[Cidr]  # required; an empty list is refused below with the reason
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(WORLD), min_length=1)
    root_volume_size: int = Field(30, ge=8, le=1024)
    data_volume_size: int = Field(50, ge=1, le=16384)
    data_volume_type: Literal["gp3", "gp2", "io2", "st1"] = "gp3"
    # Checked against type and size even when absent (io2 needs it): validate_default.
    data_volume_iops: int | None = Field(None, ge=100, le=256000, validate_default=True)
    # Restore: create the data volume from this snapshot instead of empty.
    data_snapshot_id: str | None = Field(
        None,
        pattern=_pattern(
            r"^snap-[0-9a-f]{8,17}$", "an EBS snapshot id: 'snap-' and 8 or 17 hex digits", "snap-0123456789abcdef0"
        ),
    )
    # Daily EBS snapshots of the data volume kept by Data Lifecycle Manager; 0 turns them off.
    daily_snapshots: int = Field(7, ge=0, le=1000)
    hosted_zone_id: str | None = Field(None, pattern=_HOSTED_ZONE_ID)

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

    @field_validator("ssh_public_key", mode="before")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        # `pulumi config set ... < ~/.ssh/id_ed25519.pub` keeps the file's final newline.
        return value.strip() if isinstance(value, str) else value

    @field_validator("instance_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        problem = instance_type_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("data_volume_type")
    @classmethod
    def _volume_size(cls, kind: str, info: ValidationInfo) -> str:
        size = info.data.get("data_volume_size")
        problem = ebs_size_problem(kind, size) if size is not None else None
        if problem:
            raise ValueError(problem)
        return kind

    @field_validator("data_volume_iops")
    @classmethod
    def _volume_iops(cls, iops: int | None, info: ValidationInfo) -> int | None:
        size, kind = info.data.get("data_volume_size"), info.data.get("data_volume_type")
        problem = ebs_iops_problem(kind, size, iops) if size is not None and kind is not None else None
        if problem:
            raise ValueError(problem)
        return iops

    def private_key(self) -> str | None:
        """The text of sshPrivateKeyPath (None without one). Raises ValueError saying what is wrong."""
        if not self.ssh_private_key_path:
            return None
        return read_private_key(self.ssh_private_key_path)

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
    host: str | None = Field(
        None,
        pattern=_pattern(
            r"^(unix|tcp|ssh|npipe)://.+$",
            "a Docker engine URL starting with unix://, tcp://, ssh:// or npipe://",
            "unix:///var/run/docker.sock",
        ),
    )
    domain: Domain | None = None
    tls: Literal["internal", "acme", "selfsigned"] | None = None
    acme_email: str | None = Field(
        None, pattern=_pattern(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "an email address", "ops@example.com")
    )
    https_port: int = Field(443, ge=1, le=65535)
    http_port: int = Field(80, ge=1, le=65535)
    # The host address the proxy publishes on. Unset: loopback for a local engine (nothing on
    # the LAN), every interface on a VM (its security group is the filter).
    bind_address: BindAddress | None = None
    # Written out in full: a bare "caddy:2.10.2" silently means Docker Hub (and is warned about).
    caddy_image: ImageRef = "docker.io/library/caddy:2.10.2"
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

    def check_stack(self, cfg: StackConfig) -> list[str]:
        """Checks that need the disk, done before any resource: the deploy key, the engine's socket."""
        from pathlib import Path

        problems = []
        if self.vm is not None:
            try:
                self.vm.private_key()
            except ValueError as exc:
                problems.append(f"  - {NAMESPACE}:docker.vm.sshPrivateKeyPath: {exc}")
        if self.host and self.host.startswith("unix://"):
            sock = Path(self.host.removeprefix("unix://"))
            if not sock.exists():
                problems.append(
                    f"  - {NAMESPACE}:docker.host: {sock} does not exist; is the Docker engine running? "
                    "(remove 'host' to use DOCKER_HOST or the default socket)"
                )
        return problems

    @property
    def publish_address(self) -> str:
        """Where the proxy's ports are published on the engine's host."""
        if self.bind_address:
            return self.bind_address
        return "0.0.0.0" if self.engine == "vm" else "127.0.0.1"


# --------------------------------------------------------------------------- kubernetes


_K8S_NAME = _pattern(  # RFC 1123 label: namespaces, classes, secrets
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    "a Kubernetes name (RFC 1123 label): at most 63 lowercase letters, digits or '-', starting and ending "
    "with a letter or digit",
    "openhands",
)
_K8S_SUBDOMAIN = _pattern(  # RFC 1123 subdomain: storage/ingress classes
    r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
    "a Kubernetes name (RFC 1123 subdomain): at most 253 lowercase letters, digits, '-' or '.', starting and "
    "ending with a letter or digit",
    "letsencrypt-prod",
)
_K8S_QUANTITY = _pattern(
    r"^[1-9][0-9]*(Mi|Gi|Ti)$", "a whole number without a leading zero and the unit Mi, Gi or Ti", "10Gi"
)


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


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Toleration(Settings):
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


class GatewaySettings(Settings):
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


_K8S_PREFIX = _pattern(  # a DNS-1035 label short enough for "<prefix>-<tenant>" object names
    r"^[a-z]([-a-z0-9]{0,24}[a-z0-9])?$",
    "1-26 lowercase letters, digits or '-', starting with a letter and ending with a letter or digit",
    "openhands-prod",
)


class KubernetesSettings(Settings):
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
        from components.kubernetes import name_prefix, namespace_for  # the tenants' namespace

        tenants_ns = namespace_for(self, name_prefix(self))
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
                target = Path(__file__).resolve().parent.parent / target
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
    hosted_zone_id: str | None = Field(None, pattern=_HOSTED_ZONE_ID)
    certificate_arn: str | None = Field(
        None,
        pattern=_pattern(
            r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$",
            "an ACM certificate ARN: arn:aws:acm:<region>:<12-digit account>:certificate/<id>",
            "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        ),
    )
    create_dns_records: bool | None = None  # default: on when hostedZoneId is set
    vpc_id: str | None = Field(None, pattern=_VPC_ID)
    public_subnet_ids: list[Annotated[str, Field(pattern=_SUBNET_ID)]] = []
    private_subnet_ids: list[Annotated[str, Field(pattern=_SUBNET_ID)]] = []
    vpc_cidr: Cidr = "10.40.0.0/16"
    nat_gateways: Literal["single", "perAz"] = "single"
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(WORLD), min_length=1)
    log_retention_days: int = 30
    efs_backups: bool = True
    idle_timeout: int = Field(3600, ge=60, le=4000)
    # TLS 1.3 policies only (TLS 1.2 fallback allowed by the default one).
    ssl_policy: str = Field(
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        pattern=_pattern(
            r"^ELBSecurityPolicy-TLS13-[0-9A-Za-z-]+$",
            "an ELB security policy with TLS 1.3: ELBSecurityPolicy-TLS13-...",
            "ELBSecurityPolicy-TLS13-1-2-2021-06",
        ),
    )
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


def _modal_base_limit(field: str) -> int:
    """Longest base name: room for "-<tenant>-keys" (Secret) or "-<tenant>" (Volume)."""
    return MODAL_NAME_MAX - 21 - (5 if field == "app_name" else 0)


class ModalSettings(Settings):
    """The Modal model: per tenant one Modal app, one Secret (the keys) and one Volume (the state)."""

    environment: str | None = Field(
        None,
        pattern=_pattern(
            r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$",
            "a Modal environment name: 1-64 letters, digits, '-' or '_', starting with a letter or digit",
            "main",
        ),
    )
    # Modal names are global to a Modal environment, so by default they carry the project and
    # the stack: two stacks (or projects) deploying into one environment never share an app,
    # Secret or Volume. Set them to adopt objects that already exist under other names.
    app_name: str | None = None  # default <project>-<stack>
    volume_name: str | None = None  # default <project>-<stack>-state
    min_containers: int = 1
    max_containers: int = 1
    scaledown_window: int = Field(300, ge=2, le=3600)
    timeout: int = Field(3600, ge=10, le=86400)
    max_inputs: int = Field(100, ge=1, le=1000)
    canvas_ui: bool = False
    # Directory (relative to the project) that holds canvas_ui_tool.py, baked into the image.
    canvas_ui_dir: str = "tools"
    token_id: ModalToken | None = None
    token_secret: ModalToken | None = None

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
    def _modal_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        limit = _modal_base_limit(info.field_name)
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

    def _base(self, field: str) -> str:
        explicit = getattr(self, field)
        if explicit is not None:
            return explicit
        suffix = ("state",) if field == "volume_name" else ()
        return contract.global_name(
            pulumi.get_project(), pulumi.get_stack(), *suffix,
            max_length=_modal_base_limit(field), invalid=r"[^A-Za-z0-9._-]",
        )

    def app_for(self, tenant: str) -> str:
        return f"{self._base('app_name')}-{tenant}"

    def secret_for(self, tenant: str) -> str:
        return f"{self._base('app_name')}-{tenant}-keys"

    def volume_for(self, tenant: str) -> str:
        return f"{self._base('volume_name')}-{tenant}"

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
            # parse() reports each block under its own key; this covers direct validation.
            raise ValueError(f"{', '.join(others)}: not used by model {self.model!r}; remove it")
        if self.model in ("kubernetes", "ecs") and getattr(self, self.model) is None:
            raise ValueError(f"model {self.model!r} needs the '{self.model}' object (at least its domain and TLS)")
        return self

    def images(self) -> list[tuple[str, str]]:
        """(config key, reference) of every image this stack's config names."""
        out = [("image", self.image)]
        if self.model == "docker":
            out.append(("docker.caddyImage", self.settings.caddy_image))
        override = self.promotion.emergency_override if self.promotion else None
        if override and override.image:
            out.append(("promotion.emergencyOverride.image", override.image))
        return out

    @property
    def settings(self) -> Any:
        """The chosen model's settings object (defaults where the model allows them)."""
        value = getattr(self, self.model)
        if value is None:
            value = {"docker": DockerSettings, "modal": ModalSettings}[self.model]()
        return value


SECRET_FIELDS = ("tenantKeys",)


# --------------------------------------------------------------------------- loading


def namespace_typos(keys: Any) -> list[str]:
    """Config keys whose namespace looks like a misspelt ``openhands`` (they would be silently ignored)."""
    out = []
    for key in keys:
        ns, _, name = str(key).partition(":")
        if ns != NAMESPACE and difflib.SequenceMatcher(None, ns.lower(), NAMESPACE).ratio() >= 0.8:
            out.append(f"{key}: unknown namespace {ns!r} (did you mean {NAMESPACE}:{name}?)")
    return out


def _raw() -> tuple[dict[str, Any], set[str]]:
    """All ``openhands:*`` config (as Pulumi hands it to the program) and the secret keys."""
    from pulumi.runtime import config as rc

    merged: dict[str, Any] = {**rc.get_config_env(), **rc.CONFIG.get()}
    secret = set(rc._SECRET_KEYS.get()) | set(rc.get_config_secret_keys_env())
    typos = namespace_typos(merged)
    if typos:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {t}" for t in typos))
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
            # Validators of defaults report the Python name (data_volume_iops); show the config key.
            part = to_camel(part) if part in _FIELD_NAMES else part
            out += ("." if i else "") + str(part)
    return out


def _field_names(model: type[BaseModel], seen: set[str]) -> set[str]:
    import typing

    names = set()
    for name, f in model.model_fields.items():
        if "_" in name:
            names.add(name)
        found = _model_in(f.annotation, typing)
        if found and found.__name__ not in seen:
            seen.add(found.__name__)
            names |= _field_names(found, seen)
    return names


def _format(errors: list[dict[str, Any]], stack: str) -> str:
    lines = [f"invalid configuration for stack {stack!r}:"]
    for err in errors:
        # Drop pydantic's validator tags ("function-after[_tenant(), str]"): they are no config keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and re.fullmatch(r"[a-z-]+\[.*\]", p)))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _walk_model(StackConfig, loc[:-1]) if len(loc) > 1 else StackConfig
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            msg += f"; allowed: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "is required"
        elif kind == "string_pattern_mismatch":
            words, example = PATTERN_WORDS.get(err.get("ctx", {}).get("pattern", ""), ("", ""))
            got = err.get("input")
            msg = f"must be {words}, e.g. {example}" if words else "is not in the expected format"
            if isinstance(got, str):
                msg += f" (got {got if len(got) <= 60 else got[:57] + '...'!r})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind in ("literal_error", "enum"):
                got = err.get("input")
                msg += f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        lines.append(f"  - {_key(loc) if loc else NAMESPACE}: {msg}")
    return "\n".join(lines)


_FIELD_NAMES = _field_names(StackConfig, set())


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
    decoded = {k: _decode(v) for k, v in values.items()}
    model = decoded.get("model")
    if isinstance(model, str) and model in MODELS:
        # Another model's block is reported under its own key, and its contents are not validated.
        for other in MODELS:
            if other != model and decoded.get(other) is not None:
                del decoded[other]
                problems.append(
                    f"  - {NAMESPACE}:{other}: not used by model {model!r}; remove it (a stack deploys one model)"
                )
    try:
        cfg = StackConfig.model_validate(decoded)
    except ValidationError as exc:
        message = _format(exc.errors(), stack)
        if problems:
            message += "\n" + "\n".join(problems)
        raise ConfigError(message) from None
    # Model settings may check the whole stack (e.g. ECS: Fargate cpu/memory pairs) and the disk
    # (key files, the Modal tool file): all before the program registers anything.
    check = getattr(cfg.settings, "check_stack", None)
    if check is not None:
        problems += check(cfg)
    if is_prod(cfg, stack):
        for key, ref in cfg.images():
            unpinned, _ = image_issues(ref)
            if unpinned:
                problems.append(
                    f"  - {NAMESPACE}:{key}: {ref!r} {unpinned}; a prod stack deploys pinned images only: use a "
                    f"version tag or a digest, e.g. {contract.DEFAULT_IMAGE}"
                )
    if problems:
        raise ConfigError(f"invalid configuration for stack {stack!r}:\n" + "\n".join(problems))
    return cfg


# Stacks held to prod rules (pinned images): these names, and every stack that promotes
# (``promotion`` set), the same stacks whose policy config makes ``image-pinned`` mandatory.
PROD_STACKS = ("prod", "production")


def is_prod(cfg: StackConfig, stack: str) -> bool:
    return cfg.promotion is not None or stack.rsplit("/", 1)[-1] in PROD_STACKS


def warnings(cfg: StackConfig, stack: str) -> list[str]:
    """What is allowed but risky: unpinned images outside prod, images that name no registry."""
    out = []
    for key, ref in cfg.images():
        unpinned, bare = image_issues(ref)
        if unpinned and not is_prod(cfg, stack):
            out.append(
                f"{NAMESPACE}:{key}: {ref!r} {unpinned}: a redeploy may run another image; pin a version tag "
                "or a digest (prod stacks refuse unpinned images)"
            )
        if bare:
            out.append(f"{NAMESPACE}:{key}: {ref!r} {bare}")
    return out


def load() -> StackConfig:
    """Read and validate the stack's ``openhands:*`` config. Raises ConfigError.

    Warnings (see ``warnings``) go to ``pulumi.log.warn``: a preview shows them."""
    stack = pulumi.get_stack()
    # Pulumi read the stack file as YAML 1.1 and kept quiet about repeated keys, `yes`, `0443`, ...:
    # read the same file strictly first (components/stackfile.py), so those are errors here too.
    from components import stackfile

    tracked = stackfile.tracked_file(stack)
    if tracked is not None:
        stackfile.read_config(tracked)
    values, secret_keys = _raw()
    cfg = parse(values, secret_keys, stack)
    for message in warnings(cfg, stack):
        pulumi.log.warn(message)
    return cfg
