"""``openhands check -s <stack>``: render a stack offline, run the policy pack and the validators.

No cloud credentials, no Pulumi CLI. The stack is rendered through the mock runtime
(``openhands_cli.render``) and the policy pack (the ``policy`` package) runs on it through
``policy.offline``, Pulumi's analyzer without the engine: every resource becomes the
``AnalyzeRequest`` the engine sends the pack (wire names, secrets as secret envelopes, numbers as
floats, and only the options the protocol carries: protect and additionalSecretOutputs, no
retainOnDelete), read the way pulumi-policy's analyzer reads it, and every policy runs at the
enforcement level the pack config gives it. The real validators run where they are installed:
kubernetes-validate (strict), botocore's ECS model, ``cloud-init schema`` and ``caddy
adapt``/``validate``; a missing one is skipped with a note.

Exit status: 0 clean, 1 a mandatory violation or a validator error, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

import policy
from components import contract, deployment
from components.config import NAMESPACE, ConfigError
from components.config.stackfile import StackLoader, yaml_error
from openhands_cli import render as harness
from policy.offline import PolicyConfig, Violation, default_config_file, read_policy_config, run_policies

# --------------------------------------------------------------------------- report records


@dataclass
class ValidatorResult:
    validator: str
    resource: str
    type: str
    ok: bool
    message: str = ""
    urn: str = ""


@dataclass
class Report:
    stack: str
    model: str
    policy_config: str | None
    resources: int = 0
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    policies: list[dict[str, Any]] = field(default_factory=list)
    validators: dict[str, str] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    validator_results: list[ValidatorResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the program's pulumi.log.warn messages

    @property
    def mandatory(self) -> list[Violation]:
        return [v for v in self.violations if v.level == "mandatory"]

    @property
    def advisory(self) -> list[Violation]:
        return [v for v in self.violations if v.level == "advisory"]

    @property
    def validator_errors(self) -> list[ValidatorResult]:
        return [r for r in self.validator_results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.mandatory and not self.validator_errors

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "model": self.model,
            "ok": self.ok,
            "policyConfig": self.policy_config,
            "summary": {
                "resources": self.resources,
                "mandatoryViolations": len(self.mandatory),
                "advisoryViolations": len(self.advisory),
                "validatorErrors": len(self.validator_errors),
                "validatorsRun": sum(1 for _ in self.validator_results),
            },
            "tenants": self.tenants,
            "shared": self.shared,
            "policies": self.policies,
            "validators": self.validators,
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------- validators


def _k8s_versions() -> list[str]:
    import kubernetes_validate

    latest = kubernetes_validate.latest_version()
    mod = sys.modules.get("components.kubernetes")
    claimed = getattr(mod, "K8S_VERSIONS", None) or getattr(mod, "SUPPORTED_K8S_VERSIONS", None)
    versions = [str(v) for v in claimed] if claimed else ["1.30.0", latest]
    return list(dict.fromkeys(versions))


def validate_kubernetes(rendered: harness.Rendered, notes: dict[str, str]) -> Iterator[ValidatorResult]:
    objects = [
        r
        for r in rendered.resources
        if r.custom
        and r.type.startswith("kubernetes:")
        and not r.type.startswith("pulumi:")
        and "kind" in r.inputs
        and "apiVersion" in r.inputs
    ]
    if not objects:
        return
    try:
        import kubernetes_validate
    except ImportError:
        notes["kubernetes-validate"] = "skipped: kubernetes-validate is not installed"
        return
    versions = _k8s_versions()
    notes["kubernetes-validate"] = f"strict, Kubernetes {', '.join(versions)}"
    for r in objects:
        errors = []
        for v in versions:
            try:
                kubernetes_validate.validate(harness.unwrap(r.raw_inputs), v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors = []
                notes["kubernetes-validate"] += f"; no schema for {r.inputs.get('kind')} (custom resource)"
                break
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path) or "(root)"
                errors.append(f"{v}: {path}: {exc.message}")
        yield ValidatorResult("kubernetes-validate", r.name, r.type, not errors, "; ".join(errors), r.urn)


_TASKDEF_KEYS = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "pidMode",
    "ipcMode",
    "runtimePlatform",
    "ephemeralStorage",
    "placementConstraints",
    "proxyConfiguration",
    "inferenceAccelerators",
    "enableFaultInjection",
)


def taskdef_request(inputs: dict[str, Any]) -> dict[str, Any]:
    """Pulumi TaskDefinition inputs -> the ECS RegisterTaskDefinition request they become."""
    req: dict[str, Any] = {k: inputs[k] for k in _TASKDEF_KEYS if inputs.get(k) is not None}
    for k in ("cpu", "memory"):
        if k in req:
            req[k] = str(int(req[k])) if isinstance(req[k], float) else str(req[k])
    if "ephemeralStorage" in req:
        req["ephemeralStorage"] = {"sizeInGiB": int(req["ephemeralStorage"].get("sizeInGib", 21))}
    req["containerDefinitions"] = json.loads(inputs.get("containerDefinitions") or "[]")
    volumes = []
    for v in inputs.get("volumes") or []:
        vol: dict[str, Any] = {"name": v.get("name")}
        if v.get("hostPath"):
            vol["host"] = {"sourcePath": v["hostPath"]}
        for key in ("efsVolumeConfiguration", "dockerVolumeConfiguration", "fsxWindowsFileServerVolumeConfiguration"):
            if v.get(key):
                vol[key] = _ints(v[key])
        if v.get("configureAtLaunch") is not None:
            vol["configuredAtLaunch"] = v["configureAtLaunch"]
        volumes.append(vol)
    if volumes:
        req["volumes"] = volumes
    if inputs.get("tags"):
        req["tags"] = [{"key": k, "value": str(v)} for k, v in inputs["tags"].items()]
    return req


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def validate_ecs(rendered: harness.Rendered, notes: dict[str, str]) -> Iterator[ValidatorResult]:
    tasks = rendered.of_type("aws:ecs/taskDefinition:TaskDefinition")
    if not tasks:
        return
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        notes["botocore"] = "skipped: botocore is not installed"
        return
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    notes["botocore"] = f"ECS RegisterTaskDefinition (botocore {botocore.__version__})"
    for r in tasks:
        try:
            report = ParamValidator().validate(taskdef_request(r.inputs), shape)
            errors = report.generate_report() if report.has_errors() else ""
        except (ValueError, TypeError, AttributeError) as exc:
            errors = f"cannot build the request: {exc}"
        yield ValidatorResult("botocore", r.name, r.type, not errors, errors, r.urn)


def _user_data(inputs: dict[str, Any]) -> str | None:
    if inputs.get("userData"):
        return str(inputs["userData"])
    if inputs.get("userDataBase64"):
        return base64.b64decode(inputs["userDataBase64"]).decode(errors="replace")
    return None


def validate_cloud_init(rendered: harness.Rendered, notes: dict[str, str]) -> Iterator[ValidatorResult]:
    hosts = [
        r
        for r in rendered.resources
        if r.type in ("aws:ec2/instance:Instance", "aws:ec2/launchTemplate:LaunchTemplate")
    ]
    docs = [(r, _user_data(r.inputs)) for r in hosts]
    docs = [(r, d) for r, d in docs if d]
    if not docs:
        return
    tool = shutil.which("cloud-init")
    if not tool:
        notes["cloud-init"] = "skipped: cloud-init is not installed (apt-get install cloud-init)"
        return
    notes["cloud-init"] = "cloud-init schema"
    with tempfile.TemporaryDirectory() as tmp:
        for r, doc in docs:
            if not doc.lstrip().startswith("#cloud-config"):
                yield ValidatorResult(
                    "cloud-init", r.name, r.type, True, "not #cloud-config; schema not applicable", r.urn
                )
                continue
            path = Path(tmp, f"{r.name}.yaml")
            path.write_text(doc)
            proc = subprocess.run([tool, "schema", "-c", str(path)], capture_output=True, text=True, timeout=60)
            out = (proc.stdout + proc.stderr).strip()
            yield ValidatorResult(
                "cloud-init", r.name, r.type, proc.returncode == 0, "" if proc.returncode == 0 else out[-800:], r.urn
            )


_TLS_FILES = re.compile(r"^(\s*tls\s+)(\S+)\s+(\S+)\s*$", re.M)


def _throwaway_cert(tmp: str) -> tuple[str, str] | None:
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    proc = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=check.invalid",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        capture_output=True,
        timeout=30,
    )
    return (cert, key) if proc.returncode == 0 else None


# The release the `local` proxy image carries; the rendered Caddyfile uses directives of Caddy >= 2.7.
MIN_CADDY = (2, 7)


def caddy_tool() -> str | None:
    """A caddy to validate with: $OPENHANDS_CADDY, else the one scripts/caddy built, else caddy on PATH."""
    if os.environ.get("OPENHANDS_CADDY"):
        return os.environ["OPENHANDS_CADDY"]
    cache = Path(os.environ.get("OPENHANDS_CACHE") or Path.home() / ".cache" / "openhands-deploy") / "caddy-bin"
    built = sorted(cache.glob("*/caddy"))
    return str(built[-1]) if built else shutil.which("caddy")


def caddy_version(tool: str) -> tuple[int, ...]:
    """``caddy version``; a build from the Go module says "unknown", scripts/caddy stamps it beside it."""
    stamp = Path(tool).with_name("VERSION")
    out = stamp.read_text() if stamp.is_file() else subprocess.run(
        [tool, "version"], capture_output=True, text=True, timeout=30).stdout
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(p) for p in found.groups()) if found else (0, 0, 0)


def validate_caddy(rendered: harness.Rendered, notes: dict[str, str]) -> Iterator[ValidatorResult]:
    files = []
    for r in rendered.of_type("docker:index/container:Container"):
        for up in r.inputs.get("uploads") or []:
            if str(up.get("file", "")).endswith("Caddyfile") and up.get("content"):
                files.append((r, str(up["content"])))
    # The `local` proxy boots with the global options; the sites come with its ProxyRoutes.
    for r in rendered.of_type("pulumi-python:dynamic/docker:ProxyRoutes"):
        files.append((r, str(r.inputs.get("caddyfile") or "")))
    if not files:
        return
    tool = caddy_tool()
    if not tool:
        notes["caddy"] = "skipped: no caddy (scripts/caddy builds the proxy's release)"
        return
    if caddy_version(tool) < MIN_CADDY:
        notes["caddy"] = f"skipped: {tool} is older than Caddy 2.7 (scripts/caddy builds the proxy's release)"
        return
    notes["caddy"] = f"caddy adapt + validate ({tool})"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HOME": tmp, "XDG_DATA_HOME": f"{tmp}/data", "XDG_CONFIG_HOME": f"{tmp}/config"}
        for r, text in files:
            if _TLS_FILES.search(text):
                # The rendered cert/key are mock placeholders; validate with a real throwaway pair.
                pair = _throwaway_cert(tmp)
                if pair:
                    cert, key = pair
                    text = _TLS_FILES.sub(lambda m, c=cert, k=key: f"{m.group(1)}{c} {k}", text)
                    notes["caddy"] += " (tls files replaced by a throwaway pair)"
            path = Path(tmp, f"{r.name}.Caddyfile")
            path.write_text(text)
            errors = []
            for cmd in ("adapt", "validate"):
                proc = subprocess.run(
                    [tool, cmd, "--config", str(path), "--adapter", "caddyfile"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                )
                if proc.returncode != 0:
                    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "error" in ln.lower()]
                    errors.append(f"caddy {cmd}: " + (lines[-1] if lines else proc.stderr.strip()[-400:]))
            yield ValidatorResult("caddy", r.name, r.type, not errors, "; ".join(errors), r.urn)


VALIDATORS = (validate_kubernetes, validate_ecs, validate_cloud_init, validate_caddy)


# --------------------------------------------------------------------------- report


def _tenants(cfg: dict[str, Any]) -> list[str]:
    value = cfg.get(f"{NAMESPACE}:tenants", ["default"])
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[") else [value]
    return [str(t) for t in value]


def _tenant_of(r: harness.Resource, by_urn: dict[str, harness.Resource], tenants: list[str]) -> str | None:
    node: harness.Resource | None = r
    while node is not None:
        for t in tenants:
            if node.name == t or node.name.startswith(t + "-"):
                return t
        node = by_urn.get(node.parent)
    # Labels/tags that name the tenant (dev.openhands.tenant, openhands:tenant, ...).
    for bag in (r.inputs.get("tags"), r.inputs.get("labels"), (r.inputs.get("metadata") or {}).get("labels")):
        pairs = (
            bag.items()
            if isinstance(bag, dict)
            else [(x.get("label"), x.get("value")) for x in bag or [] if isinstance(x, dict)]
        )
        for k, v in pairs:
            if "tenant" in str(k).lower() and v in tenants:
                return str(v)
    return None


def _short(typ: str) -> str:
    pkg, _, name = typ.partition(":")
    return f"{pkg} {typ.rsplit(':', 1)[-1]}" if name else typ


def build_report(
    stack: str, rendered: harness.Rendered, config_path: Path | None, config: PolicyConfig, validators: bool = True
) -> Report:
    violations, summary = run_policies(rendered.resources, config)
    notes: dict[str, str] = {}
    results: list[ValidatorResult] = []
    if validators:
        for fn in VALIDATORS:
            results.extend(fn(rendered, notes))
    model = str(rendered.outputs.get(deployment.MODEL) or rendered.config.get(f"{NAMESPACE}:model", "?"))
    report = Report(
        stack=stack,
        model=model,
        policy_config=str(config_path) if config_path else None,
        resources=len(rendered.resources),
        policies=summary,
        validators=notes,
        violations=violations,
        validator_results=results,
    )
    tenants = _tenants(rendered.config)
    by_urn = {r.urn: r for r in rendered.resources}
    owner = {r.urn: _tenant_of(r, by_urn, tenants) for r in rendered.resources}
    by_name = {r.name: r.urn for r in rendered.resources}
    urls = rendered.outputs.get(deployment.URL) or {}
    sections = {t: {"url": urls.get(t) if isinstance(urls, dict) else None} for t in tenants}
    sections[""] = {
        "outputs": {
            k: v
            for k, v in rendered.outputs.items()
            if k not in rendered.secret_outputs and k not in (deployment.URL, deployment.CADDYFILE)
        }
    }
    for key, sec in sections.items():
        mine = [r for r in rendered.resources if (owner[r.urn] or "") == key and r.custom]
        sec["resources"] = dict(sorted(Counter(_short(r.type) for r in mine).items()))
        sec["violations"] = [
            asdict(v)
            for v in violations
            if (owner.get(v.urn) or owner.get(by_name.get(v.resource, ""), None) or "") == key
        ]
        sec["validators"] = [asdict(v) for v in results if (owner.get(v.urn) or "") == key]
    report.shared = sections.pop("")
    report.tenants = sections
    return report


def format_text(report: Report) -> str:
    out = [
        f"stack {report.stack} (model {report.model}): {report.resources} resources; policy config: "
        f"{report.policy_config or 'pack defaults'}"
    ]

    def section(title: str, sec: dict[str, Any]) -> None:
        out.append(title)
        res = ", ".join(f"{k} x{n}" for k, n in sec["resources"].items()) or "none"
        out.append(f"  resources: {res}")
        for k, v in (sec.get("outputs") or {}).items():
            text = json.dumps(v) if not isinstance(v, str) else v
            out.append(f"  output {k}: {text[:120]}")
        if sec["violations"]:
            for v in sec["violations"]:
                msg = v["message"].replace("\n", " ")
                out.append(f"  {v['level'].upper():9} {v['policy']}: {msg}")
        else:
            out.append("  policies: no violations")
        for v in sec["validators"]:
            mark = "ok" if v["ok"] else "ERROR"
            detail = f" {v['message']}" if v["message"] else ""
            out.append(f"  {v['validator']:19} {v['resource']}: {mark}{detail}")

    for tenant, sec in report.tenants.items():
        section(f"tenant {tenant}  {sec.get('url') or '(no url)'}", sec)
    section("shared", report.shared)
    active = [p for p in report.policies if p["level"] != "disabled"]
    levels = Counter(p["level"] for p in active)
    out.append(f"policies: {len(active)} run ({', '.join(f'{n} {lvl}' for lvl, n in sorted(levels.items()))})")
    for name, note in report.validators.items():
        out.append(f"validator {name}: {note}")
    if not report.validators:
        out.append("validators: nothing to validate in this stack")
    for message in report.warnings:
        out.append(f"warning: {message}")
    verdict = "PASS" if report.ok else "FAIL"
    out.append(
        f"result: {verdict} ({len(report.mandatory)} mandatory, {len(report.advisory)} advisory, "
        f"{len(report.validator_errors)} validator errors)"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


def _parse_set(values: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are YAML, read as strictly as stack files. ConfigError names the key."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set wants key=value (a YAML value, empty to remove the key), got {item!r}")
        try:
            out[key] = yaml.load(value, Loader=StackLoader) if value else None  # noqa: S506 - safe loader
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_error(exc, f"--set {key}={value}")) from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openhands check", description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--stack", required=True, help=f"stack in stacks/ ({', '.join(contract.stack_names())})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--policy-config",
        type=Path,
        help="pack config (pulumi --policy-pack-config format); default policy/config.<stack>.json if present",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override config, e.g. tenants='[a,b]' or ecs.domain=example.org (YAML values)",
    )
    parser.add_argument("--no-validators", action="store_true", help="run only the policy pack")
    parser.add_argument(
        "--stack-file",
        type=Path,
        metavar="PATH",
        help="read the stack's config from PATH instead of stacks/Pulumi.<stack>.yaml",
    )
    opts = parser.parse_args(list(argv or []))

    try:
        overrides = _parse_set(opts.set)
        report = check_stack(
            opts.stack,
            overrides=overrides,
            policy_config=opts.policy_config,
            stack_file=opts.stack_file,
            validators=not opts.no_validators,
        )
    except (pulumi.RunError, ValueError, FileNotFoundError) as exc:
        # Config errors (ConfigError is a RunError) and promotion errors: one message, no traceback.
        print(f"check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, default=str) if opts.json else format_text(report))
    return 0 if report.ok else 1


def check_stack(
    stack: str,
    *,
    overrides: dict[str, Any] | None = None,
    policy_config: Path | None = None,
    stack_file: Path | None = None,
    validators: bool = True,
    program: Callable[[], Any] | None = None,
) -> Report:
    """Render ``stack`` and check it: what ``main`` prints. ``program`` renders another program function
    than the package's (tests check hand-written violations with it). Raises ConfigError (a RunError),
    ValueError or FileNotFoundError for bad config, a bad policy config or an unknown stack."""
    config_path = policy_config or default_config_file(stack)
    names = [p.name for p in policy.POLICIES]
    config = read_policy_config(config_path, names)
    outputs = harness.assumed_stack_outputs(stack, stack_file)
    rendered = harness.render(stack, overrides=overrides, stack_outputs=outputs, stack_path=stack_file, program=program)
    report = build_report(stack, rendered, config_path, config, validators=validators)
    report.warnings = list(rendered.warnings)
    return report
