"""Policies that guard how the agent server runs: checked, confined, bounded, logged and pinned.

Every agent-server workload has health checks on the contract's endpoints
(``agent-server-health-checks``); Kubernetes pods run as non-root without privilege escalation or
capabilities (``k8s-pod-hardening``); CPU and memory are limited (``resource-limits``); log groups
expire (``log-retention``); and images are pinned by a version tag or a digest (``image-pinned``,
configurable per environment).
"""

from __future__ import annotations

from pulumi_policy import ReportViolation, ResourceValidationArgs

from components import contract
from policy.resources import (
    DOCKER_CONTAINER,
    DOCKER_IMAGE,
    ECS_TASK,
    K8S_WORKLOADS,
    LOG_GROUP,
    TARGET_GROUPS,
    container_definitions,
    dig,
    docker_agent,
    ecs_agent,
    find_keys,
    is_map,
    is_modal,
    items,
    k8s_agent,
    label_values,
    num,
    pod_containers,
    pod_template,
    violation,
)


def image_pinned(image: str) -> bool:
    """A digest, or a tag that is a version (has a digit) and is not ``latest``."""
    if "@sha256:" in image or image.startswith("sha256:"):
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return tag.lower() != "latest" and any(c.isdigit() for c in tag)


# --------------------------------------------------------------------------- mandatory: health checks


