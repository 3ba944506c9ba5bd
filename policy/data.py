"""Policies that guard a tenant's data: its keys, its state volume and what happens to them.

Keys stay secret and are never blank (``no-plain-secrets``, ``session-key-not-empty``); state is
encrypted at rest and in transit (``storage-encrypted``, ``efs-transit-encryption``); exactly one agent
server writes each state volume, because two servers on one state directory serve stale data
(``single-writer``, ``modal-single-container``, the stack policy ``one-workload-per-volume``); and data
volumes survive a destroy (``data-protected``, configurable per environment).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs, StackValidationArgs

from components import contract
from policy.resources import (
    DOCKER_CONTAINER,
    DOCKER_VOLUME,
    EBS,
    ECS_SERVICE,
    ECS_TASK,
    EFS,
    INSTANCE,
    K8S_CONFIGMAP,
    K8S_PVC,
    K8S_SECRET,
    K8S_WORKLOADS,
    LAUNCH_TEMPLATE,
    SECRET_VERSION,
    container_definitions,
    dig,
    docker_agent,
    docker_env,
    ecs_agent,
    find_keys,
    is_dynamic,
    is_map,
    is_modal,
    items,
    k8s_agent,
    label_values,
    marked_secret,
    num,
    pod_containers,
    pod_template,
    retained,
    role_values,
    violation,
)

_OH_KEY = re.compile(r"^OH_(SESSION_API_KEYS?(_\d+)?|SECRET_KEY|PREVIOUS_SECRET_KEYS(_\d+)?)$")
_SESSION_KEY = re.compile(r"^OH_SESSION_API_KEYS?(_\d+)?$")
_SECRETISH = re.compile(
    r"(^|_)(SECRET|SECRETS|PASSWORD|PASSWD|TOKEN|API_?KEY|PRIVATE_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)|_KEYS?(_\d+)?$"
)
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(.*)$", re.M)


def secret_name(name: str) -> bool:
    """An env/data key that holds a key or credential (the contract's OH_* keys, or anything named like one)."""
    return bool(_OH_KEY.match(name) or _SECRETISH.search(name.upper()))


# --------------------------------------------------------------------------- mandatory: secrets


def no_plain_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t == ECS_TASK:
        for c in container_definitions(props):
            for env in items(c.get("environment")):
                name = str(dig(env, "name", default=""))
                if secret_name(name):
                    violation(
                        report,
                        args,
                        f"container '{c.get('name')}' sets {name} in plain `environment`",
                        "move it to the container's `secrets` (valueFrom a Secrets Manager secret or SSM SecureString)",
                    )
    elif t in K8S_WORKLOADS:
        pod = pod_template(args)
        for c in pod_containers(pod) if pod else []:
            for env in items(c.get("env")):
                name = str(dig(env, "name", default=""))
                if secret_name(name) and dig(env, "value") is not None and dig(env, "valueFrom") is None:
                    violation(
                        report,
                        args,
                        f"container '{c.get('name')}' sets {name} as a literal env `value`",
                        "keep it in a Secret and use env.valueFrom.secretKeyRef",
                    )
    elif t == K8S_CONFIGMAP:
        for section in ("data", "binaryData"):
            for key, value in (dig(props, section, default={}) or {}).items():
                names = [str(key)] if secret_name(str(key)) else []
                if isinstance(value, str):
                    names += [m.group(1) for m in _ENV_LINE.finditer(value) if _OH_KEY.match(m.group(1))]
                for name in names:
                    violation(
                        report,
                        args,
                        f"ConfigMap holds {name} (in {section}.{key}) in plain text",
                        "put keys in a Secret (or an external secret store), never a ConfigMap",
                    )
    elif t == DOCKER_CONTAINER:
        for i, name, _ in docker_env(props):
            if secret_name(name) and not marked_secret(args, f"envs[{i}]"):
                violation(
                    report,
                    args,
                    f"env {name} is a plain value (Pulumi does not mark `envs` secret)",
                    "pass envs through pulumi.Output.secret(...) or set "
                    "additional_secret_outputs=['envs'] on the container",
                )


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def session_key_not_empty(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    found: list[tuple[str, str]] = []  # (where, name) of blank session keys
    fix = "generate the key (RandomPassword) or set a non-blank openhands:tenantKeys.<tenant>.sessionApiKey"
    if t == K8S_SECRET:
        for key, value in (dig(props, "stringData", default={}) or {}).items():
            if _SESSION_KEY.match(str(key)) and _empty(value):
                found.append((f"stringData.{key}", str(key)))
        for key, value in (dig(props, "data", default={}) or {}).items():
            if _SESSION_KEY.match(str(key)):
                try:
                    decoded = base64.b64decode(str(value or "")).decode()
                except (ValueError, UnicodeDecodeError):
                    decoded = "?"
                if _empty(decoded):
                    found.append((f"data.{key}", str(key)))
    elif t == SECRET_VERSION:
        raw = dig(props, "secretString")
        try:
            doc = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            doc = None
        for key, value in doc.items() if isinstance(doc, dict) else []:
            if _SESSION_KEY.match(str(key)) and _empty(value):
                found.append((f"secretString.{key}", str(key)))
    elif t == ECS_TASK:
        for c in container_definitions(props):
            for env in items(c.get("environment")):
                if _SESSION_KEY.match(str(dig(env, "name", default=""))) and _empty(dig(env, "value")):
                    found.append((f"containerDefinitions[{c.get('name')}].environment", str(env.get("name"))))
    elif t in K8S_WORKLOADS:
        pod = pod_template(args)
        for c in pod_containers(pod) if pod else []:
            for env in items(c.get("env")):
                name = str(dig(env, "name", default=""))
                if _SESSION_KEY.match(name) and dig(env, "valueFrom") is None and _empty(dig(env, "value")):
                    found.append((f"container {c.get('name')} env", name))
    elif t == DOCKER_CONTAINER:
        for _, name, value in docker_env(props):
            if _SESSION_KEY.match(name) and _empty(value):
                found.append(("envs", name))
    elif is_dynamic(args):
        for path, value in find_keys(props, *[f"OH_SESSION_API_KEYS_{i}" for i in range(4)], "OH_SESSION_API_KEY"):
            if _empty(value):
                found.append((path, path.rsplit(".", 1)[-1]))
    for where, name in found:
        violation(report, args, f"session API key {name} is empty ({where}); an empty key leaves the server open", fix)


# --------------------------------------------------------------------------- mandatory: encryption


def storage_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t == EFS and dig(props, "encrypted") is not True:
        violation(
            report, args, "EFS file system is not encrypted at rest", "set encrypted=True (optionally kms_key_id)"
        )
    elif t == EBS and dig(props, "encrypted") is not True:
        violation(report, args, "EBS volume is not encrypted", "set encrypted=True")
    elif t == INSTANCE:
        if dig(props, "rootBlockDevice", "encrypted") is not True:
            violation(report, args, "instance root volume is not encrypted", "set root_block_device.encrypted=True")
        for i, dev in enumerate(items(dig(props, "ebsBlockDevices"))):
            if dig(dev, "encrypted") is not True:
                violation(
                    report,
                    args,
                    f"ebs_block_devices[{i}] ({dig(dev, 'deviceName')}) is not encrypted",
                    "set encrypted=True",
                )
    elif t == LAUNCH_TEMPLATE:
        for i, dev in enumerate(items(dig(props, "blockDeviceMappings"))):
            ebs = dig(dev, "ebs")
            if is_map(ebs) and str(dig(ebs, "encrypted", default="false")).lower() != "true":
                violation(report, args, f"block_device_mappings[{i}] EBS is not encrypted", "set ebs.encrypted='true'")


def efs_transit_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ECS_TASK:
        return
    for v in items(dig(args.props, "volumes")):
        efs = dig(v, "efsVolumeConfiguration")
        if is_map(efs) and str(dig(efs, "transitEncryption", default="DISABLED")).upper() != "ENABLED":
            violation(
                report,
                args,
                f"EFS volume '{dig(v, 'name')}' is mounted without transit encryption",
                "set efs_volume_configuration.transit_encryption='ENABLED' (with IAM authorization on "
                "the access point)",
            )


# --------------------------------------------------------------------------- mandatory: single writer


def _ecs_service_agent(props: Mapping[str, Any]) -> bool:
    tags = dig(props, "tags")
    roles = role_values(tags)
    if contract.ROLE in label_values(tags):
        return True
    # Untagged: the service's props do not say what it runs, so check it (conservative);
    # a service tagged with another role is left alone.
    return not roles


def single_writer(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    fix_ecs = (
        "run one task per tenant: desired_count=1, deployment_minimum_healthy_percent=0, "
        "deployment_maximum_percent=100; add tenants to scale out"
    )
    if t == ECS_SERVICE and _ecs_service_agent(props):
        desired = num(dig(props, "desiredCount"), 1) or 0
        mx = num(dig(props, "deploymentMaximumPercent"), 200) or 0
        mn = num(dig(props, "deploymentMinimumHealthyPercent"), 100) or 0
        controller = str(dig(props, "deploymentController", "type", default="ECS")).upper()
        if desired > 1:
            violation(
                report,
                args,
                f"desired_count is {desired:g}: several agent servers would write one state directory",
                fix_ecs,
            )
        if mx > 100:
            violation(
                report,
                args,
                f"deployment_maximum_percent is {mx:g} (min healthy {mn:g}): a rollout "
                "starts the new task while the old one still writes the volume",
                fix_ecs,
            )
        if controller != "ECS":
            violation(
                report,
                args,
                f"deployment controller {controller} runs blue and green tasks together",
                "use the ECS rolling controller with min 0 / max 100",
            )
    elif t in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:ReplicaSet"):
        found = k8s_agent(args)
        if not found:
            return
        pod, _ = found
        replicas = num(dig(props, "spec", "replicas"), 1) or 0
        if replicas > 1:
            violation(
                report,
                args,
                f"{replicas:g} replicas of the agent server: each tenant must have exactly one "
                "server on its state volume",
                "set replicas: 1 and add tenants to scale out",
            )
        if t == "kubernetes:apps/v1:Deployment":
            pvcs = [v for v in items(dig(pod, "spec", "volumes")) if is_map(dig(v, "persistentVolumeClaim"))]
            strategy = str(dig(props, "spec", "strategy", "type", default="RollingUpdate"))
            if pvcs and strategy != "Recreate":
                violation(
                    report,
                    args,
                    f"strategy {strategy} with state volume claim "
                    f"'{dig(pvcs[0], 'persistentVolumeClaim', 'claimName')}': a rollout runs two pods on "
                    "one volume",
                    "set spec.strategy.type: Recreate (or use a StatefulSet)",
                )
    # Docker: one container per state volume is a stack-wide fact, see one_workload_per_volume.


def modal_single_container(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_modal(args):
        return
    found = find_keys(args.props, "max_containers")
    value = num(found[0][1]) if found else None
    if value != 1:
        shown = "unset (unbounded)" if value is None else f"{value:g}"
        violation(
            report,
            args,
            f"Modal max_containers is {shown}; the agent server is a single writer on its volume",
            "set max_containers=1 and add tenants to scale out",
        )


def _volumes_of(r: Any) -> list[tuple[str, str]]:
    """(volume identity, workload) pairs a resource mounts as agent-server state."""
    t, props = r.resource_type, r.props
    out: list[tuple[str, str]] = []
    if t == DOCKER_CONTAINER and docker_agent(props):
        for v in items(dig(props, "volumes")):
            name = dig(v, "volumeName") or dig(v, "hostPath")
            if name and dig(v, "containerPath") == contract.DATA_DIR:
                out.append((f"docker volume {name}", r.name))
    elif t in K8S_WORKLOADS and k8s_agent(r):
        pod = pod_template(r) or {}
        ns = dig(props, "metadata", "namespace", default="default")
        for v in items(dig(pod, "spec", "volumes")):
            claim = dig(v, "persistentVolumeClaim", "claimName")
            if claim:
                out.append((f"claim {ns}/{claim}", r.name))
    elif t == ECS_TASK and ecs_agent(props):
        for v in items(dig(props, "volumes")):
            efs = dig(v, "efsVolumeConfiguration")
            if is_map(efs):
                ap = dig(efs, "authorizationConfig", "accessPointId")
                ident = f"efs {dig(efs, 'fileSystemId')}:{ap or dig(efs, 'rootDirectory', default='/')}"
                out.append((ident, r.name))
    return out


def one_workload_per_volume(args: StackValidationArgs, report: ReportViolation) -> None:
    seen: dict[str, str] = {}
    for r in args.resources:
        for ident, workload in _volumes_of(r):
            if ident in seen and seen[ident] != workload:
                report(
                    f"{r.resource_type.split(':')[-1]} '{workload}' and '{seen[ident]}' both mount {ident} as "
                    "agent-server state; two servers on one state directory serve stale data. Fix: give each "
                    "tenant its own volume / claim / access point",
                    r.urn,
                )
            seen.setdefault(ident, workload)


# --------------------------------------------------------------------------- configurable: data protection


def data_protected(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    fix = (
        "set protect=True on it; the retainOnDelete that openhands:retainData sets does not reach the policy "
        "engine (its analyzer protocol carries `protect` only), so retainData alone still shows this"
    )
    if t in (DOCKER_VOLUME, K8S_PVC, EFS, EBS):
        if not retained(args):
            violation(report, args, "data volume is neither protected nor retained on destroy", fix)
    elif t == "kubernetes:apps/v1:StatefulSet" and items(dig(props, "spec", "volumeClaimTemplates")):
        # Claims from templates are not Pulumi resources; Kubernetes keeps them unless told otherwise.
        if str(dig(props, "spec", "persistentVolumeClaimRetentionPolicy", "whenDeleted", default="Retain")) == "Delete":
            violation(
                report,
                args,
                "persistentVolumeClaimRetentionPolicy.whenDeleted is Delete: destroying the "
                "stack deletes every tenant's state",
                "set whenDeleted: Retain",
            )
    elif is_modal(args):
        for path, value in find_keys(props, "retain_data", "keep_volume", "retain_volume"):
            if value is False:
                violation(report, args, f"{path} is false: deleting the app deletes the state volume", fix)
        for path, value in find_keys(props, "delete_volume"):
            if value is True:
                violation(report, args, f"{path} is true: deleting the app deletes the state volume", fix)
