"""ECS model: one Fargate service per tenant behind one HTTPS ALB, state on one shared EFS.

The agent server keeps its state in files and two live servers must not share a state
directory (shared/research/agent_server_facts.md §5), so tenants are shards: each has
its own single-writer service, target group, host rule (``<tenant>.<domain>``), Secrets
Manager secret and EFS access point (its own root directory on the shared file system).

Everything is a plain ``pulumi_aws`` resource inside our own components, so tests and
policies see every resource:

* ``openhands:ecs:Network`` / ``openhands:ecs:SecurityGroups`` (components/ecs/network.py)
* ``openhands:ecs:LoadBalancer``: ALB, certificate (ACM + DNS validation, or an ARN), listeners
* ``openhands:ecs:SharedStorage``: EFS, backups, mount targets, file system policy, access points
* ``openhands:ecs:TenantService``: secret, logs, IAM, task definition, target group, rule, service, DNS
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from components import contract
from components.aws_iam import allow, policy_document, service_trust_policy
from components.config import EcsSettings, StackConfig
from components.deployment import Deployment
from components.ecs.network import HTTP_PORT, HTTPS_PORT, Network, SecurityGroups, stack_name, stack_tags
from components.keys import TenantKeys

CONTAINER_NAME = contract.ROLE
STATE_VOLUME = "state"
TENANT_TAG = "openhands:tenant"
ROLE_TAG = "openhands:role"
CHECKSUM_LABEL = contract.CHECKSUM_LABEL
# Tenants' directories on the shared file system; the access point creates each one.
TENANTS_ROOT = "/tenants"
TENANT_DIR_MODE = "0750"
# ECS refuses a container health check startPeriod above 300 s.
ECS_MAX_START_PERIOD = 300
# Grace before the ALB's failing health checks count: longer than the contract's startup budget.
GRACE_PERIOD_SECONDS = contract.STARTUP_BUDGET_SECONDS + 60
MAX_RULE_PRIORITY = 50000
# Characters AWS refuses in a Secrets Manager name / a CloudWatch log group name.
SECRET_NAME_INVALID = r"[^A-Za-z0-9/_+=.@-]"
LOG_GROUP_INVALID = r"[^A-Za-z0-9_./#-]"
_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/([^:@]+)")


def tenant_tags(tenant: str, *, workload: bool = False) -> dict[str, pulumi.Input[str]]:
    extra: dict[str, pulumi.Input[str]] = {TENANT_TAG: tenant}
    if workload:
        extra[ROLE_TAG] = contract.ROLE
    return stack_tags(**extra)


def fargate_units(cfg: StackConfig) -> tuple[str, str]:
    """Task cpu (CPU units) and memory (MiB) as ECS wants them. config.parse already
    refused sizes Fargate cannot run (EcsSettings.check_stack)."""
    return str(int(cfg.resources.cpu * 1024)), str(cfg.resources.memory)


def rule_priorities(tenants: Sequence[str]) -> dict[str, int]:
    """A listener-rule priority per tenant that does not move when tenants are added or
    removed (so rules are not rewritten): a hash of the name, probing forward on a
    collision in list order, so earlier tenants keep their slot."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for tenant in tenants:
        p = zlib.crc32(tenant.encode()) % MAX_RULE_PRIORITY + 1
        while p in taken:
            p = p % MAX_RULE_PRIORITY + 1
        taken.add(p)
        out[tenant] = p
    return out




def assume_role_policy(account_id: pulumi.Input[str]) -> pulumi.Output[str]:
    """ECS tasks may assume the role, only on behalf of this account (confused-deputy guard)."""
    return service_trust_policy("ecs-tasks.amazonaws.com", StringEquals={"aws:SourceAccount": account_id})


