"""Offline render harness: run a stack's program under Pulumi's mock runtime.

``render("local")`` reads ``stacks/Pulumi.local.yaml``, runs ``__main__``'s program with
``pulumi.runtime.set_mocks`` and returns every registered resource (type, name, inputs
with secrets unwrapped, which input paths were secret, protect / retainOnDelete) and
every export. Tests, the ``check`` command and the benchmark all use it; no Pulumi CLI,
provider plugin or cloud account is involved.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import string
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc

from components import contract, deployment
from components.config import NAMESPACE
from components.config.stackfile import load_stack_config, stack_file  # noqa: F401  (re-exported for tests)

ROOT = contract.PROJECT_ROOT
ACCOUNT = "123456789012"
REGION = "us-east-1"
PROVIDER_SDKS = ("pulumi_aws", "pulumi_kubernetes", "pulumi_docker", "pulumi_command", "pulumi_tls", "modal")


def fake_secret(*parts: str, length: int = 48) -> str:
    """A deterministic stand-in for a random value, so renders are repeatable."""
    alphabet = string.ascii_letters + string.digits
    digest = hashlib.sha256("/".join(parts).encode()).digest() * 4
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


# ------------------------------------------------------------------ mock outputs
# Computed outputs a real provider would return, by resource type. Each function gets
# (name, inputs) and returns extra state (camelCase names).

def _arn(service: str, name: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}"


RESOURCE_OUTPUTS: dict[str, Callable[[str, dict], dict]] = {
    "random:index/randomPassword:RandomPassword": lambda n, i: {
        "result": fake_secret(n, length=int(i.get("length", 48)))
    },
    "aws:lb/loadBalancer:LoadBalancer": lambda n, i: {
        "dnsName": f"{n}-1234567890.{REGION}.elb.amazonaws.com",
        "zoneId": "Z35SXDOTRQ7X7K",
        "arn": _arn("elasticloadbalancing", f"loadbalancer/app/{n}/50dc6c495c0c9188"),
        "arnSuffix": f"app/{n}/50dc6c495c0c9188",
    },
    "aws:lb/targetGroup:TargetGroup": lambda n, i: {
        "arn": _arn("elasticloadbalancing", f"targetgroup/{n[:20]}/73e2d6bc24d8a067"),
        "arnSuffix": f"targetgroup/{n[:20]}/73e2d6bc24d8a067",
    },
    "aws:acm/certificate:Certificate": lambda n, i: {
        "arn": _arn("acm", f"certificate/{hashlib.md5(n.encode()).hexdigest()[:8]}-0000-0000-0000-000000000000"),
        "domainValidationOptions": [
            {
                "domainName": d,
                "resourceRecordName": f"_x1.{d.lstrip('*.')}.",
                "resourceRecordType": "CNAME",
                "resourceRecordValue": "_x2.acm-validations.aws.",
            }
            for d in dict.fromkeys([i.get("domainName"), *(i.get("subjectAlternativeNames") or [])])
            if d
        ],
    },
    "aws:acm/certificateValidation:CertificateValidation": lambda n, i: {"certificateArn": i.get("certificateArn")},
    "aws:efs/fileSystem:FileSystem": lambda n, i: {"id": "fs-0123456789abcdef0", "arn": _arn("elasticfilesystem",
                                                                                          "file-system/fs-0123456789abcdef0")},
    "aws:efs/accessPoint:AccessPoint": lambda n, i: {"arn": _arn("elasticfilesystem", f"access-point/fsap-{n}")},
    "aws:secretsmanager/secret:Secret": lambda n, i: {
        "arn": _arn("secretsmanager", f"secret:{i.get('name', n)}-AbCdEf")
    },
    "aws:ec2/eip:Eip": lambda n, i: {"publicIp": "203.0.113.10", "allocationId": "eipalloc-0123456789abcdef0"},
    "aws:ec2/instance:Instance": lambda n, i: {"privateIp": "10.0.1.10", "availabilityZone": f"{REGION}a"},
    "aws:ebs/volume:Volume": lambda n, i: {"id": "vol-0" + hashlib.sha256(n.encode()).hexdigest()[:16]},
    "aws:route53/record:Record": lambda n, i: {"fqdn": str(i.get("name", n)).rstrip(".")},
    "aws:cloudwatch/logGroup:LogGroup": lambda n, i: {"arn": _arn("logs", f"log-group:{i.get('name', n)}")},
    "tls:index/privateKey:PrivateKey": lambda n, i: {
        "privateKeyPem": f"-----BEGIN PRIVATE KEY-----\n{fake_secret(n, 'key')}\n-----END PRIVATE KEY-----\n",
        "publicKeyPem": f"-----BEGIN PUBLIC KEY-----\n{fake_secret(n, 'pub')}\n-----END PUBLIC KEY-----\n",
        "publicKeyOpenssh": f"ssh-ed25519 {fake_secret(n, 'ssh')}",
    },
    "tls:index/selfSignedCert:SelfSignedCert": lambda n, i: {
        "certPem": f"-----BEGIN CERTIFICATE-----\n{fake_secret(n, 'ca')}\n-----END CERTIFICATE-----\n"
    },
    "tls:index/locallySignedCert:LocallySignedCert": lambda n, i: {
        "certPem": f"-----BEGIN CERTIFICATE-----\n{fake_secret(n, 'leaf')}\n-----END CERTIFICATE-----\n"
    },
    "tls:index/certRequest:CertRequest": lambda n, i: {"certRequestPem": "-----BEGIN CERTIFICATE REQUEST-----\n"},
    # components/modal/deploy.py's dynamic resource: the web URL Modal gives the class's method.
    "pulumi-python:dynamic/modal:App": lambda n, i: {
        "url": f"https://mock-workspace--{str(i.get('appName')).lower()}-agentserver-serve.modal.run"
    },
    "docker:index/remoteImage:RemoteImage": lambda n, i: {
        "imageId": "sha256:" + hashlib.sha256(str(i.get("name")).encode()).hexdigest(),
        "repoDigest": f"{str(i.get('name')).split(':')[0]}@sha256:"
        + hashlib.sha256(str(i.get("name")).encode()).hexdigest(),
    },
}

# Canned results for provider functions (invokes), by token.
CALL_RESULTS: dict[str, Callable[[dict], dict]] = {
    "aws:index/getCallerIdentity:getCallerIdentity": lambda a: {
        "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                                                                "userId": "AIDAEXAMPLE", "id": ACCOUNT},
    "aws:index/getRegion:getRegion": lambda a: {"name": REGION, "region": REGION, "id": REGION},
    "aws:index/getPartition:getPartition": lambda a: {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": lambda a: {
        "names": [f"{REGION}a", f"{REGION}b", f"{REGION}c"], "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
        "id": REGION},
    "aws:ec2/getAmi:getAmi": lambda a: {"id": "ami-0123456789abcdef0", "imageId": "ami-0123456789abcdef0",
                                        "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101",
                                        "architecture": "x86_64", "rootDeviceName": "/dev/sda1"},
    "aws:ec2/getVpc:getVpc": lambda a: {"id": a.get("id") or "vpc-0a1b2c3d4e5f60708", "cidrBlock": "172.31.0.0/16"},
    "aws:ec2/getSubnets:getSubnets": lambda a: {"ids": ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"],
                                                "id": "subnets"},
    "aws:ec2/getSubnet:getSubnet": lambda a: {"id": a.get("id") or "subnet-0a1b2c3d4e5f60001",
                                              "availabilityZone": f"{REGION}a", "vpcId": "vpc-0a1b2c3d4e5f60708"},
    "aws:route53/getZone:getZone": lambda a: {
        "id": a.get("zoneId") or "Z0123456789ABCDEFGHIJ", "zoneId": a.get("zoneId")
                                              or "Z0123456789ABCDEFGHIJ", "name": a.get("name") or "example.com"},
    "aws:iam/getPolicyDocument:getPolicyDocument": lambda a: {"json": json.dumps(_policy_doc(a)), "id": "policy"},
}


def _policy_doc(args: dict) -> dict:
    statements = []
    for s in args.get("statements") or []:
        st: dict[str, Any] = {"Effect": s.get("effect", "Allow")}
        if s.get("actions"):
            st["Action"] = s["actions"]
        if s.get("resources"):
            st["Resource"] = s["resources"]
        for p in s.get("principals") or []:
            st["Principal"] = {p["type"]: p["identifiers"]}
        for c in s.get("conditions") or []:
            st.setdefault("Condition", {}).setdefault(c["test"], {})[c["variable"]] = c["values"]
        statements.append(st)
    return {"Version": "2012-10-17", "Statement": statements}


# ------------------------------------------------------------------ records


def unwrap(value: Any, path: str = "", secret_paths: list[str] | None = None) -> Any:
    """Strip Pulumi's secret sentinels, recording where they were."""
    if rpc.is_rpc_secret(value):
        if secret_paths is not None:
            secret_paths.append(path)
        return unwrap(rpc.unwrap_rpc_secret(value), path, secret_paths)
    if isinstance(value, dict):
        return {k: unwrap(v, f"{path}.{k}" if path else k, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v, f"{path}[{i}]", secret_paths) for i, v in enumerate(value)]
    return value


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]  # wire (camelCase) names, secrets unwrapped
    raw_inputs: dict[str, Any]  # as the engine saw them, secret sentinels intact
    secret_paths: list[str]
    parent: str
    protect: bool = False
    retain_on_delete: bool = False
    provider: str = ""
    delete_before_replace: bool = False
    dependencies: list[str] = field(default_factory=list)  # URNs: depends_on and the inputs' sources
    ignore_changes: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    additional_secret_outputs: list[str] = field(default_factory=list)

    def is_secret(self, path: str) -> bool:
        """Whether the input at ``path`` (or a value containing it) was a Pulumi secret."""
        return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in self.secret_paths)


