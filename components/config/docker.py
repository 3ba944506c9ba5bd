"""ConfigModel of the Docker model: the engine (local or a VM) and the VM itself."""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components import contract
from components.config.errors import NAMESPACE
from components.config.values import (
    HOSTED_ZONE_ID,
    SUBNET_ID,
    VPC_ID,
    BindAddress,
    Cidr,
    ConfigModel,
    Domain,
    ImageRef,
    pattern,
)

if TYPE_CHECKING:
    from components.config.stack import StackConfig



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
    from components.config.ec2_types import BOTOCORE_VERSION, INSTANCE_TYPES

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


class VmSettings(ConfigModel):
    """The EC2 VM that hosts the Docker engine when ``docker.engine`` is ``vm``."""

    instance_type: str = Field(
        "t3.large",
        pattern=pattern(
            r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9]+$", "an EC2 instance type: <family>.<size>", "t3.large"
        ),
    )
    # Each ships a docker.io the containers run on (API >= contract.DOCKER_MIN_API, Docker 20.10).
    os: Literal["ubuntu-24.04", "debian-13", "debian-12"] = "ubuntu-24.04"
    vpc_id: str | None = Field(None, pattern=VPC_ID)
    subnet_id: str | None = Field(None, pattern=SUBNET_ID)
    ssh_public_key: str = Field(
        pattern=pattern(
            r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$",
            "an OpenSSH public key line: its type (ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521), "
            "the base64 key and an optional comment: the contents of ~/.ssh/id_ed25519.pub, not its path",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... you@laptop",
        )
    )
    ssh_private_key_path: str | None = None
    admin_cidrs: list[Cidr]  # required; an empty list is refused below with the reason
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(contract.WORLD_CIDRS), min_length=1)
    root_volume_size: int = Field(30, ge=8, le=1024)
    data_volume_size: int = Field(50, ge=1, le=16384)
    data_volume_type: Literal["gp3", "gp2", "io2", "st1"] = "gp3"
    # Checked against type and size even when absent (io2 needs it): validate_default.
    data_volume_iops: int | None = Field(None, ge=100, le=256000, validate_default=True)
    # Restore: create the data volume from this snapshot instead of empty.
    data_snapshot_id: str | None = Field(
        None,
        pattern=pattern(
            r"^snap-[0-9a-f]{8,17}$", "an EBS snapshot id: 'snap-' and 8 or 17 hex digits", "snap-0123456789abcdef0"
        ),
    )
    # Daily EBS snapshots of the data volume kept by Data Lifecycle Manager; 0 turns them off.
    daily_snapshots: int = Field(7, ge=0, le=1000)
    hosted_zone_id: str | None = Field(None, pattern=HOSTED_ZONE_ID)

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


class ProxyLimits(ConfigModel):
    """What one client may hold in the Caddy proxy (docs/local.md, "Limits"); the defaults keep
    long-lived WebSockets working. Rendered into the Caddyfile by components/docker/caddy.py."""

    # A larger declared body is answered 413 by Caddy before the server sees a byte; a chunked
    # body is cut at this size. The agent server's uploads (POST /api/file/upload) stream to disk.
    max_request_body_mib: int = Field(64, ge=1, le=10240, alias="maxRequestBodyMiB")
    # From accept to the end of the request headers, TLS handshake included: slow-header clients.
    read_header_timeout_seconds: int = Field(10, ge=1, le=300)
    # The whole request body, server-wide. 0 (off) by default: it would cut slow legitimate uploads,
    # and on HTTP/2 it runs for a stream's whole life, so it would cut a WebSocket carried over HTTP/2.
    read_body_timeout_seconds: int = Field(0, ge=0, le=86400)
    # A keep-alive connection waiting for its next request. Never applies to an open WebSocket.
    idle_timeout_seconds: int = Field(120, ge=1, le=3600)
    # Connections from Caddy to one tenant's server (requests in flight and idle keep-alives; an open
    # WebSocket stops counting once upgraded); further requests wait in Caddy. 0: no cap.
    max_conns_per_tenant: int = Field(256, ge=0, le=100000)


class DockerSettings(ConfigModel):
    engine: Literal["local", "vm"] = "local"
    host: str | None = Field(
        None,
        pattern=pattern(
            r"^(unix|tcp|ssh|npipe)://.+$",
            "a Docker engine URL starting with unix://, tcp://, ssh:// or npipe://",
            "unix:///var/run/docker.sock",
        ),
    )
    domain: Domain | None = None
    tls: Literal["internal", "acme", "selfsigned"] | None = None
    acme_email: str | None = Field(
        None, pattern=pattern(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "an email address", "ops@example.com")
    )
    https_port: int = Field(443, ge=1, le=65535)
    http_port: int = Field(80, ge=1, le=65535)
    # The host address the proxy publishes on. Unset: loopback for a local engine (nothing on
    # the LAN), every interface on a VM (its security group is the filter).
    bind_address: BindAddress | None = None
    # Written out in full: a bare "caddy:2.10.2" silently means Docker Hub (and is warned about).
    caddy_image: ImageRef = "docker.io/library/caddy:2.10.2"
    # The Engine API the containers' healthchecks are written for: "auto" asks the engine at deploy time
    # (a local engine; a VM's is not there yet), a version fixes it (e.g. for a preview with no engine).
    engine_api: str = Field(
        "auto",
        pattern=pattern(r"^(auto|1\.[0-9]{2})$", "'auto' or an Engine API version such as 1.44", "1.44"),
    )
    # Tenants a rollout (key rotation, new image) restarts at once: 1 keeps every tenant's gap at its own
    # boot; more finish a large rotation sooner at the price of boots competing for the CPU.
    rollout_width: int = Field(1, ge=1, le=1000)
    proxy: ProxyLimits = Field(default_factory=ProxyLimits)
    vm: VmSettings | None = None

    @field_validator("engine_api")
    @classmethod
    def _supported_api(cls, value: str) -> str:
        def v(x: str) -> tuple[int, ...]:
            return tuple(int(p) for p in x.split("."))

        if value != "auto" and v(value) < v(contract.DOCKER_MIN_API):
            raise ValueError(f"{value} is older than the oldest engine supported (API {contract.DOCKER_MIN_API}, "
                             "Docker 20.10)")
        return value

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
