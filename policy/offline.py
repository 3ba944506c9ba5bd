"""Pulumi's policy analyzer without the engine: what ``pulumi preview --policy-pack policy`` would report.

``run_policies(resources, config)`` takes rendered resources (``openhands_cli.render.Resource``: type,
name, URN, the inputs with secret sentinels, the options) and a pack config as ``read_policy_config``
parses it, and runs every policy of the pack on what the engine would hand it:

1. each resource becomes the ``AnalyzeRequest`` the engine sends the pack (``analyze_request``: wire
   names, secrets as secret envelopes, numbers as floats, and only the options the protocol carries:
   protect and additionalSecretOutputs, no retainOnDelete);
2. which is read the way pulumi-policy's analyzer reads it (``validation_args``: secrets unwrapped and
   unmarked);
3. every resource policy runs on each resource and every stack policy once on all of them, at the
   enforcement level the config gives it, with the config's properties.

This is the one emulation: ``python -m components check`` reports through it, and tests/policy checks
it against pulumi-policy's own servicer. It imports nothing from ``components`` but the contract (through
the policies), so it runs wherever the pack does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

from policy import POLICIES

PACK_DIR = Path(__file__).resolve().parent
LEVELS = ("advisory", "mandatory", "remediate", "disabled")

# A parsed pack config: policy name (or "all") -> (enforcement level or None, config properties).
PolicyConfig = dict[str, tuple[str | None, dict[str, Any]]]


class RenderedResource(Protocol):
    """What the analyzer needs of a rendered resource (``openhands_cli.render.Resource`` has it)."""

    type: str
    name: str
    urn: str
    raw_inputs: dict[str, Any]  # as the engine saw them, secret sentinels intact
    parent: str
    provider: str
    protect: bool
    delete_before_replace: bool
    dependencies: list[str]
    ignore_changes: list[str]
    additional_secret_outputs: list[str]


@dataclass
class Violation:
    policy: str
    level: str
    resource: str
    type: str
    urn: str
    message: str


# --------------------------------------------------------------------------- pack config


def default_config_file(stack: str) -> Path | None:
    """``policy/config.<stack>.json`` if the stack has one (prod does), else the pack's defaults."""
    path = PACK_DIR / f"config.{stack}.json"
    return path if path.exists() else None