@dataclass
class Rendered:
    stack: str
    config: dict[str, Any]
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)  # pulumi.log.warn messages

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one {typ} {name or ''}, found {[r.name for r in found]}")
        return found[0]

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one resource named {name}, found {len(found)}")
        return found[0]

    @property
    def types(self) -> list[str]:
        return sorted({r.type for r in self.resources})


class _WarningLog(logging.Logger):
    """The mock engine's logger: keeps ``pulumi.log.warn`` messages, which a preview would print."""

    def __init__(self, sink: list[str]):
        super().__init__("openhands.render")
        self.sink = sink

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.sink.append(str(msg))


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, stack: str, stack_outputs: Mapping[str, Mapping[str, Any]]):
        self.stack = stack
        self.stack_outputs = stack_outputs

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            ref = args.inputs.get("name") or args.name
            if ref not in self.stack_outputs:
                raise ValueError(f"no mocked outputs for stack reference {ref!r}")
            state["outputs"] = dict(self.stack_outputs[ref])
            state["secretOutputNames"] = []
            return ref, state
        extra = RESOURCE_OUTPUTS.get(args.typ)
        if extra:
            state.update(extra(args.name, state))
        if args.typ.startswith("aws:") and "arn" not in state:
            service = args.typ.split(":")[1].split("/")[0]
            state["arn"] = _arn(service, args.name)
        if args.typ.startswith("kubernetes:") and isinstance(state.get("metadata"), dict):
            state["metadata"] = {"name": args.name, **state["metadata"]}
        rid = state.pop("id", None) or f"{args.name}-id"
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        fn = CALL_RESULTS.get(args.token)
        if fn is None:
            raise NotImplementedError(f"render harness has no mock for invoke {args.token}")
        return fn(dict(args.args))


