"""ECS model: render stacks/Pulumi.ecs.yaml offline and check what AWS would get.

Task definitions are validated with botocore's own ECS service model (the request
schema the AWS API enforces); the container definition is then booted as the real
agent server, with its secrets resolved from the rendered Secrets Manager version.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from components import contract
from components.config import ConfigError
from components.contract import WORLD_CIDRS as WORLD
from openhands_cli import render
from openhands_cli.render import RESOURCE_OUTPUTS, Rendered, Resource

DOMAIN = "agents.example.com"
ZONE = "Z0123456789ABCDEFGHIJ"
THREE = ["alpha", "beta", "gamma"]

T_TASKDEF = "aws:ecs/taskDefinition:TaskDefinition"
T_SERVICE = "aws:ecs/service:Service"
T_SECRET = "aws:secretsmanager/secret:Secret"
T_SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
T_TG = "aws:lb/targetGroup:TargetGroup"
T_RULE = "aws:lb/listenerRule:ListenerRule"
T_LISTENER = "aws:lb/listener:Listener"
T_SG = "aws:ec2/securityGroup:SecurityGroup"
T_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
T_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
T_FS = "aws:efs/fileSystem:FileSystem"
T_AP = "aws:efs/accessPoint:AccessPoint"
T_MOUNT = "aws:efs/mountTarget:MountTarget"
T_LOGS = "aws:cloudwatch/logGroup:LogGroup"
T_POLICY = "aws:iam/rolePolicy:RolePolicy"

STACK = "ecs"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", params=["one", "three"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return request.getfixturevalue(request.param)


def tenants_of(r: Rendered) -> list[str]:
    return list(r.outputs["url"])


def in_tenant(r: Rendered, typ: str, tenant: str) -> Resource:
    """The one resource of ``typ`` inside tenant ``tenant``'s TenantService."""
    parent = r.one("openhands:ecs:TenantService", tenant).urn
    found = [x for x in r.of_type(typ) if x.parent == parent]
    assert len(found) == 1, (typ, tenant, [x.name for x in found])
    return found[0]


def mocked_arn(res: Resource) -> str:
    """The ARN the render harness's mock gives this resource (what other inputs saw)."""
    return RESOURCE_OUTPUTS[res.type](res.name, res.inputs)["arn"]


def container(td: Resource) -> dict[str, Any]:
    defs = json.loads(td.inputs["containerDefinitions"])
    assert [d["name"] for d in defs] == [contract.ROLE], "one container, the agent server"
    return defs[0]


def as_int(value: Any) -> int:
    assert float(value).is_integer(), value
    return int(value)


def register_request(td: Resource) -> dict[str, Any]:
    """The RegisterTaskDefinition request the provider sends for this task definition.

    The provider's wire names for these fields are the ECS API's own; only tags change
    shape (map -> [{key, value}])."""
    i = td.inputs
    request = {
        "family": i["family"],
        "containerDefinitions": json.loads(i["containerDefinitions"]),
        "cpu": i["cpu"],
        "memory": i["memory"],
        "networkMode": i["networkMode"],
        "requiresCompatibilities": i["requiresCompatibilities"],
        "executionRoleArn": i["executionRoleArn"],
        "taskRoleArn": i["taskRoleArn"],
        "volumes": i["volumes"],
        "runtimePlatform": i["runtimePlatform"],
        "tags": [{"key": k, "value": v} for k, v in i["tags"].items()],
    }
    return request


# --------------------------------------------------------------------------- botocore


def test_task_definitions_pass_the_ecs_api_schema(rendered: Rendered) -> None:
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    tds = rendered.of_type(T_TASKDEF)
    assert len(tds) == len(tenants_of(rendered))
    for td in tds:
        report = ParamValidator().validate(register_request(td), shape)
        assert not report.has_errors(), report.generate_report()


