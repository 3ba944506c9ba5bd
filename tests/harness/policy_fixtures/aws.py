"""AWS fixtures: ECS task definitions and services, ALB listeners and target groups, EFS, EBS,
EC2 instances, security groups, log groups, Secrets Manager versions."""

from __future__ import annotations

import json
from typing import Any

from components import contract
from tests.harness.policy_fixtures import Fixture

TASK = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
LISTENER = "aws:lb/listener:Listener"
TG = "aws:lb/targetGroup:TargetGroup"
SG = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_IN = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
INSTANCE = "aws:ec2/instance:Instance"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:default-keys-AbCdEf"


def container(**extra: Any) -> dict[str, Any]:
    """The agent-server container as components/ecs/service.py renders it."""
    c: dict[str, Any] = {
        "name": contract.ROLE,
        "image": contract.DEFAULT_IMAGE,
        "essential": True,
        "command": list(contract.ARGS),
        "environment": [{"name": k, "value": v} for k, v in sorted(contract.PLAIN_ENV.items())],
        "secrets": [{"name": n, "valueFrom": f"{SECRET_ARN}:{n}::"}
                    for n in ("OH_SESSION_API_KEYS_0", "OH_SECRET_KEY")],
        "healthCheck": {"command": list(contract.HEALTHCHECK_COMMAND), "interval": 15, "timeout": 5, "retries": 3},
        "portMappings": [{"containerPort": contract.PORT, "protocol": "tcp"}],
    }
    c.update(extra)
    return c


def task(containers: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "family": "openhands-default",
        "cpu": "1024",
        "memory": "2048",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "tags": {"openhands:role": contract.ROLE, "openhands:tenant": "default"},
        "containerDefinitions": json.dumps(containers or [container()]),
        "volumes": [{"name": "state", "efsVolumeConfiguration": {
            "fileSystemId": "fs-0123456789abcdef0", "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": "fsap-0123", "iam": "ENABLED"}}}],
    }
    props.update(extra)
    return props


# A hand-written task definition, the way the ECS docs' quick start writes it.
HAND_TASK = {
    "family": "agent",
    "containerDefinitions": json.dumps([{
        "name": "agent",
        "image": "ghcr.io/openhands/agent-server:latest",
        "memory": 2048,
        "environment": [{"name": "OH_SESSION_API_KEYS_0", "value": "changeme"},
                        {"name": "OPENAI_API_KEY", "value": "sk-test"}],
        "portMappings": [{"containerPort": 8000}],
    }]),
    "volumes": [{"name": "data", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}}],
}

SERVICE_OK = {"name": "openhands-default", "desiredCount": 1, "deploymentMinimumHealthyPercent": 0,
              "deploymentMaximumPercent": 100, "tags": {"openhands:role": contract.ROLE},
              "deploymentCircuitBreaker": {"enable": True, "rollback": True}}