class _Monitor(_mocks.MockMonitor):
    """Records what ``MockResourceArgs`` leaves out: options, parent, raw inputs."""

    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.records: list[Resource] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.object)  # secrets stay wrapped
            secret_paths: list[str] = []
            inputs = unwrap(raw, "", secret_paths)
            self.records.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    custom=bool(request.custom),
                    inputs=inputs,
                    raw_inputs=raw,
                    secret_paths=secret_paths,
                    parent=request.parent,
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    provider=request.provider,
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    dependencies=list(request.dependencies),
                    ignore_changes=list(request.ignoreChanges),
                    replace_on_changes=list(request.replaceOnChanges),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                )
            )
        return response


# ------------------------------------------------------------------ config


def set_config_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set (value None: remove) the dotted key, as `pulumi config set --path` would. ConfigError on a bad key."""
    from components.config import ConfigError

    key, _, rest = dotted.partition(".")
    full = key if ":" in key else f"{NAMESPACE}:{key}"
    parts = rest.split(".") if rest else []
    if not re.fullmatch(r"([A-Za-z0-9_-]+:)?[A-Za-z0-9_-]+", key) or any(not p for p in parts):
        raise ConfigError(
            f"cannot set {dotted!r}: a key is a name or a dotted path of names, e.g. tenants or docker.httpsPort"
        )
    if not rest:
        if value is None:
            cfg.pop(full, None)
        else:
            cfg[full] = value
        return
    node = cfg.setdefault(full, {})
    walked = full
    for p in parts[:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(p, {})
        walked += "." + p
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set {dotted!r}: {walked} is {node!r}, not an object")
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _wire(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"secure"}:
        raise ValueError("stack files in this repo cannot hold `secure:` values offline; pass secrets= to render()")
    return value if isinstance(value, str) else json.dumps(value)


# ------------------------------------------------------------------ render


def render(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    stack_outputs: Mapping[str, Mapping[str, Any]] | None = None,
    project: str = NAMESPACE,
    stack_path: Path | None = None,
    program: Callable[[], Mapping[str, Any]] | None = None,
) -> Rendered:
    """Render a stack offline.

    ``overrides`` and ``secrets`` take dotted keys in the project namespace
    (``"tenants"``, ``"docker.httpsPort"``) or full keys (``"aws:region"``); a value of
    None removes the key. ``secrets`` are marked secret, as ``pulumi config set --secret``
    would. ``config`` replaces the stack file entirely. ``stack_outputs`` mocks
    StackReferences by name. ``stack_path`` reads another stack file than
    ``stacks/Pulumi.<stack>.yaml``. ``program`` renders another program function than the
    package's ``components.program.run`` (tests render hand-written violations). Raises ConfigError
    for bad config, with nothing registered (``registered_before(exc)`` is empty). ``Rendered.warnings``
    holds what the program sent to ``pulumi.log.warn`` (a preview would show it).
    """
    registered: list[Resource] = []  # what the program registered, even when it raised
    try:
        return _render(stack, overrides, secrets, config, stack_outputs, project, stack_path, program, registered)
    except Exception as exc:
        exc.registered = registered  # type: ignore[attr-defined]  # see registered_before()
        raise


def registered_before(exc: BaseException) -> list[Resource]:
    """What a render that raised ``exc`` had registered (a ConfigError must leave it empty)."""
    return list(getattr(exc, "registered", []))


def _render(
    stack: str,
    overrides: Mapping[str, Any] | None,
    secrets: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    stack_outputs: Mapping[str, Mapping[str, Any]] | None,
    project: str,
    stack_path: Path | None,
    program: Callable[[], Mapping[str, Any]] | None,
    registered: list[Resource],
) -> Rendered:
    cfg = dict(config) if config is not None else load_stack_config(stack, stack_path)
    secret_keys: list[str] = []
    for dotted, value in (overrides or {}).items():
        set_config_path(cfg, dotted, value)
    for dotted, value in (secrets or {}).items():
        set_config_path(cfg, dotted, value)
        key = dotted.split(".")[0]
        secret_keys.append(key if ":" in key else f"{NAMESPACE}:{key}")

    # Pulumi's mocks run on the thread's current event loop. A caller that used asyncio.run() before (a load
    # client, say) left none set, and asyncio then refuses to make one: give the render its own.
    if threading.current_thread() is threading.main_thread():
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = _Mocks(stack, stack_outputs or {})
    monitor = _Monitor(mocks)
    monitor.records = registered
    warnings: list[str] = []
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor,
                             logger=_WarningLog(warnings))
    pulumi.runtime.set_all_config({k: _wire(v) for k, v in cfg.items()}, secret_keys)

    if program is None:
        from components.program import run as program

    result = Rendered(stack=stack, config=cfg, warnings=warnings)

    @pulumi.runtime.test
    def _run():
        exports = program()
        names = list(exports)

        def collect(values: list[Any]) -> None:
            result.outputs.update(dict(zip(names, values, strict=True)))

        async def secretness() -> None:
            for n in names:
                out = pulumi.Output.from_input(exports[n])
                if await out.is_secret():
                    result.secret_outputs.add(n)

        return pulumi.Output.all(*[exports[n] for n in names]).apply(collect).apply(
            lambda _: pulumi.Output.from_input(secretness())
        )

    try:
        _run()
    finally:
        pulumi.runtime.set_all_config({}, [])
    result.resources = monitor.records
    return result


def imported_sdks() -> list[str]:
    return [m for m in PROVIDER_SDKS if m in sys.modules]


def imported_sdks_for(stack: str) -> list[str]:
    """The provider SDKs a fresh interpreter loads to render ``stack``.

    A subprocess, because this process may already hold SDKs other renders imported."""
    import subprocess

    code = (f"from openhands_cli.render import render, imported_sdks; render({stack!r}); "
            "print(','.join(imported_sdks()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"rendering {stack} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1].split(",")


def assumed_stack_outputs(stack: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Stand-in outputs of the stack that ``stack`` promotes from, for offline renders.

    ``openhands check -s prod`` has no dev state to read. This assumes dev runs the image in
    its own stack file under this code's contract version, which is what a successful
    ``pulumi up -s dev`` of the same commit exports; for a stack file given by ``path``, that
    its source runs the contract's default image. Empty when ``stack`` does not promote.
    """
    promo = load_stack_config(stack, path).get(f"{NAMESPACE}:promotion")
    if not isinstance(promo, dict) or not promo.get("fromStack"):
        return {}
    source = str(promo["fromStack"])
    image = contract.DEFAULT_IMAGE
    if path is None:
        try:
            image = load_stack_config(source.rsplit("/", 1)[-1]).get(f"{NAMESPACE}:image", image)
        except FileNotFoundError:
            pass
    return {source: {deployment.IMAGE: image, deployment.CONTRACT_VERSION: contract.CONTRACT_VERSION}}