def test_botocore_validator_catches_a_broken_definition(one: Rendered) -> None:
    # Proves the check above has teeth: a typo'd key and a wrong type are reported.
    shape = botocore.session.get_session().get_service_model("ecs").operation_model(
        "RegisterTaskDefinition"
    ).input_shape
    request = register_request(one.one(T_TASKDEF))
    request["containerDefinitions"][0]["healthcheck"] = request["containerDefinitions"][0].pop("healthCheck")
    request["containerDefinitions"][0]["essential"] = "yes"
    report = ParamValidator().validate(request, shape)
    assert report.has_errors()
    text = report.generate_report()
    assert "healthcheck" in text and "essential" in text


def test_task_definition_follows_the_contract(rendered: Rendered) -> None:
    for tenant in tenants_of(rendered):
        td = in_tenant(rendered, T_TASKDEF, tenant)
        c = container(td)
        assert td.inputs["requiresCompatibilities"] == ["FARGATE"] and td.inputs["networkMode"] == "awsvpc"
        assert (td.inputs["cpu"], td.inputs["memory"]) == ("1024", "2048")  # resources: 1 vCPU / 2048 MiB
        assert c["command"] == contract.args()
        assert c["user"] == f"{contract.UID}:{contract.GID}"
        assert c["portMappings"][0]["containerPort"] == contract.PORT
        assert c["healthCheck"]["command"] == list(contract.HEALTHCHECK_COMMAND)
        assert c["healthCheck"]["command"][0] in ("CMD", "CMD-SHELL")
        assert 0 < c["healthCheck"]["startPeriod"] <= 300
        assert c["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
        # /tmp stays writable: the root FS is not read-only (see components/ecs/service.py).
        assert c["readonlyRootFilesystem"] is False
        assert c["mountPoints"] == [{"sourceVolume": "state", "containerPath": contract.DATA_DIR, "readOnly": False}]
        (volume,) = td.inputs["volumes"]
        efs = volume["efsVolumeConfiguration"]
        assert volume["name"] == "state" and efs["transitEncryption"] == "ENABLED"
        # IAM authorization on this tenant's own access point.
        assert efs["authorizationConfig"] == {"accessPointId": f"{tenant}-access-point-id", "iam": "ENABLED"}
        assert c["logConfiguration"]["logDriver"] == "awslogs"
        assert c["logConfiguration"]["options"]["awslogs-group"] == in_tenant(rendered, T_LOGS, tenant).inputs["name"]
        assert td.inputs["tags"]["openhands:tenant"] == tenant
        assert td.inputs["tags"]["openhands:role"] == contract.ROLE


# --------------------------------------------------------------------------- keys


def test_keys_only_through_secrets_manager(rendered: Rendered) -> None:
    secret_names = set(contract.secret_env_names(1, 0))
    for tenant in tenants_of(rendered):
        td = in_tenant(rendered, T_TASKDEF, tenant)
        c = container(td)
        env = {e["name"]: e["value"] for e in c["environment"]}
        assert env == contract.container_env(), "environment is exactly the contract's plain env"
        assert not secret_names & set(env), "no key in environment"
        version = in_tenant(rendered, T_SECRET_VERSION, tenant)
        assert version.is_secret("secretString")
        values = json.loads(version.inputs["secretString"])
        assert set(values) == secret_names
        # No key value anywhere in the task definition, and nothing in it is a Pulumi secret.
        assert not any(v in td.inputs["containerDefinitions"] for v in values.values())
        assert not td.secret_paths
        # Each secret entry points at this tenant's secret, one JSON key per env name.
        arn = mocked_arn(in_tenant(rendered, T_SECRET, tenant))
        assert {s["name"]: s["valueFrom"] for s in c["secrets"]} == {n: f"{arn}:{n}::" for n in values}
        assert version.inputs["secretId"] == f"{in_tenant(rendered, T_SECRET, tenant).name}-id"


def test_api_key_export_is_secret_and_matches_the_secret(three: Rendered) -> None:
    assert "apiKey" in three.secret_outputs
    for tenant in THREE:
        values = json.loads(in_tenant(three, T_SECRET_VERSION, tenant).inputs["secretString"])
        assert three.outputs["apiKey"][tenant] == values[contract.SESSION_KEY_ENV.format(0)]
    assert len(set(three.outputs["apiKey"].values())) == 3


def test_iam_is_per_tenant_and_least_privilege(three: Rendered) -> None:
    fs_arn = mocked_arn(three.one(T_FS))
    for tenant in THREE:
        policies = {p.name: json.loads(p.inputs["policy"]) for p in three.of_type(T_POLICY)
                    if p.parent == three.one("openhands:ecs:TenantService", tenant).urn}
        execution = policies[f"{tenant}-execution"]["Statement"]
        secret_arn = mocked_arn(in_tenant(three, T_SECRET, tenant))
        log_arn = mocked_arn(in_tenant(three, T_LOGS, tenant))
        assert execution == [
            {"Sid": "ReadThisTenantsKeys", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": secret_arn},
            {"Sid": "WriteThisTenantsLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"{log_arn}:log-stream:*"},
        ]
        (task,) = policies[f"{tenant}-task"]["Statement"]
        assert task["Action"] == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
        assert task["Resource"] == fs_arn
        (ap,) = [a for a in three.of_type(T_AP) if a.name == f"{tenant}-access-point"]
        ap_arn = mocked_arn(ap)
        assert task["Condition"] == {"StringEquals": {"elasticfilesystem:AccessPointArn": ap_arn}}


def test_private_ecr_image_gets_pull_rights_for_that_repository_only() -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/openhands/agent-server:1.58.0-python"
    r = render.render("ecs", overrides={"image": image})
    (policy,) = [json.loads(p.inputs["policy"]) for p in r.of_type(T_POLICY) if p.name.endswith("-execution")]
    pull = next(s for s in policy["Statement"] if s["Sid"] == "EcrPull")
    assert pull["Resource"] == "arn:aws:ecr:us-east-1:123456789012:repository/openhands/agent-server"


# --------------------------------------------------------------------------- load balancer


def test_https_listener_has_the_validated_certificate_and_http_redirects(one: Rendered) -> None:
    https = one.one(T_LISTENER, "ecs-lb-https").inputs
    http = one.one(T_LISTENER, "ecs-lb-http").inputs
    cert = one.one("aws:acm/certificate:Certificate")
    assert cert.inputs["domainName"] == f"*.{DOMAIN}" and cert.inputs["validationMethod"] == "DNS"
    validation = one.one("aws:acm/certificateValidation:CertificateValidation")
    record = one.one("aws:route53/record:Record", "ecs-lb-cert-validation")
    assert record.inputs["zoneId"] == ZONE and record.inputs["type"] == "CNAME"
    assert validation.inputs["validationRecordFqdns"] == [record.inputs["name"].rstrip(".")]
    assert https["protocol"] == "HTTPS" and as_int(https["port"]) == 443
    assert https["certificateArn"] == mocked_arn(cert)
    assert https["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert [a["type"] for a in https["defaultActions"]] == ["fixed-response"], "unknown hosts reach no tenant"
    assert http["protocol"] == "HTTP" and as_int(http["port"]) == 80
    assert http["defaultActions"] == [
        {"type": "redirect", "redirect": {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}}
    ]
    alb = one.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert as_int(alb["idleTimeout"]) == 3600 and alb["internal"] is False
    assert one.outputs["albDnsName"].endswith(".elb.amazonaws.com")


def test_existing_certificate_arn_is_used_as_is() -> None:
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/0f0e0d0c-0000-4000-8000-000000000001"
    r = render.render("ecs", overrides={"ecs.certificateArn": arn, "ecs.hostedZoneId": None})
    assert not r.of_type("aws:acm/certificate:Certificate")
    assert not r.of_type("aws:route53/record:Record"), "no zone: no DNS records"
    assert r.one(T_LISTENER, "ecs-lb-https").inputs["certificateArn"] == arn


def test_one_host_rule_and_target_group_per_tenant(rendered: Rendered) -> None:
    tenants = tenants_of(rendered)
    rules = rendered.of_type(T_RULE)
    assert len(rules) == len(rendered.of_type(T_TG)) == len(tenants)
    https_arn = mocked_arn_listener(rendered)
    priorities = set()
    for tenant in tenants:
        rule = in_tenant(rendered, T_RULE, tenant).inputs
        tg = in_tenant(rendered, T_TG, tenant)
        assert rule["listenerArn"] == https_arn
        (cond,) = rule["conditions"]
        assert cond["hostHeader"]["values"] == [f"{tenant}.{DOMAIN}"]
        assert rule["actions"] == [{"type": "forward", "targetGroupArn": mocked_arn(tg)}]
        priorities.add(as_int(rule["priority"]))
        assert tg.inputs["targetType"] == "ip" and as_int(tg.inputs["port"]) == contract.PORT
        hc = tg.inputs["healthCheck"]
        assert hc["path"] == contract.READINESS_PROBE.path and hc["matcher"] == "200" and hc["protocol"] == "HTTP"
        assert as_int(tg.inputs["deregistrationDelay"]) <= 30
        assert rendered.outputs["url"][tenant] == f"https://{tenant}.{DOMAIN}"
        dns = in_tenant(rendered, "aws:route53/record:Record", tenant).inputs
        assert dns["name"] == f"{tenant}.{DOMAIN}" and dns["type"] == "A" and dns["zoneId"] == ZONE
    assert len(priorities) == len(tenants)


def mocked_arn_listener(r: Rendered) -> str:
    # Listener ARNs come from the harness's generic ARN mock.
    return render._arn("lb", "ecs-lb-https")


def test_rule_priorities_stay_put_when_tenants_are_added() -> None:
    from components.ecs.service import rule_priorities

    before = rule_priorities(THREE)
    after = rule_priorities(["zeta", *THREE, "delta"])
    assert all(after[t] == before[t] for t in THREE)
    assert len(set(rule_priorities([f"t{i}" for i in range(200)]).values())) == 200


# --------------------------------------------------------------------------- storage


def test_efs_is_encrypted_retained_and_has_an_access_point_per_tenant(rendered: Rendered) -> None:
    fs = rendered.one(T_FS)
    assert fs.inputs["encrypted"] is True and fs.retain_on_delete
    backup = rendered.one("aws:efs/backupPolicy:BackupPolicy")
    assert backup.inputs["backupPolicy"] == {"status": "ENABLED"} and backup.retain_on_delete
    mounts = rendered.of_type(T_MOUNT)
    assert sorted(m.inputs["subnetId"] for m in mounts) == ["ecs-net-private-0-id", "ecs-net-private-1-id"]
    policy = json.loads(rendered.one("aws:efs/fileSystemPolicy:FileSystemPolicy").inputs["policy"])
    assert {s["Sid"] for s in policy["Statement"]} == {"DenyUnencryptedTransport", "DenyRootAccess"}
    aps = rendered.of_type(T_AP)
    assert len(aps) == len(tenants_of(rendered))
    for tenant in tenants_of(rendered):
        ap = in_tenant_storage(rendered, tenant)
        assert ap["posixUser"] == {"uid": contract.UID, "gid": contract.GID}
        assert ap["rootDirectory"] == {
            "path": f"/tenants/{tenant}",
            "creationInfo": {"ownerUid": contract.UID, "ownerGid": contract.GID, "permissions": "0750"},
        }


def in_tenant_storage(r: Rendered, tenant: str) -> dict[str, Any]:
    (ap,) = [a for a in r.of_type(T_AP) if a.name == f"{tenant}-access-point"]
    return ap.inputs


def test_retain_data_false_lets_destroy_delete_the_file_system() -> None:
    r = render.render("ecs", overrides={"retainData": False, "ecs.efsBackups": False})
    assert not r.one(T_FS).retain_on_delete and not r.one(T_FS).protect
    assert r.one("aws:efs/backupPolicy:BackupPolicy").inputs["backupPolicy"] == {"status": "DISABLED"}


# --------------------------------------------------------------------------- compute


def test_services_are_single_writer_with_circuit_breaker(rendered: Rendered) -> None:
    cluster = rendered.one("aws:ecs/cluster:Cluster").inputs
    assert {"name": "containerInsights", "value": "enabled"} in cluster["settings"]
    for tenant in tenants_of(rendered):
        svc = in_tenant(rendered, T_SERVICE, tenant).inputs
        assert as_int(svc["desiredCount"]) == 1
        assert as_int(svc["deploymentMinimumHealthyPercent"]) == 0
        assert as_int(svc["deploymentMaximumPercent"]) == 100
        assert svc["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
        assert as_int(svc["healthCheckGracePeriodSeconds"]) > contract.STARTUP_BUDGET_SECONDS
        assert svc["launchType"] == "FARGATE"
        net = svc["networkConfiguration"]
        assert net["assignPublicIp"] is False
        assert net["subnets"] == ["ecs-net-private-0-id", "ecs-net-private-1-id"]
        assert net["securityGroups"] == ["ecs-sg-tasks-id"]
        (lb,) = svc["loadBalancers"]
        assert lb["targetGroupArn"] == mocked_arn(in_tenant(rendered, T_TG, tenant))
        assert lb["containerName"] == contract.ROLE and as_int(lb["containerPort"]) == contract.PORT
        assert svc["taskDefinition"] == render._arn("ecs", f"{tenant}-task")
        assert svc["tags"]["openhands:role"] == contract.ROLE and svc["tags"]["openhands:tenant"] == tenant


def test_log_retention_is_set(rendered: Rendered) -> None:
    groups = rendered.of_type(T_LOGS)
    assert len(groups) == len(tenants_of(rendered))
    assert all(as_int(g.inputs["retentionInDays"]) == 30 for g in groups)
    r = render.render("ecs", overrides={"ecs.logRetentionDays": 7})
    assert as_int(r.one(T_LOGS).inputs["retentionInDays"]) == 7


# --------------------------------------------------------------------------- network


def test_only_the_alb_is_open_to_the_world_and_only_on_80_443(rendered: Rendered) -> None:
    sg_ids = {f"{sg.name}-id": sg.name for sg in rendered.of_type(T_SG)}
    assert set(sg_ids.values()) == {"ecs-sg-alb", "ecs-sg-tasks", "ecs-sg-efs"}
    for sg in rendered.of_type(T_SG):
        assert not sg.inputs.get("ingress") and not sg.inputs.get("egress"), "rules are separate resources"
    world_ports = set()
    for rule in rendered.of_type(T_INGRESS):
        cidr = rule.inputs.get("cidrIpv4") or rule.inputs.get("cidrIpv6")
        if cidr and ipaddress.ip_network(cidr).prefixlen == 0:
            assert sg_ids[rule.inputs["securityGroupId"]] == "ecs-sg-alb", rule.name
            assert as_int(rule.inputs["fromPort"]) == as_int(rule.inputs["toPort"]) in (80, 443), rule.name
            world_ports.add(as_int(rule.inputs["fromPort"]))
    assert world_ports == {80, 443}
    by_name = {r.name: r.inputs for r in rendered.of_type(T_INGRESS)}
    tasks_in = by_name["ecs-sg-tasks-in-alb"]
    assert tasks_in["referencedSecurityGroupId"] == "ecs-sg-alb-id" and as_int(tasks_in["fromPort"]) == contract.PORT
    efs_in = by_name["ecs-sg-efs-in-tasks"]
    assert efs_in["referencedSecurityGroupId"] == "ecs-sg-tasks-id" and as_int(efs_in["fromPort"]) == 2049
    assert sorted(n for n in by_name if n.startswith(("ecs-sg-tasks", "ecs-sg-efs"))) == sorted([
        "ecs-sg-tasks-in-alb", "ecs-sg-efs-in-tasks"
    ])
    alb_out = {r.name: r.inputs for r in rendered.of_type(T_EGRESS)}["ecs-sg-alb-out-tasks"]
    assert alb_out["referencedSecurityGroupId"] == "ecs-sg-tasks-id" and as_int(alb_out["toPort"]) == contract.PORT


def test_ingress_cidrs_narrow_the_alb() -> None:
    r = render.render("ecs", overrides={"ecs.ingressCidrs": ["203.0.113.0/24"]})
    cidrs = {x.inputs.get("cidrIpv4") for x in r.of_type(T_INGRESS) if x.name.startswith("ecs-sg-alb-in")}
    assert cidrs == {"203.0.113.0/24"}
    assert not any((x.inputs.get("cidrIpv4") in WORLD) for x in r.of_type(T_INGRESS))


def test_created_vpc_spans_two_azs_with_nat(one: Rendered) -> None:
    subnets = {s.name: s.inputs for s in one.of_type("aws:ec2/subnet:Subnet")}
    assert set(subnets) == {"ecs-net-public-0", "ecs-net-public-1", "ecs-net-private-0", "ecs-net-private-1"}
    assert {subnets["ecs-net-public-0"]["availabilityZone"], subnets["ecs-net-public-1"]["availabilityZone"]} == {
        "us-east-1a", "us-east-1b"
    }
    assert len(one.of_type("aws:ec2/natGateway:NatGateway")) == 1
    per_az = render.render("ecs", overrides={"ecs.natGateways": "perAz"})
    nats = per_az.of_type("aws:ec2/natGateway:NatGateway")
    assert sorted(n.inputs["subnetId"] for n in nats) == ["ecs-net-public-0-id", "ecs-net-public-1-id"]
    routes = {rt.name: rt.inputs["routes"][0]["natGatewayId"] for rt in per_az.of_type("aws:ec2/routeTable:RouteTable")
              if rt.name.startswith("ecs-net-private")}
    assert routes == {"ecs-net-private-rt-0": "ecs-net-nat-0-id", "ecs-net-private-rt-1": "ecs-net-nat-1-id"}


def test_reused_vpc_creates_no_network() -> None:
    pub = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    priv = ["subnet-0123456789abcdef2", "subnet-0123456789abcdef3", "subnet-0123456789abcdef4"]
    r = render.render(
        "ecs",
        overrides={"ecs.vpcId": "vpc-0123456789abcdef0", "ecs.publicSubnetIds": pub, "ecs.privateSubnetIds": priv},
    )
    assert not [x for x in r.resources if x.type.startswith("aws:ec2/") and x.type != T_SG]
    assert r.one("aws:lb/loadBalancer:LoadBalancer").inputs["subnets"] == pub
    assert sorted(m.inputs["subnetId"] for m in r.of_type(T_MOUNT)) == priv
    assert r.one(T_SERVICE).inputs["networkConfiguration"]["subnets"] == priv
    assert {sg.inputs["vpcId"] for sg in r.of_type(T_SG)} == {"vpc-0123456789abcdef0"}


# --------------------------------------------------------------------------- config errors


class _CountingMonitor(render._Monitor):
    instances: list[render._Monitor] = []

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        _CountingMonitor.instances.append(self)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"resources": {"cpu": 1, "memory": 3000}}, ["openhands:resources", "2048-8192"]),
        ({"resources": {"cpu": 3, "memory": 4096}}, ["openhands:resources", "0.25, 0.5, 1, 2, 4, 8, 16"]),
        ({"ecs.hostedZoneId": None}, ["openhands:ecs", "certificateArn"]),
        ({"ecs.logRetentionDays": 10}, ["openhands:ecs.logRetentionDays"]),
        ({"ecs.vpcId": "vpc-0123456789abcdef0"}, ["publicSubnetIds"]),
        ({"ecs.natGateway": "perAz"}, ["openhands:ecs.natGateway", "natGateways"]),
        ({"ecs.vpcCidr": "10.0.0.0/8"}, ["openhands:ecs.vpcCidr"]),
    ],
)
def test_bad_config_fails_before_anything_is_registered(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], names: list[str]
) -> None:
    _CountingMonitor.instances = []
    monkeypatch.setattr(render, "_Monitor", _CountingMonitor)
    with pytest.raises(ConfigError) as err:
        render.render("ecs", overrides=overrides)
    for name in names:
        assert name in str(err.value)
    (monitor,) = _CountingMonitor.instances
    assert monitor.records == [], [r.name for r in monitor.records]


