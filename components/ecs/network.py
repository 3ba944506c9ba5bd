"""ECS model, network layer: the VPC (reused or created) and the three security groups.

Kept apart from components/ecs/service.py so the address plan and the firewall rules can be
read (and reviewed) on their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from components import contract
from components.config import EcsSettings

N_AZS = 2  # an ALB needs subnets in two AZs; tasks and EFS mount targets follow them
NFS_PORT = 2049  # the EFS mount target's NFS port (AWS fixed)
HTTPS_PORT = 443
HTTP_PORT = 80


def stack_tags(**extra: pulumi.Input[str]) -> dict[str, pulumi.Input[str]]:
    """Tags every ECS-model resource carries, so cost reports and policies can find them."""
    return {"openhands:stack": pulumi.get_stack(), "openhands:model": "ecs", **extra}


def stack_name(*parts: str, **kw) -> str:
    """An account-global name carrying project and stack (contract.global_name)."""
    return contract.global_name(pulumi.get_project(), pulumi.get_stack(), *parts, **kw)


def subnet_plan(vpc_cidr: str) -> tuple[list[str], list[str]]:
    """Cut the VPC block into quarters: two public (ALB, NAT) then two private (tasks, EFS)."""
    net = ipaddress.ip_network(vpc_cidr)
    quarters = [str(s) for s in net.subnets(new_prefix=net.prefixlen + 2)]
    return quarters[:N_AZS], quarters[N_AZS : 2 * N_AZS]


class Network(pulumi.ComponentResource):
    """The VPC the stack runs in.

    Reuse: ``vpcId`` + ``publicSubnetIds`` + ``privateSubnetIds`` from config, nothing created.
    Create: a VPC over two AZs with public subnets (ALB, NAT gateways) and private subnets
    (tasks, EFS), an internet gateway, and one NAT gateway (``natGateways: single``) or one
    per AZ (``perAz``, no cross-AZ dependency, twice the NAT cost).
    """

    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, *, settings: EcsSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("openhands:ecs:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.created = settings.vpc_id is None
        self.nat_gateways: list[aws.ec2.NatGateway] = []
        if not self.created:
            self.vpc_id = pulumi.Output.from_input(settings.vpc_id)
            self.public_subnet_ids = [pulumi.Output.from_input(s) for s in settings.public_subnet_ids]
            self.private_subnet_ids = [pulumi.Output.from_input(s) for s in settings.private_subnet_ids]
            self.register_outputs({"vpcId": self.vpc_id, "created": False})
            return

        self._vpc(name, settings, child)
        self._subnets(name, settings, child)
        self._public_routes(name, child)
        self._private_routes(name, settings, child)
        self.vpc_id = self.vpc.id
        self.public_subnet_ids = [s.id for s in self.public_subnets]
        self.private_subnet_ids = [s.id for s in self.private_subnets]
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "publicSubnetIds": self.public_subnet_ids,
                "privateSubnetIds": self.private_subnet_ids,
            }
        )

    def _vpc(self, name: str, settings: EcsSettings, child: pulumi.ResourceOptions) -> None:
        """The VPC, its default security group stripped of rules, and the internet gateway."""
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=settings.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # the EFS mount helper resolves the file system's DNS name
            tags=stack_tags(Name=f"openhands-{pulumi.get_stack()}"),
            opts=child,
        )
        # Strip the default security group's allow-all rules; nothing here uses it.
        self.default_sg = aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg", vpc_id=self.vpc.id, tags=stack_tags(), opts=child
        )
        self.igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=stack_tags(), opts=child)

    def _subnets(self, name: str, settings: EcsSettings, child: pulumi.ResourceOptions) -> None:
        """A public and a private subnet in each of the first ``N_AZS`` available zones (subnet_plan)."""
        azs = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOutputOptions(parent=self))
        public_cidrs, private_cidrs = subnet_plan(settings.vpc_cidr)
        stack = pulumi.get_stack()

        def subnet(tier: str, i: int, cidr: str, az: pulumi.Output[str]) -> aws.ec2.Subnet:
            return aws.ec2.Subnet(
                f"{name}-{tier}-{i}",
                vpc_id=self.vpc.id,
                cidr_block=cidr,
                availability_zone=az,
                # Public too: only the ALB and NAT live there, with their own IPs.
                map_public_ip_on_launch=False,
                tags=stack_tags(Name=f"openhands-{stack}-{tier}-{i}", tier=tier),
                opts=child,
            )

        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        for i in range(N_AZS):
            az = azs.names.apply(lambda names, i=i: names[i])
            self.public_subnets.append(subnet("public", i, public_cidrs[i], az))
            self.private_subnets.append(subnet("private", i, private_cidrs[i], az))

    def _public_routes(self, name: str, child: pulumi.ResourceOptions) -> None:
        """One route table for the public subnets: the internet through the internet gateway."""
        self.public_route_table = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=self.igw.id)],
            tags=stack_tags(tier="public"),
            opts=child,
        )
        for i, subnet in enumerate(self.public_subnets):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-rta-{i}", subnet_id=subnet.id, route_table_id=self.public_route_table.id, opts=child
            )

    def _private_routes(self, name: str, settings: EcsSettings, child: pulumi.ResourceOptions) -> None:
        """The NAT gateway(s) with their Elastic IPs, and a route table per private subnet to its NAT
        (one shared, or the subnet's own with ``natGateways: perAz``)."""
        n_nat = N_AZS if settings.nat_gateways == "perAz" else 1
        for i in range(n_nat):
            eip = aws.ec2.Eip(f"{name}-nat-eip-{i}", domain="vpc", tags=stack_tags(), opts=child)
            self.nat_gateways.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.allocation_id,
                    subnet_id=self.public_subnets[i].id,
                    tags=stack_tags(Name=f"openhands-{pulumi.get_stack()}-nat-{i}"),
                    opts=child.merge(pulumi.ResourceOptions(depends_on=[self.igw])),
                )
            )
        self.private_route_tables: list[aws.ec2.RouteTable] = []
        for i, subnet in enumerate(self.private_subnets):
            nat = self.nat_gateways[i if n_nat > 1 else 0]
            rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}",
                vpc_id=self.vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                tags=stack_tags(tier="private"),
                opts=child,
            )
            self.private_route_tables.append(rt)
            aws.ec2.RouteTableAssociation(
                f"{name}-private-rta-{i}", subnet_id=subnet.id, route_table_id=rt.id, opts=child
            )


