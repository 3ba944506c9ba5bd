"""What the policies read: the resource types they inspect and the helpers that find agent-server workloads.

Nothing here reports; ``policy.data``, ``policy.exposure`` and ``policy.workload`` hold the policies.

The policies see what the engine's analyzer passes: resource inputs with wire (camelCase) names and
secrets already unwrapped, as ``Mapping``/``Sequence`` proxies that raise on values unknown during
preview. They are written against the resources our models create and the same kinds written by
hand; agent-server workloads are recognised by a label/tag whose value is ``contract.ROLE`` or by the
image repository ``contract.IMAGE_REPOSITORY`` (or any ``*/agent-server`` mirror of it).

Two facts a policy cannot see under the engine, so none of them relies on them (and the offline
analyzer, ``policy.offline``, hands the policies exactly what the engine's analyzer does):

* which inputs are Pulumi secrets: pulumi-policy 1.21.0's ``Analyze`` deserializes with
  ``proxy_secrets=False``, so secretness is erased before a policy runs. Only
  ``opts.additional_secret_outputs`` says an input is secret (a Docker env carrying keys must be marked
  with ``additional_secret_outputs=["envs"]``).
* ``retainOnDelete``: the analyzer protocol (``AnalyzerResourceOptions``, pulumi 3.272 to 3.276) has
  ``protect`` but no ``retainOnDelete``. Only ``protect`` (or a native retention such as a StatefulSet's
  claim retention policy) counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import ReportViolation

from components import contract

# --------------------------------------------------------------------------- resource types

ECS_TASK = "aws:ecs/taskDefinition:TaskDefinition"
ECS_SERVICE = "aws:ecs/service:Service"
LISTENERS = ("aws:lb/listener:Listener", "aws:alb/listener:Listener")
TARGET_GROUPS = ("aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup")
EFS = "aws:efs/fileSystem:FileSystem"
EBS = "aws:ebs/volume:Volume"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
SECURITY_GROUPS = ("aws:ec2/securityGroup:SecurityGroup", "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
K8S_WORKLOADS = {
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template"),
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
    "kubernetes:core/v1:Pod": (),
}
K8S_CONFIGMAP = "kubernetes:core/v1:ConfigMap"
K8S_SECRET = "kubernetes:core/v1:Secret"
K8S_INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
K8S_NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# Gateway API objects are CustomResources: the type is "kubernetes:<apiVersion>:<kind>".
K8S_GATEWAY = re.compile(r"^kubernetes:gateway\.networking\.k8s\.io/v1(beta1)?:Gateway$")
K8S_PVC = "kubernetes:core/v1:PersistentVolumeClaim"
DOCKER_CONTAINER = "docker:index/container:Container"
DOCKER_VOLUME = "docker:index/volume:Volume"
DOCKER_IMAGE = "docker:index/remoteImage:RemoteImage"
DYNAMIC = "pulumi-python:dynamic"  # prefix: ":Resource", or "/<module>:<Name>" for named dynamic types

# The Docker model labels its containers with this key (components/docker/local.py); the proxy's value.
DOCKER_ROLE_LABEL = contract.ROLE_LABEL
TLS_PROXY_ROLE = contract.TLS_PROXY_ROLE


# --------------------------------------------------------------------------- helpers


def is_map(x: Any) -> bool:
    return isinstance(x, Mapping)


def is_list(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def dig(obj: Any, *path: str | int, default: Any = None) -> Any:
    """``obj[p0][p1]...`` through dicts, lists and policy proxies; ``default`` when absent."""
    for p in path:
        if isinstance(p, int):
            if not is_list(obj) or p >= len(obj):
                return default
        elif not is_map(obj) or p not in obj:
            return default
        obj = obj[p]
    return default if obj is None else obj


def items(x: Any) -> list[Any]:
    return list(x) if is_list(x) else []


def num(x: Any, default: float | None = None) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def is_agent_image(image: Any) -> bool:
    if not isinstance(image, str) or not image:
        return False
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    return repo == contract.IMAGE_REPOSITORY or repo.endswith("/agent-server")


def label_values(labels: Any) -> list[str]:
    """Values of a k8s label map, an AWS tag map or a Docker ``[{label, value}]`` list."""
    if is_map(labels):
        return [str(v) for v in labels.values()]
    return [str(dig(x, "value", default="")) for x in items(labels)]


def role_values(labels: Any) -> list[str]:
    """Values of labels/tags whose key names a role or component."""
    if is_map(labels):
        pairs = [(str(k), str(v)) for k, v in labels.items()]
    else:
        pairs = [(str(dig(x, "label", default="")), str(dig(x, "value", default=""))) for x in items(labels)]
    return [v for k, v in pairs if "role" in k.lower() or "component" in k.lower()]


def resource_label(args: Any) -> str:
    """How a message names the resource: type and logical name."""
    return f"{args.resource_type.split(':')[-1]} '{args.name}'"


def violation(report: ReportViolation, args: Any, problem: str, fix: str) -> None:
    report(f"{resource_label(args)}: {problem}. Fix: {fix}", getattr(args, "urn", None))


def marked_secret(args: Any, path: str) -> bool:
    """Whether the input at ``path`` (e.g. ``envs[3]``) is declared secret: its top-level input is in
    ``additional_secret_outputs``. A secret value alone is invisible to a policy (module docstring)."""
    top = re.split(r"[.\[]", path, maxsplit=1)[0]
    opts = getattr(args, "opts", None)
    return top in list(getattr(opts, "additional_secret_outputs", None) or [])


def retained(args: Any) -> bool:
    """``protect``: the only retention option the analyzer receives (no retainOnDelete, module docstring)."""
    return bool(getattr(getattr(args, "opts", None), "protect", False))


def policy_config(args: Any) -> Mapping[str, Any]:
    try:
        return args.get_config() or {}
    except Exception:  # noqa: BLE001 - hand-built args without a config
        return {}


# ---- ECS


def container_definitions(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = dig(props, "containerDefinitions", default="[]")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return [c for c in items(raw) if is_map(c)]


def ecs_agent(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The task definition's agent-server containers (all of them if the task is tagged as one)."""
    containers = container_definitions(props)
    tagged = contract.ROLE in label_values(dig(props, "tags"))
    return [
        c
        for c in containers
        if tagged
        or is_agent_image(c.get("image"))
        or c.get("name") == contract.ROLE
        or contract.ROLE in label_values(dig(c, "dockerLabels"))
    ]