def test_every_fargate_size_in_the_table_renders() -> None:
    for cpu, memory in [(0.25, 512), (0.5, 4096), (2, 16384), (4, 30720), (8, 61440), (16, 122880)]:
        r = render.render("ecs", overrides={"resources": {"cpu": cpu, "memory": memory}})
        td = r.one(T_TASKDEF).inputs
        assert (td["cpu"], td["memory"]) == (str(int(cpu * 1024)), str(memory))


def test_ecs_stack_imports_no_kubernetes_or_docker_sdk() -> None:
    sdks = render.imported_sdks_for("ecs")
    assert "pulumi_aws" in sdks
    assert "pulumi_kubernetes" not in sdks and "pulumi_docker" not in sdks


# --------------------------------------------------------------------------- real server


def resolve_secrets(r: Rendered, tenant: str, secrets: list[dict[str, str]]) -> dict[str, str]:
    """What ECS does at task start: fetch <secret-arn>:<json-key>:: from Secrets Manager."""
    secret = in_tenant(r, T_SECRET, tenant)
    arn = mocked_arn(secret)
    (version,) = [v for v in r.of_type(T_SECRET_VERSION) if v.inputs["secretId"] == f"{secret.name}-id"]
    stored = json.loads(version.inputs["secretString"])
    out = {}
    for entry in secrets:
        ref_arn, key, stage, version_id = entry["valueFrom"].rsplit(":", 3)
        assert ref_arn == arn and stage == "" and version_id == ""
        out[entry["name"]] = stored[key]
    return out