# ------------------------------------------------------------------ the `render` command


def _masked(value: Any, path: str, res: Resource) -> Any:
    if path and res.is_secret(path):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _masked(v, f"{path}.{k}" if path else k, res) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, f"{path}[{i}]", res) for i, v in enumerate(value)]
    return value


def main(argv: list[str] | None = None) -> int:
    """``openhands render -s STACK [--json]``: what the program would register, offline (no engine,
    no cloud): a line per resource, or with ``--json`` each resource's inputs, secrets masked."""
    import argparse

    from components.config import ConfigError

    parser = argparse.ArgumentParser(prog="openhands render", description=main.__doc__.split("\n")[0])
    parser.add_argument("-s", "--stack", default="local", help="stack name, stacks/Pulumi.<stack>.yaml")
    parser.add_argument("--json", action="store_true", help="print every resource's inputs (secrets masked)")
    args = parser.parse_args(argv)
    try:
        rendered = render(args.stack, stack_outputs=assumed_stack_outputs(args.stack))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in rendered.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        doc = [{"type": r.type, "name": r.name, "inputs": _masked(r.inputs, "", r)} for r in rendered.resources]
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        for r in rendered.resources:
            print(f"{r.type}  {r.name}")
        print(f"{len(rendered.resources)} resources", file=sys.stderr)
    return 0