def container_definition(
    *,
    tenant: str,
    image: str,
    secret_arn: pulumi.Input[str],
    secret_names: Sequence[str],
    log_group: pulumi.Input[str],
    region: pulumi.Input[str],
    checksum: pulumi.Input[str],
) -> dict[str, Any]:
    """The agent-server container, all from the runtime contract. Keys come only through
    ``secrets`` (ECS fetches them from Secrets Manager at task start), never ``environment``."""
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "essential": True,
        "command": contract.args(),
        "user": f"{contract.UID}:{contract.GID}",
        "portMappings": [{"containerPort": contract.PORT, "hostPort": contract.PORT, "protocol": "tcp"}],
        "environment": [{"name": k, "value": v} for k, v in sorted(contract.container_env().items())],
        "secrets": [
            # <secret-arn>:<json-key>:<version-stage>:<version-id>; empty stage/id = AWSCURRENT.
            {"name": n, "valueFrom": pulumi.Output.concat(secret_arn, f":{n}::")}
            for n in secret_names
        ],
        "healthCheck": {
            "command": list(contract.HEALTHCHECK_COMMAND),
            "interval": contract.HEALTHCHECK_INTERVAL_SECONDS,
            "timeout": contract.HEALTHCHECK_TIMEOUT_SECONDS,
            "retries": contract.HEALTHCHECK_RETRIES,
            "startPeriod": min(contract.STARTUP_BUDGET_SECONDS, ECS_MAX_START_PERIOD),
        },
        "mountPoints": [{"sourceVolume": STATE_VOLUME, "containerPath": contract.DATA_DIR, "readOnly": False}],
        # Writable root FS (Fargate's default), so /tmp and $HOME are writable: the
        # PyInstaller binary unpacks into /tmp at every start and the server writes
        # $HOME/.config at import. Fargate bind-mount scratch volumes cannot be given an
        # owner, so a read-only root with scratch volumes risks a crash loop for uid 10001.
        # Hardening instead: non-root user, every capability dropped, no privilege.
        "readonlyRootFilesystem": False,
        "privileged": False,
        "linuxParameters": {"capabilities": {"drop": ["ALL"]}},
        # The server shuts down in ~1.5 s on SIGTERM and releases its conversation leases.
        "stopTimeout": 30,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": CONTAINER_NAME,
            },
        },
        "dockerLabels": {
            contract.ROLE_LABEL: contract.ROLE,
            contract.TENANT_LABEL: tenant,
            # A key rotation changes this label, so a new task definition revision rolls the
            # service and the new task reads the new secret version at start.
            CHECKSUM_LABEL: checksum,
        },
    }


def ecr_repository_arn(image: str) -> str | None:
    """The ECR repository ARN when the image lives in a private ECR registry."""
    m = _ECR_IMAGE.match(image)
    if not m:
        return None
    account, region, cn, repo = m.groups()
    partition = "aws-cn" if cn else "aws"
    return f"arn:{partition}:ecr:{region}:{account}:repository/{repo}"


# --------------------------------------------------------------------------- load balancer