def read_policy_config(path: Path | None, names: Sequence[str]) -> PolicyConfig:
    """Parse a ``--policy-pack-config`` file the way the CLI reads it: ``{"all": level, name: level |
    {"enforcementLevel": level, ...properties}}``. Unknown names and levels are errors."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read policy config {path}: {exc}") from None
    out: PolicyConfig = {}
    for key, value in raw.items():
        if key != "all" and key not in names:
            raise ValueError(f"policy config {path}: unknown policy {key!r}; policies: {', '.join(names)}")
        if isinstance(value, str):
            level, props = value, {}
        elif isinstance(value, dict):
            props = dict(value)
            level = props.pop("enforcementLevel", None)
        else:
            raise ValueError(f"policy config {path}: {key!r} must be a level or an object")
        if level is not None and level not in LEVELS:
            raise ValueError(f"policy config {path}: {key!r} has level {level!r}; allowed: {', '.join(LEVELS)}")
        out[key] = (level, props)
    return out


def effective_level(policy: Any, config: PolicyConfig) -> str:
    level = config.get(policy.name, (None, {}))[0] or config.get("all", (None, {}))[0]
    if level is None:
        level = policy.enforcement_level.value if policy.enforcement_level is not None else "advisory"
    return "mandatory" if level == "remediate" else level


# --------------------------------------------------------------------------- engine-shaped requests


def _plain(value: Any) -> Any:
    """What survives the trip through a protobuf Struct (resource refs and assets become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _struct(raw_inputs: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update(_plain(raw_inputs))
    return struct


def analyze_request(r: RenderedResource, by_urn: Mapping[str, RenderedResource]) -> Any:
    """The ``AnalyzeRequest`` the engine sends the policy pack for ``r`` before it acts on it.

    As pulumi 3.276 builds it (``pkg/resource/deploy/step_generator.go`` ``analyzeAll``, marshalled by
    ``pkg/resource/plugin/analyzer_plugin.go`` ``Analyze``/``marshalResourceOptions``): the inputs with
    secrets kept as secret envelopes, the URN's name, and the options protect, ignoreChanges,
    deleteBeforeReplace(+Defined), additionalSecretOutputs, customTimeouts and parent, plus the
    provider resource and its inputs. The protocol has no retainOnDelete, so a policy never sees it.
    Offline differences: the engine sends the inputs after the provider's Check (which may add
    defaults), no aliases or custom timeouts are recorded here (no model sets them), and a default
    provider (one the program never registered) is not sent."""
    from pulumi.runtime.proto import analyzer_pb2

    options = analyzer_pb2.AnalyzerResourceOptions(
        protect=r.protect,
        ignoreChanges=list(r.ignore_changes),
        deleteBeforeReplace=r.delete_before_replace,
        deleteBeforeReplaceDefined=r.delete_before_replace,  # not recorded: an explicit False reads as unset
        additionalSecretOutputs=list(r.additional_secret_outputs),
        customTimeouts=analyzer_pb2.AnalyzerResourceOptions.CustomTimeouts(),
        parent=r.parent if r.parent in by_urn else "",
    )
    request = analyzer_pb2.AnalyzeRequest(
        type=r.type, properties=_struct(r.raw_inputs), urn=r.urn, name=r.name, options=options
    )
    provider = by_urn.get(r.provider.rsplit("::", 1)[0]) if r.provider else None
    if provider is not None:
        request.provider.CopyFrom(
            analyzer_pb2.AnalyzerProviderResource(
                type=provider.type, properties=_struct(provider.raw_inputs), urn=provider.urn, name=provider.name
            )
        )
    return request


def validation_args(request: Any, config: Mapping[str, Any] | None) -> Any:
    """The ``ResourceValidationArgs`` pulumi-policy 1.21.0's analyzer hands each policy for ``request``
    (``_PolicyAnalyzerServicer.Analyze``): props deserialized with secrets unwrapped and unmarked, the
    options and provider read from the request, and the policy's config."""
    from google.protobuf import json_format
    from pulumi_policy import ResourceValidationArgs
    from pulumi_policy.deserialize import deserialize_properties
    from pulumi_policy.policy import _PolicyAnalyzerServicer
    from pulumi_policy.proxy import unknown_checking_proxy

    props = unknown_checking_proxy(deserialize_properties(json_format.MessageToDict(request.properties)))
    # Both helpers read only the request; calling them unbound keeps this in step with the servicer.
    opts = _PolicyAnalyzerServicer._get_resource_options(None, request)  # type: ignore[arg-type]
    provider = _PolicyAnalyzerServicer._get_provider_resource(None, request)  # type: ignore[arg-type]
    return ResourceValidationArgs(
        request.type, props, request.urn, request.name, opts, provider, dict(config or {}), {}
    )


# --------------------------------------------------------------------------- running the pack


def run_policies(
    resources: Sequence[RenderedResource],
    config: PolicyConfig | None = None,
    policies: Sequence[ResourceValidationPolicy | StackValidationPolicy] | None = None,
) -> tuple[list[Violation], list[dict[str, Any]]]:
    """Every policy (``policies``, default the whole pack) on what the engine would hand it: resource
    policies on each resource's ``analyze_request`` as the analyzer deserializes it, stack policies on
    the same props and options (the engine's AnalyzeStack sends each resource's outputs; offline the
    inputs stand in for them). Returns the violations, each with its level, and per policy
    ``{"name", "level", "violations"}``. Provider resources are not analyzed; a policy that raises is
    one mandatory violation, as it fails the engine's analyze call."""
    from pulumi_policy import PolicyResource, StackValidationArgs

    config = config or {}
    by_urn = {r.urn: r for r in resources}
    analyzed = [r for r in resources if not r.type.startswith("pulumi:providers:")]
    prepared = [(r, analyze_request(r, by_urn)) for r in analyzed]

    violations: list[Violation] = []
    summary: list[dict[str, Any]] = []

    def run(result: Any) -> None:
        if asyncio.iscoroutine(result) or hasattr(result, "__await__"):
            asyncio.run(result)

    for policy in POLICIES if policies is None else policies:
        level = effective_level(policy, config)
        props = {**config.get("all", (None, {}))[1], **config.get(policy.name, (None, {}))[1]}
        entry = {"name": policy.name, "level": level, "violations": 0}
        summary.append(entry)
        if level == "disabled":
            continue

        def reporter(
            r_name: str,
            r_type: str,
            r_urn: str,
            name: str = policy.name,
            level: str = level,
            entry: dict[str, Any] = entry,
        ) -> Callable[..., None]:
            def report(message: str, urn: str | None = None) -> None:
                res = by_urn.get(urn or "") if urn else None
                violations.append(
                    Violation(
                        name, level, res.name if res else r_name, res.type if res else r_type, urn or r_urn, message
                    )
                )
                entry["violations"] += 1

            return report

        try:
            if isinstance(policy, ResourceValidationPolicy):
                for r, request in prepared:
                    run(policy.validate(validation_args(request, props), reporter(r.name, r.type, r.urn)))
            else:
                stack = []
                for _, request in prepared:
                    a = validation_args(request, props)
                    stack.append(
                        PolicyResource(a.resource_type, a.props, a.urn, a.name, a.opts, a.provider, None, [], {})
                    )
                index = {pr.urn: pr for pr in stack}
                for pr, (r, _) in zip(stack, prepared, strict=True):
                    pr.parent = index.get(r.parent)
                    pr.dependencies = [index[u] for u in r.dependencies if u in index]
                run(policy.validate(StackValidationArgs(stack, props, {}), reporter("", "stack", "")))
        except Exception as exc:  # noqa: BLE001 - a crashing policy fails the engine's analyze call too
            violations.append(
                Violation(policy.name, "mandatory", "", "policy", "", f"policy raised {type(exc).__name__}: {exc}")
            )
            entry["violations"] += 1
    return violations, summary
