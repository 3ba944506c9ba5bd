"""Docker model on a VM the stack provisions: EC2 + cloud-init + Docker + Caddy.

The VM part is AWS (security group, key pair, encrypted root and data volumes, Elastic
IP, optional Route 53 records and daily snapshots). cloud-init (components/docker/cloud_init.py)
puts Docker's data-root on the data volume. Once cloud-init has finished, a
pulumi-docker provider reaches the engine over SSH and the same ``DockerHost`` the
``local`` stack uses renders the per-tenant agent servers and the Caddy proxy.

TLS: with ``docker.domain`` Caddy gets Let's Encrypt certificates for
``<tenant>.<domain>``; without one the stack is its own CA (pulumi-tls), tenants are
``<tenant>.<a-b-c-d>.sslip.io`` and the CA certificate is exported for clients to trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_command as command
import pulumi_docker as docker
import pulumi_tls as tls

from components import contract, deployment
from components.aws_iam import service_trust_policy
from components.config import ConfigError, DockerSettings, StackConfig, VmSettings
from components.deployment import Deployment
from components.docker import cloud_init
from components.docker.local import DockerHost
from components.keys import TenantKeys

# AMI owners: Canonical and Debian's official AWS account.
AMI_OWNERS = {"ubuntu-24.04": "099720109477", "debian-13": "136693071363", "debian-12": "136693071363"}
AMI_NAMES = {
    "ubuntu-24.04": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*",
    "debian-13": "debian-13-{arch}-*",
    "debian-12": "debian-12-{arch}-*",
}
_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
SNAPSHOT_TAG = "openhands:snapshots"
DLM_POLICY = "policy/service-role/AWSDataLifecycleManagerServiceRole"
CA_VALIDITY_HOURS = 10 * 365 * 24
# A year, renewed by `pulumi up` in its last 30 days.
CERT_VALIDITY_HOURS = 365 * 24
CERT_EARLY_RENEWAL_HOURS = 30 * 24
SSLIP_DOMAIN = "sslip.io"


def ami_filter(vm: VmSettings) -> tuple[str, str]:
    """(owner, name pattern) of the newest official image for the OS and architecture."""
    return AMI_OWNERS[vm.os], AMI_NAMES[vm.os].format(arch=_ARCH[vm.architecture])


def sslip_host(tenant: str, ip: str) -> str:
    """A public name for a tenant without a domain: sslip.io resolves a-b-c-d to a.b.c.d."""
    return f"{tenant}.{ip.replace('.', '-')}.{SSLIP_DOMAIN}"


def known_hosts_file(instance_id: str) -> str:
    """One known_hosts file per instance: trust on first use, and a replaced instance
    (new host key, same Elastic IP) starts a new file instead of failing the deploy."""
    return f"~/.ssh/openhands_known_hosts_{instance_id}"


def _rule(port: int, cidrs: list[str], description: str) -> aws.ec2.SecurityGroupIngressArgs:
    v4 = [c for c in cidrs if ":" not in c]
    v6 = [c for c in cidrs if ":" in c]
    return aws.ec2.SecurityGroupIngressArgs(
        protocol="tcp", from_port=port, to_port=port, cidr_blocks=v4 or None, ipv6_cidr_blocks=v6 or None,
        description=description,
    )


class DockerVm(pulumi.ComponentResource):
    """An EC2 instance running Docker on an encrypted data volume, and on it the
    agent servers and Caddy of ``DockerHost``.

    The constructor runs the steps in dependency order; each step registers its resources
    as children of this component and keeps them as attributes."""

    security_group: aws.ec2.SecurityGroup
    key_pair: aws.ec2.KeyPair
    data_volume: aws.ebs.Volume
    user_data: pulumi.Output[str]
    instance: aws.ec2.Instance
    attachment: aws.ec2.VolumeAttachment
    address: aws.ec2.Eip
    association: aws.ec2.EipAssociation
    ready: command.remote.Command
    authorized_key: command.remote.Command
    provider: docker.Provider
    host: DockerHost
    records: dict[str, aws.route53.Record]
    ca_certificate: pulumi.Output[str] | None
    urls: dict[str, pulumi.Output[str]]
    ssh_command: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        cfg: StackConfig,
        keys: Mapping[str, TenantKeys],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        settings = cfg.settings
        vm: VmSettings = settings.vm
        private_key = _read_private_key(vm)
        super().__init__("openhands:vm:DockerVm", name, None, opts)
        stack = pulumi.get_stack()
        # Account-global names and tags carry project and stack, so two stacks (or two
        # projects) never share one; above all the snapshot policy's target tag, which would
        # otherwise snapshot (and expire) another stack's disks.
        self.scope = contract.global_name(pulumi.get_project(), stack)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOptions(parent=self)
        tags = {"openhands:stack": stack, "Name": self.scope}

        vpc_id, subnet = self._subnet(vm, invoke)
        self._firewall(name, settings, vm, vpc_id, stack, tags, child)
        self._data_volume(name, cfg, vm, subnet, tags, child)
        self._instance(name, vm, subnet, tags, child, invoke)
        ip = self._address(name, tags, child)
        hosts = self._dns(name, cfg, ip, child)
        if vm.daily_snapshots:
            self._snapshots(name, vm, stack, tags, child, invoke)
        tls_files = None
        self.ca_certificate = None
        if settings.tls_mode == "selfsigned":
            tls_files = self._certificates(name, stack, list(hosts.values()), ip, child)
        connection = command.remote.ConnectionArgs(
            host=ip, user=vm.ssh_user, private_key=private_key, dial_error_limit=40, per_dial_timeout=15,
        )
        self._containers(name, cfg, keys, vm, ip, hosts, tls_files, connection, child)
        self._authorized_key(name, vm, connection, child)
        self.urls = self.host.urls
        identity = f"-i {vm.ssh_private_key_path} " if vm.ssh_private_key_path else ""
        self.ssh_command = pulumi.Output.concat(
            "ssh ", identity, "-o UserKnownHostsFile=",
            self.instance.id.apply(known_hosts_file), " ", vm.ssh_user, "@", ip,
        )
        self.register_outputs({"publicIp": ip, "urls": self.urls, "dataVolumeId": self.data_volume.id})

    def _subnet(self, vm: VmSettings, invoke: pulumi.InvokeOptions) -> tuple[str, aws.ec2.GetSubnetResult]:
        """(VPC id, subnet) the VM runs in: the configured ones, else the default VPC's first
        default subnet. Registers nothing; ConfigError when the default VPC has no default subnet."""
        if vm.subnet_id:
            vpc_id: str = vm.vpc_id  # type: ignore[assignment]  (config requires both)
            return vpc_id, aws.ec2.get_subnet(id=vm.subnet_id, opts=invoke)
        vpc_id = aws.ec2.get_vpc(default=True, opts=invoke).id
        default_subnets = aws.ec2.get_subnets(
            filters=[
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc_id]),
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ],
            opts=invoke,
        )
        if not default_subnets.ids:
            raise ConfigError("the default VPC has no default subnet; set docker.vm.vpcId and subnetId")
        # Sorted, so the AZ (and with it the data volume) stays put between runs.
        return vpc_id, aws.ec2.get_subnet(id=sorted(default_subnets.ids)[0], opts=invoke)

    def _firewall(self, name: str, settings: DockerSettings, vm: VmSettings, vpc_id: str, stack: str,
                  tags: dict[str, str], child: pulumi.ResourceOptions) -> None:
        """The security group and the EC2 key pair that seeds the first boot's authorized_keys.

        Inbound: HTTPS and HTTP (ACME challenge, redirect) from ingressCidrs, SSH from
        adminCidrs only; nothing else. Caddy is the only published container."""
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=vpc_id,
            description=f"OpenHands agent servers ({stack}): HTTPS, HTTP redirect, SSH from admins",
            ingress=[
                _rule(settings.https_port, vm.ingress_cidrs, "HTTPS to the Caddy proxy"),
                _rule(settings.http_port, vm.ingress_cidrs, "HTTP: ACME challenge and redirect to HTTPS"),
                _rule(22, vm.admin_cidrs, "SSH from admin networks (deploys use it too)"),
            ],
            # Agents need the internet: package mirrors, image registries, the LLM API.
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"], ipv6_cidr_blocks=["::/0"],
                    description="all outbound",
                )
            ],
            tags=tags,
            opts=child,
        )
        self.key_pair = aws.ec2.KeyPair(
            f"{name}-key", key_name_prefix=f"{self.scope}-", public_key=vm.ssh_public_key, tags=tags, opts=child
        )

    def _data_volume(self, name: str, cfg: StackConfig, vm: VmSettings, subnet: aws.ec2.GetSubnetResult,
                     tags: dict[str, str], child: pulumi.ResourceOptions) -> None:
        """The encrypted EBS volume that holds Docker's data-root: the only copy of every tenant's state.

        Kept on destroy unless retainData is false; a retained volume can be re-attached with
        `pulumi import` or restored from a snapshot with vm.dataSnapshotId. Tagged for the
        snapshot policy."""
        self.data_volume = aws.ebs.Volume(
            f"{name}-data",
            availability_zone=subnet.availability_zone,
            size=vm.data_volume_size,
            type=vm.data_volume_type,
            iops=vm.data_volume_iops,
            snapshot_id=vm.data_snapshot_id,
            encrypted=True,
            tags={**tags, "Name": f"{self.scope}-data", SNAPSHOT_TAG: self.scope},
            opts=child.merge(pulumi.ResourceOptions(retain_on_delete=cfg.retain_data)),
        )

    def _instance(self, name: str, vm: VmSettings, subnet: aws.ec2.GetSubnetResult, tags: dict[str, str],
                  child: pulumi.ResourceOptions, invoke: pulumi.InvokeOptions) -> None:
        """The EC2 instance (newest official AMI, cloud-init user data, IMDSv2 only) and the data
        volume's attachment to it."""
        owner, pattern = ami_filter(vm)
        ami = aws.ec2.get_ami(
            owners=[owner],
            most_recent=True,
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[pattern]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=[vm.architecture]),
                aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
                aws.ec2.GetAmiFilterArgs(name="root-device-type", values=["ebs"]),
            ],
            opts=invoke,
        )
        self.user_data = self.data_volume.id.apply(
            lambda vid: cloud_init.user_data(volume_id=vid, ssh_user=vm.ssh_user)
        )
        self.instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami.id,
            instance_type=vm.instance_type,
            subnet_id=subnet.id,
            vpc_security_group_ids=[self.security_group.id],
            key_name=self.key_pair.key_name,
            user_data=self.user_data,
            # cloud-init's setup runs once per instance, so new user data (a restored data
            # volume has a new id) needs a new instance, not an in-place stop/start that would
            # boot on an unmounted volume. The data volume is re-attached to it.
            user_data_replace_on_change=True,
            # IMDSv2 only; hop limit 1 keeps containers (one hop further) away from the
            # instance's credentials.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=vm.root_volume_size, delete_on_termination=True,
            ),
            tags={**tags, contract.ROLE_LABEL: contract.ROLE},
            # A newer AMI must not silently replace the host; unattended-upgrades patches it
            # in place. Move to a new image with `pulumi up --replace <instance urn>`.
            # A new sshPublicKey replaces the EC2 key pair, and keyName would replace the
            # instance: ignored, because the key pair only seeds authorized_keys at first
            # boot; the `authorized-key` command delivers the configured key instead.
            opts=child.merge(pulumi.ResourceOptions(ignore_changes=["ami", "keyName"])),
        )
        self.attachment = aws.ec2.VolumeAttachment(
            f"{name}-data-attachment",
            device_name=cloud_init.DEVICE_NAME,
            volume_id=self.data_volume.id,
            instance_id=self.instance.id,
            # Stop the instance first, so the filesystem is unmounted cleanly on detach.
            stop_instance_before_detaching=True,
            # On replace (a new instance or a restored volume) detach the old pair first: a
            # volume attaches to one instance at a time (VolumeInUse otherwise).
            opts=child.merge(pulumi.ResourceOptions(delete_before_replace=True)),
        )

    def _address(self, name: str, tags: dict[str, str], child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The Elastic IP and its association with the instance; returns the public IP."""
        self.address = aws.ec2.Eip(f"{name}-ip", domain="vpc", tags=tags, opts=child)
        self.association = aws.ec2.EipAssociation(
            f"{name}-ip-association", instance_id=self.instance.id, allocation_id=self.address.allocation_id,
            # An address has one association: deleting the old one after the new one exists
            # would take the address off the new instance.
            opts=child.merge(pulumi.ResourceOptions(delete_before_replace=True)),
        )
        return self.address.public_ip

    def _dns(self, name: str, cfg: StackConfig, ip: pulumi.Output[str],
             child: pulumi.ResourceOptions) -> dict[str, pulumi.Input[str]]:
        """Each tenant's host name (``<tenant>.<domain>``, else an sslip.io name of the IP), and
        with vm.hostedZoneId its Route 53 A record. Returns the hosts by tenant."""
        settings = cfg.settings
        vm: VmSettings = settings.vm
        hosts: dict[str, pulumi.Input[str]]
        if settings.domain:
            hosts = {t: settings.host_for(t) for t in cfg.tenants}
        else:
            hosts = {t: ip.apply(lambda a, t=t: sslip_host(t, a)) for t in cfg.tenants}
        self.records = {}
        if vm.hosted_zone_id:
            for t in cfg.tenants:
                self.records[t] = aws.route53.Record(
                    f"{name}-{t}-dns", zone_id=vm.hosted_zone_id, name=hosts[t], type="A", ttl=300, records=[ip],
                    opts=child,
                )
        return hosts

    def _containers(self, name: str, cfg: StackConfig, keys: Mapping[str, TenantKeys], vm: VmSettings,
                    ip: pulumi.Output[str], hosts: dict[str, pulumi.Input[str]],
                    tls_files: tuple[pulumi.Output[str], pulumi.Output[str]] | None,
                    connection: command.remote.ConnectionArgs, child: pulumi.ResourceOptions) -> None:
        """Docker over SSH: wait for cloud-init (and check the data disk is mounted and Docker runs
        on it, or fail with cloud-init's log), then a Docker provider on the VM's engine and the
        ``DockerHost`` (agent servers and Caddy) through it."""
        self.ready = command.remote.Command(
            f"{name}-cloud-init",
            connection=connection,
            create=cloud_init.readiness_script(),
            # A new instance (new user data replaces it) means another first boot.
            triggers=[self.instance.id, self.user_data],
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.association, self.attachment])),
        )
        ssh_opts: list[pulumi.Input[str]] = [
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", self.instance.id.apply(lambda i: f"UserKnownHostsFile={known_hosts_file(i)}"),
            "-o", "ServerAliveInterval=30",
        ]
        if vm.ssh_private_key_path:
            ssh_opts += ["-o", "IdentitiesOnly=yes", "-i", str(Path(vm.ssh_private_key_path).expanduser())]
        self.provider = docker.Provider(
            f"{name}-docker",
            host=pulumi.Output.concat("ssh://", vm.ssh_user, "@", ip),
            ssh_opts=ssh_opts,
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.ready])),
        )
        self.host = DockerHost(
            "docker",
            cfg=cfg,
            keys=keys,
            hosts=hosts,
            tls_files=tls_files,
            opts=child.merge(pulumi.ResourceOptions(providers={"docker": self.provider})),
        )

    def _authorized_key(self, name: str, vm: VmSettings, connection: command.remote.ConnectionArgs,
                        child: pulumi.ResourceOptions) -> None:
        """The configured public key becomes the only one the VM accepts, as the last step of the
        deploy (this run still connects with the key it had).

        Rotation: set the new sshPublicKey with the old private key still in use, `pulumi up`,
        then switch the private key (sshPrivateKeyPath or the agent). The instance is never
        replaced for it."""
        self.authorized_key = command.remote.Command(
            f"{name}-authorized-key",
            connection=connection,
            create=cloud_init.authorized_key_script(vm.ssh_public_key),
            triggers=[self.instance.id],
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.host, self.ready])),
        )

    def _snapshots(self, name: str, vm: VmSettings, stack: str, tags: dict[str, str],
                   child: pulumi.ResourceOptions, invoke: pulumi.InvokeOptions) -> None:
        """Daily crash-consistent EBS snapshots of the data volume (Data Lifecycle Manager)."""
        partition = aws.get_partition(opts=invoke).partition
        self.dlm_role = aws.iam.Role(
            f"{name}-dlm-role",
            assume_role_policy=service_trust_policy("dlm.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        self.dlm_role_policy = aws.iam.RolePolicyAttachment(
            f"{name}-dlm-role-policy", role=self.dlm_role.name, policy_arn=f"arn:{partition}:iam::aws:{DLM_POLICY}",
            opts=child,
        )
        self.snapshot_policy = aws.dlm.LifecyclePolicy(
            f"{name}-snapshots",
            description=f"openhands {stack}: daily data volume snapshots",
            execution_role_arn=self.dlm_role.arn,
            state="ENABLED",
            policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
                resource_types=["VOLUME"],
                target_tags={SNAPSHOT_TAG: self.scope},
                schedules=[
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name=f"daily, keep {vm.daily_snapshots}",
                        create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                            interval=24, interval_unit="HOURS", times="03:00",
                        ),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(
                            count=vm.daily_snapshots
                        ),
                        copy_tags=True,
                    )
                ],
            ),
            tags=tags,
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.dlm_role_policy])),
        )

    def _certificates(self, name: str, stack: str, hosts: list[pulumi.Input[str]], ip: pulumi.Output[str],
                      child: pulumi.ResourceOptions) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The stack's own CA and a server certificate for every tenant host and the IP."""
        self.ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        self.ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=self.ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"OpenHands {stack} CA"[:64],
                                                  organization="openhands-deploy"),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            opts=child,
        )
        self.server_key = tls.PrivateKey(f"{name}-server-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        csr = tls.CertRequest(
            f"{name}-server-csr",
            private_key_pem=self.server_key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=f"openhands-{stack}"[:64], organization="openhands-deploy"),
            dns_names=hosts,
            ip_addresses=[ip],
            opts=child,
        )
        self.server_cert = tls.LocallySignedCert(
            f"{name}-server-cert",
            cert_request_pem=csr.cert_request_pem,
            ca_private_key_pem=self.ca_key.private_key_pem,
            ca_cert_pem=self.ca.cert_pem,
            validity_period_hours=CERT_VALIDITY_HOURS,
            early_renewal_hours=CERT_EARLY_RENEWAL_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
            opts=child,
        )
        self.ca_certificate = self.ca.cert_pem
        return self.server_cert.cert_pem, pulumi.Output.secret(self.server_key.private_key_pem)


def _read_private_key(vm: VmSettings) -> pulumi.Output[str] | None:
    """The deploy key from vm.sshPrivateKeyPath (a secret), or None to use the SSH agent.

    Config parsing (DockerSettings.check_stack) already checked the file, before any resource."""
    text = vm.private_key()
    return pulumi.Output.secret(text) if text is not None else None


def build(cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment:
    """The Docker model on an EC2 VM."""
    host = DockerVm("vm", cfg=cfg, keys=keys)
    exports: dict[str, object] = {
        "publicIp": host.address.public_ip,
        "sshCommand": host.ssh_command,
        "dataVolumeId": host.data_volume.id,
        deployment.CADDYFILE: host.host.proxy.caddyfile,
    }
    if host.ca_certificate is not None:
        exports[deployment.CA_CERTIFICATE] = host.ca_certificate
    return Deployment(resource=host, urls=host.urls, exports=exports)

