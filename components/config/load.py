"""Reading the stack's ``openhands:*`` config and parsing it: one ConfigError naming every bad key."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

import pulumi
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from components import contract
from components.config.errors import MODELS, NAMESPACE, ConfigError, namespace_typos
from components.config.stack import SECRET_FIELDS, StackConfig, is_prod, warnings
from components.config.values import PATTERN_WORDS, image_issues

# --------------------------------------------------------------------------- loading



def _raw() -> tuple[dict[str, Any], set[str]]:
    """All ``openhands:*`` config (as Pulumi hands it to the program) and the secret keys."""
    from pulumi.runtime import config as rc

    merged: dict[str, Any] = {**rc.get_config_env(), **rc.CONFIG.get()}
    secret = set(rc._SECRET_KEYS.get()) | set(rc.get_config_secret_keys_env())
    typos = namespace_typos(merged)
    if typos:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {t}" for t in typos))
    prefix = NAMESPACE + ":"
    values = {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}
    return values, {k[len(prefix) :] for k in secret if k.startswith(prefix)}


def _decode(value: Any) -> Any:
    # Pulumi passes every value as a string; objects, lists, numbers and booleans as JSON.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _walk_model(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings class found at ``loc`` (to list the keys it allows)."""
    import typing

    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return model if part == loc[-1] else None
        model = nested_model(field.annotation, typing)
    return model


def nested_model(annotation: Any, typing: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg, typing)
        if found:
            return found
    return None


def _key(loc: tuple[Any, ...]) -> str:
    out = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # Validators of defaults report the Python name (data_volume_iops); show the config key.
            part = to_camel(part) if part in _FIELD_NAMES else part
            out += ("." if i else "") + str(part)
    return out


def _field_names(model: type[BaseModel], seen: set[str]) -> set[str]:
    import typing

    names = set()
    for name, f in model.model_fields.items():
        if "_" in name:
            names.add(name)
        found = nested_model(f.annotation, typing)
        if found and found.__name__ not in seen:
            seen.add(found.__name__)
            names |= _field_names(found, seen)
    return names


def format_errors(errors: list[dict[str, Any]], stack: str) -> str:
    lines = [f"invalid configuration for stack {stack!r}:"]
    for err in errors:
        # Drop pydantic's validator tags ("function-after[_tenant(), str]"): they are no config keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and re.fullmatch(r"[a-z-]+\[.*\]", p)))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _walk_model(StackConfig, loc[:-1]) if len(loc) > 1 else StackConfig
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            msg += f"; allowed: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "is required"
        elif kind == "string_pattern_mismatch":
            words, example = PATTERN_WORDS.get(err.get("ctx", {}).get("pattern", ""), ("", ""))
            got = err.get("input")
            msg = f"must be {words}, e.g. {example}" if words else "is not in the expected format"
            if isinstance(got, str):
                msg += f" (got {got if len(got) <= 60 else got[:57] + '...'!r})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind in ("literal_error", "enum"):
                got = err.get("input")
                msg += f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        lines.append(f"  - {_key(loc) if loc else NAMESPACE}: {msg}")
    return "\n".join(lines)


_FIELD_NAMES = _field_names(StackConfig, set())


def parse(
    values: Mapping[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(), stack: str = "?"
) -> StackConfig:
    """Parse decoded ``openhands:*`` values (keys without the namespace) into a StackConfig."""
    problems: list[str] = []
    for key in SECRET_FIELDS:
        if key in values and key not in secret_keys:
            problems.append(
                f"  - {NAMESPACE}:{key}: holds keys but is stored in plain text; set it with "
                f"`pulumi config set --secret --path '{key}.<tenant>.sessionApiKey' ...`"
            )
    k8s = _decode(values.get("kubernetes"))  # Pulumi hands objects over as JSON strings
    if isinstance(k8s, dict) and k8s.get("kubeconfig") and "kubernetes" not in secret_keys:
        problems.append(
            f"  - {NAMESPACE}:kubernetes.kubeconfig: a kubeconfig is a credential; set it with "
            "`pulumi config set --secret --path kubernetes.kubeconfig < ~/.kube/config`"
        )
    modal = _decode(values.get("modal"))
    if isinstance(modal, dict) and modal.get("tokenSecret") and "modal" not in secret_keys:
        problems.append(
            f"  - {NAMESPACE}:modal.tokenSecret: a Modal token is a credential; set it with "
            "`pulumi config set --secret --path modal.tokenSecret ...`"
        )
    decoded = {k: _decode(v) for k, v in values.items()}
    model = decoded.get("model")
    if isinstance(model, str) and model in MODELS:
        # Another model's block is reported under its own key, and its contents are not validated.
        for other in MODELS:
            if other != model and decoded.get(other) is not None:
                del decoded[other]
                problems.append(
                    f"  - {NAMESPACE}:{other}: not used by model {model!r}; remove it (a stack deploys one model)"
                )
    try:
        cfg = StackConfig.model_validate(decoded)
    except ValidationError as exc:
        message = format_errors(exc.errors(), stack)
        if problems:
            message += "\n" + "\n".join(problems)
        raise ConfigError(message) from None
    # Model settings may check the whole stack (e.g. ECS: Fargate cpu/memory pairs) and the disk
    # (key files, the Modal tool file): all before the program registers anything.
    check = getattr(cfg.settings, "check_stack", None)
    if check is not None:
        problems += check(cfg)
    if is_prod(cfg, stack):
        for key, ref in cfg.images():
            unpinned, _ = image_issues(ref)
            if unpinned:
                problems.append(
                    f"  - {NAMESPACE}:{key}: {ref!r} {unpinned}; a prod stack deploys pinned images only: use a "
                    f"version tag or a digest, e.g. {contract.DEFAULT_IMAGE}"
                )
    if problems:
        raise ConfigError(f"invalid configuration for stack {stack!r}:\n" + "\n".join(problems))
    return cfg



def load() -> StackConfig:
    """Read and validate the stack's ``openhands:*`` config. Raises ConfigError.

    Warnings (see ``warnings``) go to ``pulumi.log.warn``: a preview shows them."""
    stack = pulumi.get_stack()
    # Pulumi read the stack file as YAML 1.1 and kept quiet about repeated keys, `yes`, `0443`, ...:
    # read the same file strictly first (components/config/stackfile.py), so those are errors here too.
    from components.config import stackfile

    tracked = stackfile.tracked_file(stack)
    if tracked is not None:
        stackfile.read_config(tracked)
    values, secret_keys = _raw()
    cfg = parse(values, secret_keys, stack)
    for message in warnings(cfg, stack):
        pulumi.log.warn(message)
    return cfg