class SecurityGroups(pulumi.ComponentResource):
    """Least-privilege firewall, every rule its own resource so none hides inline:

    * ALB: 443 (and 80, which only redirects) from ``ingressCidrs``; egress only to the tasks' port.
    * tasks: the contract's port from the ALB only; egress open (agents reach LLMs, git, packages).
    * EFS: NFS (2049) from the tasks only; no egress.
    """

    alb: aws.ec2.SecurityGroup
    tasks: aws.ec2.SecurityGroup
    efs: aws.ec2.SecurityGroup
    rules: dict[str, aws.vpc.SecurityGroupIngressRule | aws.vpc.SecurityGroupEgressRule]

    def __init__(
        self,
        name: str,
        *,
        vpc_id: pulumi.Input[str],
        ingress_cidrs: Sequence[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:ecs:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._groups(name, vpc_id, child)
        self.rules = {}
        self._alb_rules(name, ingress_cidrs, child)
        self._task_rules(name, child)
        self._efs_rules(name, child)
        self.register_outputs({"alb": self.alb.id, "tasks": self.tasks.id, "efs": self.efs.id})

    def _groups(self, name: str, vpc_id: pulumi.Input[str], child: pulumi.ResourceOptions) -> None:
        """The three groups, without inline rules: the provider then also removes AWS's default
        allow-all egress, and each rule below is a resource of its own."""
        stack = pulumi.get_stack()

        def group(kind: str, description: str, **tags: str) -> aws.ec2.SecurityGroup:
            return aws.ec2.SecurityGroup(
                f"{name}-{kind}",
                description=description,
                vpc_id=vpc_id,
                tags=stack_tags(Name=f"openhands-{stack}-{kind}", **tags),
                opts=child,
            )

        self.alb = group("alb", "OpenHands ALB: HTTPS in, agent-server port out")
        self.tasks = group(
            "tasks", "OpenHands agent servers: traffic from the ALB only", **{"openhands:role": contract.ROLE}
        )
        self.efs = group("efs", "OpenHands EFS: NFS from agent-server tasks only")

    def _rule(
        self,
        name: str,
        key: str,
        group: aws.ec2.SecurityGroup,
        *,
        egress: bool = False,
        port: int | None = None,
        peer: aws.ec2.SecurityGroup | None = None,
        cidr: str | None = None,
        description: str,
        child: pulumi.ResourceOptions,
    ) -> None:
        """One rule of ``group``, as resource ``<name>-<key>`` kept in ``rules[key]``: ingress (or
        ``egress``) on TCP ``port`` (every protocol and port when None), from or to the group
        ``peer`` or the block ``cidr`` (IPv4 or IPv6)."""
        v6 = cidr is not None and ipaddress.ip_network(cidr).version == 6
        rule = aws.vpc.SecurityGroupEgressRule if egress else aws.vpc.SecurityGroupIngressRule
        self.rules[key] = rule(
            f"{name}-{key}",
            security_group_id=group.id,
            ip_protocol="-1" if port is None else "tcp",
            from_port=port,
            to_port=port,
            referenced_security_group_id=peer.id if peer is not None else None,
            cidr_ipv4=None if v6 else cidr,
            cidr_ipv6=cidr if v6 else None,
            description=description,
            opts=child,
        )

    def _alb_rules(self, name: str, ingress_cidrs: Sequence[str], child: pulumi.ResourceOptions) -> None:
        """ALB: HTTPS and HTTP (redirect only) from each ingress CIDR; out only to the tasks' port."""
        for i, cidr in enumerate(ingress_cidrs):
            for port in (HTTPS_PORT, HTTP_PORT):
                description = "HTTPS" if port == HTTPS_PORT else "HTTP, redirected to HTTPS"
                self._rule(name, f"alb-in-{port}-{i}", self.alb, port=port, cidr=cidr, description=description,
                           child=child)
        self._rule(name, "alb-out-tasks", self.alb, egress=True, port=contract.PORT, peer=self.tasks,
                   description="to agent servers (traffic and health checks)", child=child)

    def _task_rules(self, name: str, child: pulumi.ResourceOptions) -> None:
        """Tasks: the contract's port from the ALB only; out to anywhere."""
        self._rule(name, "tasks-in-alb", self.tasks, port=contract.PORT, peer=self.alb,
                   description="from the ALB only", child=child)
        self._rule(name, "tasks-out-all", self.tasks, egress=True, cidr="0.0.0.0/0",
                   description="agents need the internet: LLM APIs, git, package registries, image pulls",
                   child=child)

    def _efs_rules(self, name: str, child: pulumi.ResourceOptions) -> None:
        """EFS: NFS from the tasks only; no egress rule at all."""
        self._rule(name, "efs-in-tasks", self.efs, port=NFS_PORT, peer=self.tasks,
                   description="NFS from agent-server tasks only", child=child)