# ---- Kubernetes


def pod_template(args: Any) -> Mapping[str, Any] | None:
    """The pod template (``{metadata, spec}``) of a workload, or the Pod itself."""
    path = K8S_WORKLOADS.get(args.resource_type)
    if path is None:
        return None
    node = dig(args.props, *path) if path else args.props
    return node if is_map(node) else None


def pod_containers(pod: Mapping[str, Any], init: bool = True) -> list[Mapping[str, Any]]:
    spec = dig(pod, "spec", default={})
    out = items(dig(spec, "containers"))
    if init:
        out += items(dig(spec, "initContainers"))
    return [c for c in out if is_map(c)]


def k8s_agent(args: Any) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]] | None:
    """(pod template, agent-server containers) when the workload runs the agent server."""
    pod = pod_template(args)
    if pod is None:
        return None
    labels = [*label_values(dig(args.props, "metadata", "labels")), *label_values(dig(pod, "metadata", "labels"))]
    containers = pod_containers(pod, init=False)
    agents = [c for c in containers if is_agent_image(c.get("image")) or c.get("name") == contract.ROLE]
    if not agents and contract.ROLE in labels:
        agents = containers
    return (pod, agents) if agents else None


# ---- Docker


def docker_env(props: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    out = []
    for i, entry in enumerate(items(dig(props, "envs"))):
        name, _, value = str(entry).partition("=")
        out.append((i, name, value))
    return out


def docker_role(props: Mapping[str, Any]) -> str | None:
    for entry in items(dig(props, "labels")):
        if dig(entry, "label") == DOCKER_ROLE_LABEL:
            return str(dig(entry, "value", default=""))
    return None


def docker_agent(props: Mapping[str, Any]) -> bool:
    return docker_role(props) == contract.ROLE or is_agent_image(props.get("image"))


# ---- Modal (a dynamic resource whose inputs carry the app settings)


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every mapping entry, depth first."""
    if is_map(obj):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, str(k), v
            yield from walk(v, p)
    elif is_list(obj):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def find_keys(obj: Any, *names: str) -> list[tuple[str, Any]]:
    wanted = {_norm(n) for n in names}
    return [(p, v) for p, k, v in walk(obj) if _norm(k) in wanted and not p.startswith("__")]


def is_dynamic(args: Any) -> bool:
    return str(args.resource_type).startswith(DYNAMIC)


def is_modal(args: Any) -> bool:
    if not is_dynamic(args):
        return False
    text = f"{args.name} {getattr(args, 'urn', '')}".lower()
    return "modal" in text or bool(find_keys(args.props, "max_containers", "min_containers", "scaledown_window"))
