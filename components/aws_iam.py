"""IAM policy documents, shared by the AWS models (ECS and the Docker VM): one builder, so every
policy reads the same way (Version, then Statement) and none is typed twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

IAM_POLICY_VERSION = "2012-10-17"


def policy_document(*statements: Mapping[str, Any]) -> pulumi.Output[str]:
    """An IAM policy document as JSON, in the key order AWS shows (Version, then Statement).

    Statements may hold Outputs (ARNs of resources not created yet); the result waits for them."""
    return pulumi.Output.json_dumps({"Version": IAM_POLICY_VERSION, "Statement": list(statements)})


def allow(sid: str, action: str | list[str], resource: pulumi.Input[str], **condition: Any) -> dict[str, Any]:
    """An ``Allow`` statement; ``condition`` (operator -> {key: value}), when given, narrows it."""
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


def service_trust_policy(service: str, **condition: Any) -> pulumi.Output[str]:
    """A role's trust policy: the AWS ``service`` (e.g. ``ecs-tasks.amazonaws.com``) may assume it."""
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if condition:
        statement["Condition"] = condition
    return policy_document(statement)