def agent_server_health_checks(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    ready = contract.READINESS_PROBE.path
    if t in TARGET_GROUPS:
        if str(dig(props, "targetType", default="instance")) == "lambda":
            return
        hc = dig(props, "healthCheck", default={})
        agent = contract.ROLE in label_values(dig(props, "tags")) or num(dig(props, "port")) == contract.PORT
        if dig(hc, "enabled") is False:
            violation(
                report, args, "target group health check is disabled", f"enable it with path {ready} and matcher 200"
            )
            return
        protocol = str(dig(hc, "protocol", default=dig(props, "protocol", default="HTTP"))).upper()
        path = dig(hc, "path")
        if protocol in ("HTTP", "HTTPS") and not path:
            violation(
                report,
                args,
                "target group health check has no path (the default '/' is not a health endpoint)",
                f"set health_check.path to {ready} with matcher 200",
            )
        elif agent and path and path != ready:
            violation(
                report,
                args,
                f"agent-server target group checks {path}",
                f"set health_check.path to {ready} (GET, matcher 200)",
            )
    elif t == ECS_TASK:
        for c in ecs_agent(props):
            if not items(dig(c, "healthCheck", "command")):
                violation(
                    report,
                    args,
                    f"agent-server container '{c.get('name')}' has no healthCheck",
                    f"add healthCheck.command {list(contract.HEALTHCHECK_COMMAND)[:3]}... from the contract",
                )
    elif t in K8S_WORKLOADS:
        found = k8s_agent(args)
        for c in found[1] if found else []:
            missing = [p for p in ("startupProbe", "readinessProbe", "livenessProbe") if not is_map(c.get(p))]
            if missing:
                violation(
                    report,
                    args,
                    f"agent-server container '{c.get('name')}' lacks {', '.join(missing)}",
                    f"add startupProbe/readinessProbe on GET {ready} and livenessProbe on GET "
                    f"{contract.LIVENESS_PROBE.path} (port {contract.PORT})",
                )
            path = dig(c, "readinessProbe", "httpGet", "path")
            if path and path != ready:
                violation(report, args, f"readinessProbe of '{c.get('name')}' checks {path}", f"probe GET {ready}")
    elif t == DOCKER_CONTAINER:
        if docker_agent(props):
            tests = [str(x) for x in items(dig(props, "healthcheck", "tests"))]
            if not tests or tests[0].upper() == "NONE":
                violation(
                    report,
                    args,
                    "agent-server container has no healthcheck",
                    "set healthcheck.tests to the contract's HEALTHCHECK_COMMAND (GET /ready)",
                )
    elif is_modal(args):
        found = find_keys(props, "startup_timeout")
        value = num(found[0][1]) if found else None
        if value is None:
            violation(
                report,
                args,
                "Modal web server has no startup_timeout (Modal's default is far shorter than "
                f"the agent server's {contract.STARTUP_BUDGET_SECONDS} s start budget)",
                f"set @modal.web_server(startup_timeout={contract.STARTUP_BUDGET_SECONDS}) from the contract",
            )
        elif value < contract.STARTUP_BUDGET_SECONDS:
            violation(
                report,
                args,
                f"Modal startup_timeout {value:g} s is below the start budget {contract.STARTUP_BUDGET_SECONDS} s",
                "size it from contract.STARTUP_BUDGET_SECONDS",
            )


# --------------------------------------------------------------------------- mandatory: hardening


def k8s_pod_hardening(args: ResourceValidationArgs, report: ReportViolation) -> None:
    found = k8s_agent(args) if args.resource_type in K8S_WORKLOADS else None
    if not found:
        return
    pod, _ = found
    psc = dig(pod, "spec", "securityContext", default={})
    for c in pod_containers(pod):
        sc = dig(c, "securityContext", default={})
        name = c.get("name")
        non_root = dig(sc, "runAsNonRoot", default=dig(psc, "runAsNonRoot"))
        uid = num(dig(sc, "runAsUser", default=dig(psc, "runAsUser")))
        if non_root is not True or uid == 0:
            violation(
                report,
                args,
                f"container '{name}' may run as root",
                f"set securityContext.runAsNonRoot: true with runAsUser/runAsGroup {contract.UID}",
            )
        if dig(sc, "allowPrivilegeEscalation") is not False or dig(sc, "privileged") is True:
            violation(
                report,
                args,
                f"container '{name}' allows privilege escalation",
                "set securityContext.allowPrivilegeEscalation: false (and never privileged)",
            )
        drops = [str(x).upper() for x in items(dig(sc, "capabilities", "drop"))]
        if "ALL" not in drops:
            violation(
                report,
                args,
                f"container '{name}' keeps Linux capabilities",
                "set securityContext.capabilities.drop: [ALL]",
            )


# --------------------------------------------------------------------------- mandatory: limits and logs


def resource_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t in K8S_WORKLOADS:
        found = k8s_agent(args)
        for c in found[1] if found else []:
            limits = dig(c, "resources", "limits", default={})
            missing = [k for k in ("cpu", "memory") if not dig(limits, k)]
            if missing:
                violation(
                    report,
                    args,
                    f"container '{c.get('name')}' has no {'/'.join(missing)} limit",
                    "set resources.limits (and requests) from openhands:resources",
                )
    elif t == ECS_TASK:
        agents = ecs_agent(props)
        task_ok = dig(props, "cpu") and dig(props, "memory")
        for c in agents:
            if not task_ok and not (dig(c, "memory") or dig(c, "memoryReservation")):
                violation(
                    report,
                    args,
                    f"no task cpu/memory and no memory for container '{c.get('name')}'",
                    "set the task definition's cpu and memory from openhands:resources",
                )
    elif t == DOCKER_CONTAINER and docker_agent(props):
        if not num(dig(props, "memory")):
            violation(
                report,
                args,
                "agent-server container has no memory limit",
                "set memory (MiB) from openhands:resources.memory",
            )
        if not (num(dig(props, "cpus")) or num(dig(props, "cpuShares"))):
            violation(report, args, "agent-server container has no CPU limit", "set cpus from openhands:resources.cpu")
    elif is_modal(args):
        for key in ("cpu", "memory"):
            found = find_keys(props, key)
            if not found or not num(found[0][1]):
                violation(report, args, f"Modal app has no {key} setting", f"pass {key} from openhands:resources")


def log_retention(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == LOG_GROUP and not num(dig(args.props, "retentionInDays")):
        violation(
            report,
            args,
            "log group keeps logs forever (no retention)",
            "set retention_in_days (openhands:ecs.logRetentionDays, e.g. 30)",
        )


# --------------------------------------------------------------------------- configurable


def image_pinned_policy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    images: list[tuple[str, str]] = []
    if t == ECS_TASK:
        images = [(f"container '{c.get('name')}'", str(c.get("image"))) for c in container_definitions(props)]
    elif t in K8S_WORKLOADS:
        pod = pod_template(args)
        images = [(f"container '{c.get('name')}'", str(c.get("image"))) for c in (pod_containers(pod) if pod else [])]
    elif t == DOCKER_IMAGE:
        images = [("image", str(dig(props, "name", default="")))]
    elif t == DOCKER_CONTAINER:
        images = [("container", str(dig(props, "image", default="")))]
    elif is_modal(args):
        images = [(p, str(v)) for p, v in find_keys(props, "image") if isinstance(v, str)]
    for where, image in images:
        if image and not image_pinned(image):
            violation(
                report,
                args,
                f"{where} runs {image}, which is not pinned (no version tag or digest, or 'latest')",
                "pin a version tag or a digest, e.g. "
                f"{contract.DEFAULT_IMAGE} or {contract.IMAGE_REPOSITORY}@sha256:<digest>",
            )