FIXTURES: list[Fixture] = [
    # secrets
    Fixture("no-plain-secrets", "ecs-rendered-task", TASK, task()),
    Fixture("no-plain-secrets", "ecs-hand-written-key-in-environment", TASK, HAND_TASK, True, name="agent-task",
            expect="OH_SESSION_API_KEYS_0"),
    Fixture("no-plain-secrets", "ecs-other-secret-in-environment", TASK,
            task([container(environment=[{"name": "LLM_API_KEY", "value": "sk-1"}])]), True, expect="LLM_API_KEY"),
    Fixture("session-key-not-empty", "secretsmanager-keys", "aws:secretsmanager/secretVersion:SecretVersion",
            {"secretString": json.dumps({"OH_SESSION_API_KEYS_0": "k" * 48, "OH_SECRET_KEY": "s" * 48})}),
    Fixture("session-key-not-empty", "secretsmanager-blank-key", "aws:secretsmanager/secretVersion:SecretVersion",
            {"secretString": json.dumps({"OH_SESSION_API_KEYS_0": " ", "OH_SECRET_KEY": "s" * 48})}, True),
    Fixture("session-key-not-empty", "ecs-empty-key-in-environment", TASK,
            task([container(environment=[{"name": "OH_SESSION_API_KEYS_0", "value": ""}])]), True),
    # TLS
    Fixture("alb-listener-https", "https-with-certificate", LISTENER,
            {"port": 443, "protocol": "HTTPS", "certificateArn": "arn:aws:acm:us-east-1:1:certificate/x",
             "sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06", "defaultActions": [{"type": "fixed-response"}]}),
    Fixture("alb-listener-https", "http-80-redirect-only", LISTENER,
            {"port": 80, "protocol": "HTTP", "defaultActions": [
                {"type": "redirect", "redirect": {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}}]}),
    Fixture("alb-listener-https", "hand-written-http-forward", LISTENER,
            {"port": 80, "protocol": "HTTP", "defaultActions": [{"type": "forward", "targetGroupArn": "arn:tg"}]},
            True, name="web", expect="does not only redirect"),
    Fixture("alb-listener-https", "http-8000", LISTENER,
            {"port": 8000, "protocol": "HTTP", "defaultActions": [{"type": "forward", "targetGroupArn": "arn:tg"}]},
            True),
    Fixture("alb-listener-https", "https-without-certificate", LISTENER,
            {"port": 443, "protocol": "HTTPS", "defaultActions": [{"type": "forward"}]}, True),
    # health checks
    Fixture("agent-server-health-checks", "rendered-target-group", TG,
            {"port": 8000, "protocol": "HTTP", "targetType": "ip",
             "healthCheck": {"enabled": True, "path": "/ready", "matcher": "200"}}),
    Fixture("agent-server-health-checks", "target-group-without-path", TG,
            {"port": 8000, "protocol": "HTTP", "targetType": "ip"}, True, expect="no path"),
    Fixture("agent-server-health-checks", "target-group-wrong-path", TG,
            {"port": 8000, "protocol": "HTTP", "healthCheck": {"path": "/"}}, True, expect="/ready"),
    Fixture("agent-server-health-checks", "target-group-disabled", TG,
            {"port": 8000, "protocol": "HTTP", "healthCheck": {"enabled": False}}, True),
    Fixture("agent-server-health-checks", "ecs-task-with-healthcheck", TASK, task()),
    Fixture("agent-server-health-checks", "ecs-task-without-healthcheck", TASK, HAND_TASK, True),
    # encryption
    Fixture("storage-encrypted", "efs-encrypted", "aws:efs/fileSystem:FileSystem", {"encrypted": True}),
    Fixture("storage-encrypted", "efs-plain", "aws:efs/fileSystem:FileSystem", {"performanceMode": "generalPurpose"},
            True, expect="encrypted"),
    Fixture("storage-encrypted", "ebs-encrypted", "aws:ebs/volume:Volume", {"size": 50, "type": "gp3",
                                                                            "encrypted": True}),
    Fixture("storage-encrypted", "ebs-plain", "aws:ebs/volume:Volume", {"size": 50, "encrypted": False}, True),
    Fixture("storage-encrypted", "instance-root-plain", INSTANCE,
            {"instanceType": "t3.large", "rootBlockDevice": {"volumeSize": 30},
             "metadataOptions": {"httpTokens": "required"}}, True),
    Fixture("storage-encrypted", "instance-root-encrypted", INSTANCE,
            {"instanceType": "t3.large", "rootBlockDevice": {"volumeSize": 30, "encrypted": True}}),
    Fixture("efs-transit-encryption", "rendered-task", TASK, task()),
    Fixture("efs-transit-encryption", "hand-written-task", TASK, HAND_TASK, True, expect="transit"),
    # network exposure
    Fixture("no-world-open-ports", "alb-443-world", SG_IN,
            {"fromPort": 443, "toPort": 443, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0"}),
    Fixture("no-world-open-ports", "ssh-admin-cidr", SG,
            {"ingress": [{"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrBlocks": ["203.0.113.7/32"]},
                         {"fromPort": 80, "toPort": 80, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"],
                          "ipv6CidrBlocks": ["::/0"]}]}),
    Fixture("no-world-open-ports", "hand-written-ssh-world", SG,
            {"ingress": [{"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}]},
            True, name="vm-sg", expect="port 22"),
    Fixture("no-world-open-ports", "agent-port-ipv6-world", SG_RULE,
            {"type": "ingress", "fromPort": 8000, "toPort": 8000, "protocol": "tcp", "ipv6CidrBlocks": ["::/0"]},
            True, expect="::/0"),
    Fixture("no-world-open-ports", "all-traffic-world", SG_IN, {"ipProtocol": "-1", "cidrIpv4": "0.0.0.0/0"}, True,
            expect="all ports"),
    Fixture("no-world-open-ports", "egress-rule-ignored", SG_RULE,
            {"type": "egress", "fromPort": 0, "toPort": 0, "protocol": "-1", "cidrBlocks": ["0.0.0.0/0"]}),
    Fixture("no-world-open-ports", "configured-extra-port", SG_IN,
            {"fromPort": 8443, "toPort": 8443, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0"},
            config={"allowedPorts": [443, 8443]}),
    Fixture("imdsv2-required", "required", INSTANCE, {"metadataOptions": {"httpTokens": "required"}}),
    Fixture("imdsv2-required", "hand-written-default", INSTANCE, {"ami": "ami-1", "instanceType": "t3.micro"}, True,
            expect="http_tokens"),
    # single writer
    Fixture("single-writer", "rendered-service", SERVICE, SERVICE_OK),
    Fixture("single-writer", "default-rollout", SERVICE, {"name": "agent", "desiredCount": 1}, True,
            expect="deployment_maximum_percent is 200"),
    Fixture("single-writer", "two-tasks", SERVICE, {**SERVICE_OK, "desiredCount": 2}, True, expect="desired_count"),
    Fixture("single-writer", "other-role-service-ignored", SERVICE,
            {"desiredCount": 3, "tags": {"openhands:role": "worker"}}),
    Fixture("one-workload-per-volume", "two-tasks-one-access-point", stack=[
        (TASK, "a-task", task()), (TASK, "b-task", task())], violates=True, expect="fsap-0123"),
    Fixture("one-workload-per-volume", "access-point-per-tenant", stack=[
        (TASK, "a-task", task()),
        (TASK, "b-task", task(volumes=[{"name": "state", "efsVolumeConfiguration": {
            "fileSystemId": "fs-0123456789abcdef0", "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": "fsap-0456", "iam": "ENABLED"}}}]))]),
    # limits and logs
    Fixture("resource-limits", "fargate-task", TASK, task()),
    Fixture("resource-limits", "task-without-sizes", TASK,
            task(cpu=None, memory=None), True),
    Fixture("log-retention", "thirty-days", "aws:cloudwatch/logGroup:LogGroup", {"name": "/x", "retentionInDays": 30}),
    Fixture("log-retention", "forever", "aws:cloudwatch/logGroup:LogGroup", {"name": "/x"}, True,
            expect="retention"),
    # configurable
    Fixture("image-pinned", "ecs-version-tag", TASK, task()),
    Fixture("image-pinned", "ecs-latest", TASK, HAND_TASK, True, expect="latest"),
    Fixture("data-protected", "efs-protected-engine", "aws:efs/fileSystem:FileSystem", {"encrypted": True},
            protect=True),
    Fixture("data-protected", "ebs-unprotected", "aws:ebs/volume:Volume", {"encrypted": True}, True),
    Fixture("data-protected", "efs-retained-invisible-to-engine", "aws:efs/fileSystem:FileSystem",
            {"encrypted": True}, True, expect="protect"),
]
