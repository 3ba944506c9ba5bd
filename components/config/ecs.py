"""ConfigModel of the ECS model."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from components import contract
from components.config.errors import NAMESPACE
from components.config.values import HOSTED_ZONE_ID, SUBNET_ID, VPC_ID, Cidr, ConfigModel, Domain, pattern

if TYPE_CHECKING:
    from components.config.stack import StackConfig



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


class EcsSettings(ConfigModel):
    domain: Domain
    hosted_zone_id: str | None = Field(None, pattern=HOSTED_ZONE_ID)
    certificate_arn: str | None = Field(
        None,
        pattern=pattern(
            r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$",
            "an ACM certificate ARN: arn:aws:acm:<region>:<12-digit account>:certificate/<id>",
            "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        ),
    )
    create_dns_records: bool | None = None  # default: on when hostedZoneId is set
    vpc_id: str | None = Field(None, pattern=VPC_ID)
    public_subnet_ids: list[Annotated[str, Field(pattern=SUBNET_ID)]] = []
    private_subnet_ids: list[Annotated[str, Field(pattern=SUBNET_ID)]] = []
    vpc_cidr: Cidr = "10.40.0.0/16"
    nat_gateways: Literal["single", "perAz"] = "single"
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: list(contract.WORLD_CIDRS), min_length=1)
    log_retention_days: int = 30
    efs_backups: bool = True
    idle_timeout: int = Field(3600, ge=60, le=4000)
    # TLS 1.3 policies only (TLS 1.2 fallback allowed by the default one).
    ssl_policy: str = Field(
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        pattern=pattern(
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
