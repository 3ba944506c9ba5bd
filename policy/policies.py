"""The OpenHands guardrails: every CrossGuard policy of the pack, importable without serving.

``policy/__main__.py`` only wraps ``POLICIES`` in a ``PolicyPack`` (constructing one starts a
gRPC server and blocks), so tests and ``python -m components check`` import this module and
call ``policy.validate(args, report)`` directly.

The policies see what the engine's analyzer passes: resource inputs with wire (camelCase)
names and secrets already unwrapped, as ``Mapping``/``Sequence`` proxies that raise on values
unknown during preview. They are written against the resources our models create and the same
kinds written by hand; agent-server workloads are recognised by a label/tag whose value is
``contract.ROLE`` or by the image repository ``contract.IMAGE_REPOSITORY`` (or any
``*/agent-server`` mirror of it).

Two facts a policy cannot see under the engine, so none of them relies on them (and the offline
``check`` hands the policies exactly what the engine's analyzer does, ``components.check.analyze_request``):

* which inputs are Pulumi secrets: pulumi-policy 1.21.0's ``Analyze`` deserializes with
  ``proxy_secrets=False``, so secretness is erased before a policy runs. Only
  ``opts.additional_secret_outputs`` says an input is secret (a Docker env carrying keys must be marked
  with ``additional_secret_outputs=["envs"]``).
* ``retainOnDelete``: the analyzer protocol (``AnalyzerResourceOptions``, pulumi 3.272 to 3.276) has
  ``protect`` but no ``retainOnDelete``. Only ``protect`` (or a native retention such as a StatefulSet's
  claim retention policy) counts.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

try:  # inside this repository the contract is the source of truth
    from components import contract
except ImportError:  # the pack run from policy/ alone (pulumi runs it with cwd=policy/)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from components import contract

MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

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

# The Docker model labels its containers with this key (components/docker.py); the proxy's value.
DOCKER_ROLE_LABEL = "dev.openhands.role"
TLS_PROXY_ROLE = "tls-proxy"

WORLD = ("0.0.0.0/0", "::/0")
WEB_PORTS = (80, 443)

_OH_KEY = re.compile(r"^OH_(SESSION_API_KEYS?(_\d+)?|SECRET_KEY|PREVIOUS_SECRET_KEYS(_\d+)?)$")
_SESSION_KEY = re.compile(r"^OH_SESSION_API_KEYS?(_\d+)?$")
_SECRETISH = re.compile(
    r"(^|_)(SECRET|SECRETS|PASSWORD|PASSWD|TOKEN|API_?KEY|PRIVATE_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)|_KEYS?(_\d+)?$"
)
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(.*)$", re.M)


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


def secret_name(name: str) -> bool:
    """An env/data key that holds a key or credential (the contract's OH_* keys, or anything named like one)."""
    return bool(_OH_KEY.match(name) or _SECRETISH.search(name.upper()))


def is_agent_image(image: Any) -> bool:
    if not isinstance(image, str) or not image:
        return False
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    return repo == contract.IMAGE_REPOSITORY or repo.endswith("/agent-server")


def image_pinned(image: str) -> bool:
    """A digest, or a tag that is a version (has a digit) and is not ``latest``."""
    if "@sha256:" in image or image.startswith("sha256:"):
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return tag.lower() != "latest" and any(c.isdigit() for c in tag)


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


def _violation(report: ReportViolation, args: Any, problem: str, fix: str) -> None:
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
        c for c in containers
        if tagged or is_agent_image(c.get("image")) or c.get("name") == contract.ROLE
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


# --------------------------------------------------------------------------- mandatory: secrets


def no_plain_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t == ECS_TASK:
        for c in container_definitions(props):
            for env in items(c.get("environment")):
                name = str(dig(env, "name", default=""))
                if secret_name(name):
                    _violation(report, args, f"container '{c.get('name')}' sets {name} in plain `environment`",
                               "move it to the container's `secrets` (valueFrom a Secrets Manager secret or "
                               "SSM SecureString)")
    elif t in K8S_WORKLOADS:
        pod = pod_template(args)
        for c in pod_containers(pod) if pod else []:
            for env in items(c.get("env")):
                name = str(dig(env, "name", default=""))
                if secret_name(name) and dig(env, "value") is not None and dig(env, "valueFrom") is None:
                    _violation(report, args, f"container '{c.get('name')}' sets {name} as a literal env `value`",
                               "keep it in a Secret and use env.valueFrom.secretKeyRef")
    elif t == K8S_CONFIGMAP:
        for section in ("data", "binaryData"):
            for key, value in (dig(props, section, default={}) or {}).items():
                names = [str(key)] if secret_name(str(key)) else []
                if isinstance(value, str):
                    names += [m.group(1) for m in _ENV_LINE.finditer(value) if _OH_KEY.match(m.group(1))]
                for name in names:
                    _violation(report, args, f"ConfigMap holds {name} (in {section}.{key}) in plain text",
                               "put keys in a Secret (or an external secret store), never a ConfigMap")
    elif t == DOCKER_CONTAINER:
        for i, name, _ in docker_env(props):
            if secret_name(name) and not marked_secret(args, f"envs[{i}]"):
                _violation(report, args, f"env {name} is a plain value (Pulumi does not mark `envs` secret)",
                           "pass envs through pulumi.Output.secret(...) or set "
                           "additional_secret_outputs=['envs'] on the container")


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
        for key, value in (doc.items() if isinstance(doc, dict) else []):
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
        _violation(report, args, f"session API key {name} is empty ({where}); an empty key leaves the server open",
                   fix)


# --------------------------------------------------------------------------- mandatory: TLS


def alb_listener_https(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in LISTENERS:
        return
    props = args.props
    protocol = str(dig(props, "protocol", default="HTTP")).upper()
    port = num(dig(props, "port"))
    if protocol in ("HTTPS", "TLS"):
        if not dig(props, "certificateArn"):
            _violation(report, args, f"{protocol} listener on port {port:g} has no certificateArn" if port else
                       f"{protocol} listener has no certificateArn",
                       "attach an ACM certificate (certificate_arn)")
        return
    if protocol in ("TCP", "UDP", "TCP_UDP", "GENEVE"):
        _violation(report, args, f"{protocol} listener carries traffic without TLS",
                   "use a TLS listener with a certificate")
        return
    actions = items(dig(props, "defaultActions"))
    redirect_only = bool(actions) and all(
        str(dig(a, "type", default="")).lower() == "redirect"
        and str(dig(a, "redirect", "protocol", default="")).upper() == "HTTPS"
        for a in actions
    )
    if port == 80 and redirect_only:
        return
    where = f"port {port:g}" if port is not None else "its port"
    _violation(report, args, f"plain HTTP listener on {where}" + ("" if port == 80 else " (only port 80 may be HTTP)")
               + ("" if redirect_only else " that does not only redirect to HTTPS"),
               "serve HTTPS with a certificate; keep port 80 only with a single redirect action "
               "(type 'redirect', protocol 'HTTPS', status HTTP_301)")


def _host_covered(host: str, tls_hosts: list[str]) -> bool:
    for h in tls_hosts:
        if h == host or (h.startswith("*.") and host.count(".") == h.count(".") and host.endswith(h[1:])):
            return True
    return False


def gateway_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every listener of a Gateway terminates TLS with a certificate (or passes TLS through)."""
    for i, listener in enumerate(items(dig(args.props, "spec", "listeners"))):
        name = dig(listener, "name", default=f"#{i}")
        protocol = str(dig(listener, "protocol", default="")).upper()
        port = num(dig(listener, "port"))
        where = f"listener '{name}'" + (f" (port {port:g})" if port is not None else "")
        if protocol not in ("HTTPS", "TLS"):
            _violation(report, args, f"{where} is {protocol or 'without a protocol'}: plain traffic, no TLS",
                       "use protocol HTTPS with tls.certificateRefs (cert-manager fills them from the "
                       "cert-manager.io/cluster-issuer annotation); an HTTP listener is not allowed, not even "
                       "for redirects")
            continue
        mode = str(dig(listener, "tls", "mode", default="Terminate"))
        if mode == "Terminate" and not items(dig(listener, "tls", "certificateRefs")) and not dig(
                listener, "tls", "options"):
            _violation(report, args, f"{where} terminates {protocol} without a certificate",
                       "set tls.certificateRefs to the TLS secret")


def ingress_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if K8S_GATEWAY.match(args.resource_type):
        gateway_tls(args, report)
        return
    if args.resource_type != K8S_INGRESS:
        return
    tls = [x for x in items(dig(args.props, "spec", "tls")) if is_map(x)]
    if not tls:
        _violation(report, args, "Ingress has no spec.tls, so it serves plain HTTP",
                   "add spec.tls with the hosts and a secretName (from a cert-manager issuer or an existing "
                   "TLS secret)")
        return
    tls_hosts = [str(h) for x in tls for h in items(x.get("hosts"))]
    for x in tls:
        if not x.get("secretName"):
            _violation(report, args, f"spec.tls entry for {items(x.get('hosts'))} has no secretName",
                       "name the TLS secret (cert-manager fills it from the issuer annotation)")
    for rule in items(dig(args.props, "spec", "rules")):
        host = dig(rule, "host")
        if host and not _host_covered(str(host), tls_hosts):
            _violation(report, args, f"host {host} is not covered by spec.tls", f"add {host} to spec.tls[].hosts")
        if not host and tls_hosts:
            _violation(report, args, "a rule without a host is served on every name, outside spec.tls",
                       "give every rule a host listed in spec.tls")


def docker_publish_only_tls_proxy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != DOCKER_CONTAINER:
        return
    props = args.props
    ports = [p for p in items(dig(props, "ports")) if is_map(p)]
    host_net = str(dig(props, "networkMode", default="")) == "host"
    if not ports and not host_net:
        return
    proxy = docker_role(props) == TLS_PROXY_ROLE and not docker_agent(props)
    what = "uses the host network" if host_net else "publishes " + ", ".join(
        f"{num(p.get('external'), num(p.get('internal'))) or 0:g}->{num(p.get('internal')) or 0:g}" for p in ports)
    if not proxy:
        _violation(report, args, f"container {what}; only the TLS proxy may be reachable from outside",
                   f"remove `ports`/host networking and route through the Caddy TLS proxy (the container "
                   f"labelled {DOCKER_ROLE_LABEL}={TLS_PROXY_ROLE})")
    elif host_net:
        _violation(report, args, "the TLS proxy uses the host network", "publish only its HTTPS and HTTP ports")
    elif any(num(p.get("internal")) == contract.PORT for p in ports):
        _violation(report, args, f"the TLS proxy publishes the agent-server port {contract.PORT}",
                   "publish only the proxy's HTTPS and HTTP ports")


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
            _violation(report, args, "target group health check is disabled",
                       f"enable it with path {ready} and matcher 200")
            return
        protocol = str(dig(hc, "protocol", default=dig(props, "protocol", default="HTTP"))).upper()
        path = dig(hc, "path")
        if protocol in ("HTTP", "HTTPS") and not path:
            _violation(report, args, "target group health check has no path (the default '/' is not a health "
                       "endpoint)", f"set health_check.path to {ready} with matcher 200")
        elif agent and path and path != ready:
            _violation(report, args, f"agent-server target group checks {path}",
                       f"set health_check.path to {ready} (GET, matcher 200)")
    elif t == ECS_TASK:
        for c in ecs_agent(props):
            if not items(dig(c, "healthCheck", "command")):
                _violation(report, args, f"agent-server container '{c.get('name')}' has no healthCheck",
                           f"add healthCheck.command {list(contract.HEALTHCHECK_COMMAND)[:3]}... from the contract")
    elif t in K8S_WORKLOADS:
        found = k8s_agent(args)
        for c in found[1] if found else []:
            missing = [p for p in ("startupProbe", "readinessProbe", "livenessProbe") if not is_map(c.get(p))]
            if missing:
                _violation(report, args, f"agent-server container '{c.get('name')}' lacks {', '.join(missing)}",
                           f"add startupProbe/readinessProbe on GET {ready} and livenessProbe on GET "
                           f"{contract.LIVENESS_PROBE.path} (port {contract.PORT})")
            path = dig(c, "readinessProbe", "httpGet", "path")
            if path and path != ready:
                _violation(report, args, f"readinessProbe of '{c.get('name')}' checks {path}", f"probe GET {ready}")
    elif t == DOCKER_CONTAINER:
        if docker_agent(props):
            tests = [str(x) for x in items(dig(props, "healthcheck", "tests"))]
            if not tests or tests[0].upper() == "NONE":
                _violation(report, args, "agent-server container has no healthcheck",
                           "set healthcheck.tests to the contract's HEALTHCHECK_COMMAND (GET /ready)")
    elif is_modal(args):
        found = find_keys(props, "startup_timeout")
        value = num(found[0][1]) if found else None
        if value is None:
            _violation(report, args, "Modal web server has no startup_timeout (Modal's default is far shorter than "
                       f"the agent server's {contract.STARTUP_BUDGET_SECONDS} s start budget)",
                       f"set @modal.web_server(startup_timeout={contract.STARTUP_BUDGET_SECONDS}) from the contract")
        elif value < contract.STARTUP_BUDGET_SECONDS:
            _violation(report, args, f"Modal startup_timeout {value:g} s is below the start budget "
                       f"{contract.STARTUP_BUDGET_SECONDS} s", "size it from contract.STARTUP_BUDGET_SECONDS")


# --------------------------------------------------------------------------- mandatory: encryption


def storage_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t == EFS and dig(props, "encrypted") is not True:
        _violation(report, args, "EFS file system is not encrypted at rest",
                   "set encrypted=True (optionally kms_key_id)")
    elif t == EBS and dig(props, "encrypted") is not True:
        _violation(report, args, "EBS volume is not encrypted", "set encrypted=True")
    elif t == INSTANCE:
        if dig(props, "rootBlockDevice", "encrypted") is not True:
            _violation(report, args, "instance root volume is not encrypted",
                       "set root_block_device.encrypted=True")
        for i, dev in enumerate(items(dig(props, "ebsBlockDevices"))):
            if dig(dev, "encrypted") is not True:
                _violation(report, args, f"ebs_block_devices[{i}] ({dig(dev, 'deviceName')}) is not encrypted",
                           "set encrypted=True")
    elif t == LAUNCH_TEMPLATE:
        for i, dev in enumerate(items(dig(props, "blockDeviceMappings"))):
            ebs = dig(dev, "ebs")
            if is_map(ebs) and str(dig(ebs, "encrypted", default="false")).lower() != "true":
                _violation(report, args, f"block_device_mappings[{i}] EBS is not encrypted",
                           "set ebs.encrypted='true'")


def efs_transit_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ECS_TASK:
        return
    for v in items(dig(args.props, "volumes")):
        efs = dig(v, "efsVolumeConfiguration")
        if is_map(efs) and str(dig(efs, "transitEncryption", default="DISABLED")).upper() != "ENABLED":
            _violation(report, args, f"EFS volume '{dig(v, 'name')}' is mounted without transit encryption",
                       "set efs_volume_configuration.transit_encryption='ENABLED' (with IAM authorization on "
                       "the access point)")


# --------------------------------------------------------------------------- mandatory: network exposure


def _world(cidrs: Any) -> list[str]:
    return [str(c) for c in items(cidrs) if str(c) in WORLD]


def _bad_ports(protocol: Any, from_port: Any, to_port: Any, allowed: Sequence[int]) -> str | None:
    proto = str(protocol if protocol is not None else "-1").lower()
    if proto in ("icmp", "1", "icmpv6", "58"):
        return None
    if proto in ("-1", "all"):
        return "all ports"
    lo, hi = num(from_port, 0) or 0, num(to_port, num(from_port, 65535))
    hi = 65535 if hi is None else hi
    if lo <= 0 and hi <= 0:  # 0/0 with tcp means every port
        return "all ports"
    if hi - lo > 1000:
        return f"ports {lo:g}-{hi:g}"
    bad = [p for p in range(int(lo), int(hi) + 1) if p not in allowed]
    if not bad:
        return None
    return f"port {bad[0]}" if lo == hi else f"ports {lo:g}-{hi:g}"


def no_world_open_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    allowed = [int(p) for p in policy_config(args).get("allowedPorts", WEB_PORTS)]
    rules: list[tuple[str, Any, Any, Any, list[str]]] = []  # (where, protocol, from, to, world cidrs)
    if t in SECURITY_GROUPS:
        for i, r in enumerate(items(dig(props, "ingress"))):
            world = _world(dig(r, "cidrBlocks", default=[])) + _world(dig(r, "ipv6CidrBlocks", default=[]))
            rules.append((f"ingress[{i}]", dig(r, "protocol"), dig(r, "fromPort"), dig(r, "toPort"), world))
    elif t == SG_RULE and str(dig(props, "type", default="")) == "ingress":
        world = _world(dig(props, "cidrBlocks", default=[])) + _world(dig(props, "ipv6CidrBlocks", default=[]))
        rules.append(("rule", dig(props, "protocol"), dig(props, "fromPort"), dig(props, "toPort"), world))
    elif t == SG_INGRESS_RULE:
        world = [c for c in (dig(props, "cidrIpv4"), dig(props, "cidrIpv6")) if c in WORLD]
        rules.append(("rule", dig(props, "ipProtocol"), dig(props, "fromPort"), dig(props, "toPort"), world))
    for where, proto, lo, hi, world in rules:
        if not world:
            continue
        bad = _bad_ports(proto, lo, hi, allowed)
        if bad:
            _violation(report, args, f"{where} opens {bad} to {', '.join(world)}",
                       f"allow only {'/'.join(map(str, allowed))} from the internet; give SSH and admin ports "
                       "your admin CIDRs (e.g. 203.0.113.7/32) or use SSM Session Manager")


def imdsv2_required(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in (INSTANCE, LAUNCH_TEMPLATE):
        return
    md = dig(args.props, "metadataOptions", default={})
    if str(dig(md, "httpEndpoint", default="enabled")) == "disabled":
        return
    if str(dig(md, "httpTokens", default="optional")) != "required":
        _violation(report, args, "instance metadata allows IMDSv1 (http_tokens is not 'required')",
                   "set metadata_options.http_tokens='required' (and http_put_response_hop_limit=2 for "
                   "containers)")


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
    fix_ecs = ("run one task per tenant: desired_count=1, deployment_minimum_healthy_percent=0, "
               "deployment_maximum_percent=100; add tenants to scale out")
    if t == ECS_SERVICE and _ecs_service_agent(props):
        desired = num(dig(props, "desiredCount"), 1) or 0
        mx = num(dig(props, "deploymentMaximumPercent"), 200) or 0
        mn = num(dig(props, "deploymentMinimumHealthyPercent"), 100) or 0
        controller = str(dig(props, "deploymentController", "type", default="ECS")).upper()
        if desired > 1:
            _violation(report, args, f"desired_count is {desired:g}: several agent servers would write one "
                       "state directory", fix_ecs)
        if mx > 100:
            _violation(report, args, f"deployment_maximum_percent is {mx:g} (min healthy {mn:g}): a rollout "
                       "starts the new task while the old one still writes the volume", fix_ecs)
        if controller != "ECS":
            _violation(report, args, f"deployment controller {controller} runs blue and green tasks together",
                       "use the ECS rolling controller with min 0 / max 100")
    elif t in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:ReplicaSet"):
        found = k8s_agent(args)
        if not found:
            return
        pod, _ = found
        replicas = num(dig(props, "spec", "replicas"), 1) or 0
        if replicas > 1:
            _violation(report, args, f"{replicas:g} replicas of the agent server: each tenant must have exactly one "
                       "server on its state volume", "set replicas: 1 and add tenants to scale out")
        if t == "kubernetes:apps/v1:Deployment":
            pvcs = [v for v in items(dig(pod, "spec", "volumes")) if is_map(dig(v, "persistentVolumeClaim"))]
            strategy = str(dig(props, "spec", "strategy", "type", default="RollingUpdate"))
            if pvcs and strategy != "Recreate":
                _violation(report, args, f"strategy {strategy} with state volume claim "
                           f"'{dig(pvcs[0], 'persistentVolumeClaim', 'claimName')}': a rollout runs two pods on "
                           "one volume", "set spec.strategy.type: Recreate (or use a StatefulSet)")
    # Docker: one container per state volume is a stack-wide fact, see one_workload_per_volume.


def modal_single_container(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_modal(args):
        return
    found = find_keys(args.props, "max_containers")
    value = num(found[0][1]) if found else None
    if value != 1:
        shown = "unset (unbounded)" if value is None else f"{value:g}"
        _violation(report, args, f"Modal max_containers is {shown}; the agent server is a single writer on its "
                   "volume", "set max_containers=1 and add tenants to scale out")


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
                report(f"{r.resource_type.split(':')[-1]} '{workload}' and '{seen[ident]}' both mount {ident} as "
                       "agent-server state; two servers on one state directory serve stale data. Fix: give each "
                       "tenant its own volume / claim / access point", r.urn)
            seen.setdefault(ident, workload)


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
            _violation(report, args, f"container '{name}' may run as root",
                       f"set securityContext.runAsNonRoot: true with runAsUser/runAsGroup {contract.UID}")
        if dig(sc, "allowPrivilegeEscalation") is not False or dig(sc, "privileged") is True:
            _violation(report, args, f"container '{name}' allows privilege escalation",
                       "set securityContext.allowPrivilegeEscalation: false (and never privileged)")
        drops = [str(x).upper() for x in items(dig(sc, "capabilities", "drop"))]
        if "ALL" not in drops:
            _violation(report, args, f"container '{name}' keeps Linux capabilities",
                       "set securityContext.capabilities.drop: [ALL]")


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    for k, v in (dig(selector, "matchLabels", default={}) or {}).items():
        if labels.get(str(k)) != str(v):
            return False
    for e in items(dig(selector, "matchExpressions")):
        key, op, vals = str(dig(e, "key")), str(dig(e, "operator")), [str(v) for v in items(dig(e, "values"))]
        present = key in labels
        if (op == "In" and labels.get(key) not in vals) or (op == "NotIn" and labels.get(key) in vals) or (
            op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def k8s_network_policy(args: StackValidationArgs, report: ReportViolation) -> None:
    policies = []
    for r in args.resources:
        if r.resource_type == K8S_NETPOL:
            types = [str(x) for x in items(dig(r.props, "spec", "policyTypes"))]
            if not types or "Ingress" in types:
                policies.append((dig(r.props, "metadata", "namespace"), dig(r.props, "spec", "podSelector",
                                                                           default={})))
    for r in args.resources:
        found = k8s_agent(r) if r.resource_type in K8S_WORKLOADS else None
        if not found:
            continue
        pod, _ = found
        ns = dig(r.props, "metadata", "namespace")
        labels = {str(k): str(v) for k, v in (dig(pod, "metadata", "labels", default={}) or {}).items()}
        if not any((pns is None or ns is None or pns == ns) and _selector_matches(sel, labels)
                   for pns, sel in policies):
            report(f"{r.resource_type.split(':')[-1]} '{r.name}': no NetworkPolicy selects the agent-server pods "
                   f"(labels {labels}), so any pod in the cluster can reach port {contract.PORT}. Fix: add a "
                   "NetworkPolicy whose podSelector matches them and allows ingress only from the ingress "
                   "controller's (or the gateway proxies') namespace", r.urn)


# --------------------------------------------------------------------------- mandatory: limits and logs


def resource_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t in K8S_WORKLOADS:
        found = k8s_agent(args)
        for c in found[1] if found else []:
            limits = dig(c, "resources", "limits", default={})
            missing = [k for k in ("cpu", "memory") if not dig(limits, k)]
            if missing:
                _violation(report, args, f"container '{c.get('name')}' has no {'/'.join(missing)} limit",
                           "set resources.limits (and requests) from openhands:resources")
    elif t == ECS_TASK:
        agents = ecs_agent(props)
        task_ok = dig(props, "cpu") and dig(props, "memory")
        for c in agents:
            if not task_ok and not (dig(c, "memory") or dig(c, "memoryReservation")):
                _violation(report, args, f"no task cpu/memory and no memory for container '{c.get('name')}'",
                           "set the task definition's cpu and memory from openhands:resources")
    elif t == DOCKER_CONTAINER and docker_agent(props):
        if not num(dig(props, "memory")):
            _violation(report, args, "agent-server container has no memory limit",
                       "set memory (MiB) from openhands:resources.memory")
        if not (num(dig(props, "cpus")) or num(dig(props, "cpuShares"))):
            _violation(report, args, "agent-server container has no CPU limit", "set cpus from openhands:resources.cpu")
    elif is_modal(args):
        for key in ("cpu", "memory"):
            found = find_keys(props, key)
            if not found or not num(found[0][1]):
                _violation(report, args, f"Modal app has no {key} setting", f"pass {key} from openhands:resources")


def log_retention(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == LOG_GROUP and not num(dig(args.props, "retentionInDays")):
        _violation(report, args, "log group keeps logs forever (no retention)",
                   "set retention_in_days (openhands:ecs.logRetentionDays, e.g. 30)")


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
            _violation(report, args, f"{where} runs {image}, which is not pinned (no version tag or digest, or "
                       "'latest')", "pin a version tag or a digest, e.g. "
                       f"{contract.DEFAULT_IMAGE} or {contract.IMAGE_REPOSITORY}@sha256:<digest>")


def data_protected(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    fix = ("set protect=True on it; the retainOnDelete that openhands:retainData sets does not reach the policy "
           "engine (its analyzer protocol carries `protect` only), so retainData alone still shows this")
    if t in (DOCKER_VOLUME, K8S_PVC, EFS, EBS):
        if not retained(args):
            _violation(report, args, "data volume is neither protected nor retained on destroy", fix)
    elif t == "kubernetes:apps/v1:StatefulSet" and items(dig(props, "spec", "volumeClaimTemplates")):
        # Claims from templates are not Pulumi resources; Kubernetes keeps them unless told otherwise.
        if str(dig(props, "spec", "persistentVolumeClaimRetentionPolicy", "whenDeleted", default="Retain")) == "Delete":
            _violation(report, args, "persistentVolumeClaimRetentionPolicy.whenDeleted is Delete: destroying the "
                       "stack deletes every tenant's state", "set whenDeleted: Retain")
    elif is_modal(args):
        for path, value in find_keys(props, "retain_data", "keep_volume", "retain_volume"):
            if value is False:
                _violation(report, args, f"{path} is false: deleting the app deletes the state volume", fix)
        for path, value in find_keys(props, "delete_volume"):
            if value is True:
                _violation(report, args, f"{path} is true: deleting the app deletes the state volume", fix)


# --------------------------------------------------------------------------- the pack

PACK_NAME = "openhands-guardrails"
CONFIGURABLE = ("image-pinned", "data-protected")

_PORTS_SCHEMA = PolicyConfigSchema(
    properties={
        "allowedPorts": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 65535},
            "default": list(WEB_PORTS),
            "description": "Ports that may be open to 0.0.0.0/0 and ::/0",
        }
    }
)


def _resource(name: str, description: str, fn: Callable[..., None], level: EnforcementLevel = MANDATORY,
              schema: PolicyConfigSchema | None = None) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=fn, enforcement_level=level,
                                    config_schema=schema)


POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _resource("no-plain-secrets", "No OH_* key or other secret in ECS `environment`, a Kubernetes env `value`, "
              "a ConfigMap, or Docker env not marked secret.", no_plain_secrets),
    _resource("session-key-not-empty", "A session API key value is never empty.", session_key_not_empty),
    _resource("alb-listener-https", "ALB listeners are HTTPS with a certificate; port 80 may only redirect.",
              alb_listener_https),
    _resource("ingress-tls", "Every Ingress has TLS for every host; every Gateway listener terminates TLS.",
              ingress_tls),
    _resource("docker-publish-only-tls-proxy", "The Docker host is published only through the TLS proxy.",
              docker_publish_only_tls_proxy),
    _resource("agent-server-health-checks", "Agent-server workloads have health checks: target-group path, "
              "probes, Docker healthcheck, Modal startup timeout.", agent_server_health_checks),
    _resource("storage-encrypted", "EFS, EBS and instance volumes are encrypted.", storage_encrypted),
    _resource("efs-transit-encryption", "EFS task volumes use transit encryption.", efs_transit_encryption),
    _resource("no-world-open-ports", "No security group opens 22 or any non-web port to 0.0.0.0/0 or ::/0.",
              no_world_open_ports, schema=_PORTS_SCHEMA),
    _resource("imdsv2-required", "Instances require IMDSv2.", imdsv2_required),
    _resource("single-writer", "One agent server per state volume: one replica, no overlapping rollout.",
              single_writer),
    StackValidationPolicy(name="one-workload-per-volume", description="No two agent-server workloads mount the "
                          "same state volume, claim or EFS access point.", validate=one_workload_per_volume,
                          enforcement_level=MANDATORY),
    _resource("modal-single-container", "Modal max_containers is 1.", modal_single_container),
    _resource("k8s-pod-hardening", "Agent-server pods run as non-root, without privilege escalation and with all "
              "capabilities dropped.", k8s_pod_hardening),
    StackValidationPolicy(name="k8s-network-policy", description="Every Kubernetes agent-server workload is "
                          "selected by a NetworkPolicy.", validate=k8s_network_policy, enforcement_level=MANDATORY),
    _resource("resource-limits", "Agent-server workloads have CPU and memory limits.", resource_limits),
    _resource("log-retention", "Log groups have a retention.", log_retention),
    # Configurable per environment: advisory by default (dev), mandatory in prod via config.prod.json.
    _resource("image-pinned", "Images are pinned by a version tag or a digest, never latest.",
              image_pinned_policy, level=ADVISORY),
    _resource("data-protected", "Data volumes are protected or retained on destroy.", data_protected,
              level=ADVISORY),
]

BY_NAME = {p.name: p for p in POLICIES}