def test_rendered_container_boots_the_real_agent_server(three: Rendered, start_agent_server) -> None:
    tenant = THREE[1]
    c = container(in_tenant(three, T_TASKDEF, tenant))
    env = {e["name"]: e["value"] for e in c["environment"]}
    env.update(resolve_secrets(three, tenant, c["secrets"]))
    server = start_agent_server(env, c["command"])
    health_path = in_tenant(three, T_TG, tenant).inputs["healthCheck"]["path"]
    assert server.get(health_path)[0] == 200  # what the target group sees
    key = three.outputs["apiKey"][tenant]
    assert server.get(contract.AUTH_CHECK_PATH)[0] == 401
    assert server.get(contract.AUTH_CHECK_PATH, key=three.outputs["apiKey"][THREE[0]])[0] == 401, "other tenant's key"
    assert server.get(contract.AUTH_CHECK_PATH, key=key)[0] == 200
    # The container health check ECS runs, pointed at this server's loopback port.
    cmd = c["healthCheck"]["command"]
    assert cmd[:3] == ["CMD", "bash", "-c"]
    script = cmd[3].replace(f"/127.0.0.1/{contract.PORT}", f"/127.0.0.1/{server.port}")
    assert subprocess.run(["bash", "-c", script], timeout=10).returncode == 0


def test_more_tenants_than_one_alb_holds_is_refused() -> None:
    with pytest.raises(ConfigError, match="openhands:tenants: 101 tenants"):
        render.render("ecs", overrides={"tenants": [f"t{i}" for i in range(101)]})