class LoadBalancer(pulumi.ComponentResource):
    """The shared ALB: HTTPS on a TLS 1.3 policy, HTTP only redirects, unknown hosts get 404."""

    alb: aws.lb.LoadBalancer
    https: aws.lb.Listener
    http: aws.lb.Listener
    certificate_arn: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        settings: EcsSettings,
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group: aws.ec2.SecurityGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:ecs:LoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.certificate: aws.acm.Certificate | None = None
        if settings.certificate_arn:
            self.certificate_arn = pulumi.Output.from_input(settings.certificate_arn)
        else:
            # One wildcard covers every tenant host, so adding a tenant needs no new certificate.
            self.certificate = aws.acm.Certificate(
                f"{name}-cert",
                domain_name=f"*.{settings.domain}",
                validation_method="DNS",
                tags=stack_tags(),
                opts=child,
            )
            option = self.certificate.domain_validation_options[0]
            self.validation_record = aws.route53.Record(
                f"{name}-cert-validation",
                zone_id=settings.hosted_zone_id,
                name=option.resource_record_name,
                type=option.resource_record_type,
                records=[option.resource_record_value],
                ttl=300,
                allow_overwrite=True,
                opts=child,
            )
            self.validation = aws.acm.CertificateValidation(
                f"{name}-cert-validation",
                certificate_arn=self.certificate.arn,
                validation_record_fqdns=[self.validation_record.fqdn],
                opts=child,
            )
            # The listener waits for the certificate to be issued.
            self.certificate_arn = self.validation.certificate_arn

        self.alb = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=False,
            subnets=list(subnet_ids),
            security_groups=[security_group.id],
            # WebSockets (/sockets/*) stay open for a whole agent run; the server pings every 20 s.
            idle_timeout=settings.idle_timeout,
            drop_invalid_header_fields=True,
            tags=stack_tags(),
            opts=child,
        )
        self.https = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=self.alb.arn,
            port=HTTPS_PORT,
            protocol="HTTPS",
            ssl_policy=settings.ssl_policy,
            certificate_arn=self.certificate_arn,
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="fixed-response",
                    fixed_response=aws.lb.ListenerDefaultActionFixedResponseArgs(
                        content_type="text/plain", status_code="404", message_body="unknown agent server host\n"
                    ),
                )
            ],
            tags=stack_tags(),
            opts=child,
        )
        self.http = aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=self.alb.arn,
            port=HTTP_PORT,
            protocol="HTTP",
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="redirect",
                    redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        protocol="HTTPS", port=str(HTTPS_PORT), status_code="HTTP_301"
                    ),
                )
            ],
            tags=stack_tags(),
            opts=child,
        )
        self.register_outputs({"dnsName": self.alb.dns_name, "certificateArn": self.certificate_arn})


# --------------------------------------------------------------------------- storage


class SharedStorage(pulumi.ComponentResource):
    """One encrypted EFS for all tenants; each tenant reaches only its own directory
    through its access point, which also forces the contract's uid/gid."""

    file_system: aws.efs.FileSystem
    access_points: dict[str, aws.efs.AccessPoint]

    def __init__(
        self,
        name: str,
        *,
        cfg: StackConfig,
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group: aws.ec2.SecurityGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:ecs:SharedStorage", name, None, opts)
        settings: EcsSettings = cfg.settings
        child = pulumi.ResourceOptions(parent=self)
        # Every tenant's conversations and secrets: `pulumi destroy` leaves the file system
        # (and its backup policy: deleting that resource would switch backups off) in AWS
        # unless retainData is false. Re-attach a kept one with `pulumi import`.
        keep = child.merge(pulumi.ResourceOptions(retain_on_delete=cfg.retain_data))
        self.file_system = aws.efs.FileSystem(
            f"{name}-fs",
            encrypted=True,  # at rest, with the AWS-managed aws/elasticfilesystem key
            performance_mode="generalPurpose",
            throughput_mode="elastic",
            lifecycle_policies=[
                aws.efs.FileSystemLifecyclePolicyArgs(transition_to_ia="AFTER_30_DAYS"),
                aws.efs.FileSystemLifecyclePolicyArgs(transition_to_primary_storage_class="AFTER_1_ACCESS"),
            ],
            tags=stack_tags(Name=f"openhands-{pulumi.get_stack()}-state"),
            opts=keep,
        )
        self.backup_policy = aws.efs.BackupPolicy(
            f"{name}-backup",
            file_system_id=self.file_system.id,
            backup_policy=aws.efs.BackupPolicyBackupPolicyArgs(
                status="ENABLED" if settings.efs_backups else "DISABLED"
            ),
            opts=keep,
        )
        # With a file system policy in place, access needs IAM (the task role) and TLS;
        # nobody gets root on the file system, not even a task.
        self.policy = aws.efs.FileSystemPolicy(
            f"{name}-policy",
            file_system_id=self.file_system.id,
            policy=policy_document(
                {
                    "Sid": "DenyUnencryptedTransport",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": "*",
                    "Resource": self.file_system.arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                {
                    "Sid": "DenyRootAccess",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": "elasticfilesystem:ClientRootAccess",
                    "Resource": self.file_system.arn,
                },
            ),
            opts=child,
        )
        self.mount_targets = [
            aws.efs.MountTarget(
                f"{name}-mount-{i}",
                file_system_id=self.file_system.id,
                subnet_id=subnet,
                security_groups=[security_group.id],
                opts=child,
            )
            for i, subnet in enumerate(subnet_ids)
        ]
        self.access_points = {
            t: aws.efs.AccessPoint(
                f"{t}-access-point",
                file_system_id=self.file_system.id,
                # Every NFS call through this access point runs as the image's user.
                posix_user=aws.efs.AccessPointPosixUserArgs(uid=contract.UID, gid=contract.GID),
                root_directory=aws.efs.AccessPointRootDirectoryArgs(
                    path=f"{TENANTS_ROOT}/{t}",
                    creation_info=aws.efs.AccessPointRootDirectoryCreationInfoArgs(
                        owner_uid=contract.UID, owner_gid=contract.GID, permissions=TENANT_DIR_MODE
                    ),
                ),
                tags=tenant_tags(t, workload=False),
                opts=child,
            )
            for t in cfg.tenants
        }
        self.register_outputs(
            {"fileSystemId": self.file_system.id, "accessPoints": {t: a.id for t, a in self.access_points.items()}}
        )


# --------------------------------------------------------------------------- tenant


class TenantService(pulumi.ComponentResource):
    """One tenant's agent server: its keys in Secrets Manager, logs, IAM, task definition,
    target group, host rule and single-writer Fargate service (and optionally its DNS name).

    The constructor runs the steps in dependency order; each step registers its resources
    as children of this component and keeps them as attributes."""

    secret: aws.secretsmanager.Secret
    secret_version: aws.secretsmanager.SecretVersion
    log_group: aws.cloudwatch.LogGroup
    execution_role: aws.iam.Role
    execution_policy: aws.iam.RolePolicy
    task_role: aws.iam.Role
    task_policy: aws.iam.RolePolicy
    task_definition: aws.ecs.TaskDefinition
    target_group: aws.lb.TargetGroup
    rule: aws.lb.ListenerRule
    service: aws.ecs.Service
    record: aws.route53.Record | None
    host: str
    url: str

    def __init__(
        self,
        tenant: str,
        *,
        cfg: StackConfig,
        keys: TenantKeys,
        cluster: aws.ecs.Cluster,
        vpc_id: pulumi.Input[str],
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group: aws.ec2.SecurityGroup,
        lb: LoadBalancer,
        storage: SharedStorage,
        priority: int,
        account_id: pulumi.Input[str],
        region: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:ecs:TenantService", tenant, None, opts)
        settings: EcsSettings = cfg.settings
        child = pulumi.ResourceOptions(parent=self)
        tags = tenant_tags(tenant)
        workload_tags = tenant_tags(tenant, workload=True)
        self.host = settings.host_for(tenant)

        self._secrets(tenant, keys, tags, child)
        self._logs(tenant, settings, tags, child)
        self._iam(tenant, cfg, storage, account_id, tags, workload_tags, child)
        self._task_definition(tenant, cfg, keys, storage, region, workload_tags, child)
        self._routing(tenant, settings, vpc_id, lb, priority, tags, child)
        self._service(tenant, cluster, subnet_ids, security_group, storage, workload_tags, child)
        self._dns(tenant, settings, lb, child)
        self.url = f"https://{self.host}"
        self.register_outputs({"url": self.url, "service": self.service.name, "logGroup": self.log_group.name})

    def _secrets(
        self, tenant: str, keys: TenantKeys, tags: Mapping[str, pulumi.Input[str]], child: pulumi.ResourceOptions
    ) -> None:
        """The tenant's keys: one Secrets Manager secret holding a JSON object {ENV_NAME: value}.

        ECS reads it at task start, so the keys never appear in the task definition."""
        self.secret = aws.secretsmanager.Secret(
            f"{tenant}-keys",
            # Account-global names carry project and stack: two stacks never share one.
            name_prefix=stack_name(tenant, sep="/", max_length=480, invalid=SECRET_NAME_INVALID) + "-",
            description=f"OpenHands agent-server keys for tenant {tenant} (stack {pulumi.get_stack()})",
            recovery_window_in_days=7,
            tags=tags,
            opts=child,
        )
        self.secret_version = aws.secretsmanager.SecretVersion(
            f"{tenant}-keys",
            secret_id=self.secret.id,
            secret_string=pulumi.Output.secret(keys.env.apply(lambda env: json.dumps(env, sort_keys=True))),
            opts=child,
        )

    def _logs(
        self, tenant: str, settings: EcsSettings, tags: Mapping[str, pulumi.Input[str]], child: pulumi.ResourceOptions
    ) -> None:
        """The tenant's CloudWatch log group, with the configured retention (the task's awslogs target)."""
        self.log_group = aws.cloudwatch.LogGroup(
            f"{tenant}-logs",
            name="/" + stack_name(tenant, sep="/", max_length=511, invalid=LOG_GROUP_INVALID),
            retention_in_days=settings.log_retention_days,
            tags=tags,
            opts=child,
        )

    def _iam(
        self,
        tenant: str,
        cfg: StackConfig,
        storage: SharedStorage,
        account_id: pulumi.Input[str],
        tags: Mapping[str, pulumi.Input[str]],
        workload_tags: Mapping[str, pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        """The execution role (ECS agent: read this tenant's keys, write its logs, pull a private
        ECR image) and the task role (the server: mount this tenant's access point only).

        Per tenant, so one tenant's task can neither read another's keys nor mount its directory."""
        exec_statements: list[dict[str, Any]] = [
            allow("ReadThisTenantsKeys", "secretsmanager:GetSecretValue", self.secret.arn),
            allow(
                "WriteThisTenantsLogs",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                pulumi.Output.concat(self.log_group.arn, ":log-stream:*"),
            ),
        ]
        # The default image is public on ghcr.io: pulling needs no AWS permission. Only a
        # private ECR image needs a token and read access to that one repository.
        ecr_repo = ecr_repository_arn(cfg.image)
        if ecr_repo:
            exec_statements += [
                allow("EcrToken", "ecr:GetAuthorizationToken", "*"),
                allow("EcrPull", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], ecr_repo),
            ]
        self.execution_role, self.execution_policy = self._role(
            f"{tenant}-execution",
            f"ECS agent for tenant {tenant}: read its keys, write its logs",
            exec_statements,
            account_id=account_id,
            tags=tags,
            child=child,
        )
        self.task_role, self.task_policy = self._role(
            f"{tenant}-task",
            f"Agent server of tenant {tenant}: mount and write its EFS access point only",
            [
                allow(
                    "MountOwnAccessPoint",
                    ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                    storage.file_system.arn,
                    StringEquals={"elasticfilesystem:AccessPointArn": storage.access_points[tenant].arn},
                )
            ],
            account_id=account_id,
            tags=workload_tags,
            child=child,
        )

    def _role(
        self,
        name: str,
        description: str,
        statements: Sequence[Mapping[str, Any]],
        *,
        account_id: pulumi.Input[str],
        tags: Mapping[str, pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.iam.Role, aws.iam.RolePolicy]:
        """A role ECS tasks of this account may assume, and its inline policy of ``statements``
        (both resources named ``name``)."""
        role = aws.iam.Role(
            name,
            description=description,
            assume_role_policy=assume_role_policy(account_id),
            tags=tags,
            opts=child,
        )
        policy = aws.iam.RolePolicy(name, role=role.id, policy=policy_document(*statements), opts=child)
        return role, policy

    def _task_definition(
        self,
        tenant: str,
        cfg: StackConfig,
        keys: TenantKeys,
        storage: SharedStorage,
        region: pulumi.Input[str],
        workload_tags: Mapping[str, pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        """The Fargate task definition: the contract's container, the tenant's EFS access point as
        its state volume. A key rotation changes the checksum label, so it makes a new revision."""
        cpu, memory = fargate_units(cfg)
        definition = container_definition(
            tenant=tenant,
            image=cfg.image,
            secret_arn=self.secret.arn,
            secret_names=keys.env_names,
            log_group=self.log_group.name,
            region=region,
            checksum=keys.checksum,
        )
        self.task_definition = aws.ecs.TaskDefinition(
            f"{tenant}-task",
            family=stack_name(tenant),
            cpu=cpu,
            memory=memory,
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                operating_system_family="LINUX", cpu_architecture="X86_64"
            ),
            execution_role_arn=self.execution_role.arn,
            task_role_arn=self.task_role.arn,
            container_definitions=pulumi.Output.json_dumps([definition]),
            volumes=[
                aws.ecs.TaskDefinitionVolumeArgs(
                    name=STATE_VOLUME,
                    efs_volume_configuration=aws.ecs.TaskDefinitionVolumeEfsVolumeConfigurationArgs(
                        file_system_id=storage.file_system.id,
                        root_directory="/",  # must be "/" with an access point; the AP sets the real root
                        transit_encryption="ENABLED",
                        authorization_config=aws.ecs.TaskDefinitionVolumeEfsVolumeConfigurationAuthorizationConfigArgs(
                            access_point_id=storage.access_points[tenant].id, iam="ENABLED"
                        ),
                    ),
                )
            ],
            tags=workload_tags,
            # The new secret version must exist before a task of the new revision starts.
            opts=child.merge(pulumi.ResourceOptions(depends_on=[self.secret_version, self.execution_policy])),
        )

    def _routing(
        self,
        tenant: str,
        settings: EcsSettings,
        vpc_id: pulumi.Input[str],
        lb: LoadBalancer,
        priority: int,
        tags: Mapping[str, pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        """The tenant's target group (health-checked on the contract's readiness path) and the
        HTTPS listener rule that sends its host there."""
        self.target_group = aws.lb.TargetGroup(
            f"{tenant}-tg",
            target_type="ip",
            protocol="HTTP",
            port=contract.PORT,
            vpc_id=vpc_id,
            # Short: min-healthy 0 stops the old task before the new one starts anyway.
            deregistration_delay=settings.deregistration_delay,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True,
                protocol="HTTP",
                port="traffic-port",
                path=contract.READINESS_PROBE.path,  # GET only; the server answers HEAD with 405
                matcher="200",
                interval=contract.READINESS_PROBE.period_seconds,
                timeout=contract.READINESS_PROBE.timeout_seconds,
                unhealthy_threshold=contract.READINESS_PROBE.failure_threshold,
                healthy_threshold=2,
            ),
            tags=tags,
            opts=child,
        )
        self.rule = aws.lb.ListenerRule(
            f"{tenant}-host",
            listener_arn=lb.https.arn,
            priority=priority,
            conditions=[
                aws.lb.ListenerRuleConditionArgs(
                    host_header=aws.lb.ListenerRuleConditionHostHeaderArgs(values=[self.host])
                )
            ],
            actions=[aws.lb.ListenerRuleActionArgs(type="forward", target_group_arn=self.target_group.arn)],
            tags=tags,
            opts=child,
        )

    def _service(
        self,
        tenant: str,
        cluster: aws.ecs.Cluster,
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group: aws.ec2.SecurityGroup,
        storage: SharedStorage,
        workload_tags: Mapping[str, pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        """The Fargate service: exactly one writer on the tenant's directory, in the private
        subnets, registered in the target group; `pulumi up` waits until it is healthy."""
        self.service = aws.ecs.Service(
            f"{tenant}-service",
            name=f"openhands-{tenant}",
            cluster=cluster.arn,
            task_definition=self.task_definition.arn,
            launch_type="FARGATE",
            platform_version="LATEST",  # EFS volumes need 1.4.0 or later
            desired_count=1,
            # The old task stops before the new one starts, so two servers never share the directory.
            deployment_minimum_healthy_percent=0,
            deployment_maximum_percent=100,
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
            health_check_grace_period_seconds=GRACE_PERIOD_SECONDS,
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=list(subnet_ids), security_groups=[security_group.id], assign_public_ip=False
            ),
            load_balancers=[
                aws.ecs.ServiceLoadBalancerArgs(
                    target_group_arn=self.target_group.arn, container_name=CONTAINER_NAME, container_port=contract.PORT
                )
            ],
            enable_execute_command=False,
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            # `pulumi up` waits for the task to be healthy, so a broken rollout fails the update.
            wait_for_steady_state=True,
            tags=workload_tags,
            opts=child.merge(
                pulumi.ResourceOptions(
                    # The TG must be attached to the ALB, and EFS reachable, before a task starts.
                    depends_on=[self.rule, self.task_policy, *storage.mount_targets],
                )
            ),
        )

    def _dns(self, tenant: str, settings: EcsSettings, lb: LoadBalancer, child: pulumi.ResourceOptions) -> None:
        """The tenant host's alias record to the ALB, when the stack manages DNS (else None)."""
        self.record = None
        if settings.dns_records:
            self.record = aws.route53.Record(
                f"{tenant}-dns",
                zone_id=settings.hosted_zone_id,
                name=self.host,
                type="A",
                aliases=[
                    aws.route53.RecordAliasArgs(
                        name=lb.alb.dns_name, zone_id=lb.alb.zone_id, evaluate_target_health=True
                    )
                ],
                opts=child,
            )


# --------------------------------------------------------------------------- stack


class EcsDeployment(pulumi.ComponentResource):
    """The whole ECS model: network, firewall, ALB, shared EFS, cluster, one service per tenant."""

    def __init__(
        self,
        name: str,
        *,
        cfg: StackConfig,
        keys: Mapping[str, TenantKeys],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:ecs:EcsDeployment", name, None, opts)
        settings: EcsSettings = cfg.settings
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account_id = aws.get_caller_identity_output(opts=invoke).account_id
        region = aws.get_region_output(opts=invoke).region

        self.network = Network(f"{name}-net", settings=settings, opts=child)
        self.security_groups = SecurityGroups(
            f"{name}-sg", vpc_id=self.network.vpc_id, ingress_cidrs=settings.ingress_cidrs, opts=child
        )
        self.lb = LoadBalancer(
            f"{name}-lb",
            settings=settings,
            subnet_ids=self.network.public_subnet_ids,
            security_group=self.security_groups.alb,
            opts=child,
        )
        self.storage = SharedStorage(
            f"{name}-storage",
            cfg=cfg,
            subnet_ids=self.network.private_subnet_ids,
            security_group=self.security_groups.efs,
            opts=child,
        )
        self.cluster = aws.ecs.Cluster(
            f"{name}-cluster",
            name=stack_name(),
            settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")],
            tags=stack_tags(),
            opts=child,
        )
        priorities = rule_priorities(cfg.tenants)
        self.tenants = {
            t: TenantService(
                t,
                cfg=cfg,
                keys=keys[t],
                cluster=self.cluster,
                vpc_id=self.network.vpc_id,
                subnet_ids=self.network.private_subnet_ids,
                security_group=self.security_groups.tasks,
                lb=self.lb,
                storage=self.storage,
                priority=priorities[t],
                account_id=account_id,
                region=region,
                opts=child,
            )
            for t in cfg.tenants
        }
        self.urls = {t: s.url for t, s in self.tenants.items()}
        self.register_outputs({"urls": self.urls, "albDnsName": self.lb.alb.dns_name})


def build(cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment:
    deployment = EcsDeployment("ecs", cfg=cfg, keys=keys)
    exports: dict[str, Any] = {
        "albDnsName": deployment.lb.alb.dns_name,
        "albZoneId": deployment.lb.alb.zone_id,
        "clusterName": deployment.cluster.name,
        "fileSystemId": deployment.storage.file_system.id,
        "certificateArn": deployment.lb.certificate_arn,
        "logGroups": {t: s.log_group.name for t, s in deployment.tenants.items()},
    }
    return Deployment(resource=deployment, urls=dict(deployment.urls), exports=exports, image=cfg.image)
