"""Reading a stack file (``Pulumi.<stack>.yaml``) strictly: one clear ConfigError naming file, line and column.

The Pulumi CLI reads stack files as YAML 1.1 and says nothing when that surprises (measured with the
CLI 3.259.0 built by ``scripts/engine``): a repeated key silently keeps the last value, ``yes``/``no``/
``on``/``off`` become booleans, ``0443`` becomes 291, ``1:30`` becomes 90, ``0x10`` becomes 16, and a
date becomes the text ``2026-01-01 00:00:00 +0000 UTC``. It also reads ``model:`` (no namespace) as
``openhands:model``, so both spellings in one file are a repeated key too. Each of these is refused
here, and a file the program reads through the real CLI is checked the same way (``config.load``), so
``pulumi preview``, ``openhands check`` and the tests agree.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from components import contract
from components.config.errors import NAMESPACE, ConfigError, namespace_typos

# What a stack file may hold at the top level (Pulumi's ProjectStack); anything else is a typo
# Pulumi would ignore (`confg:` means no config at all).
STACK_FILE_KEYS = ("config", "environment", "secretsprovider", "encryptedkey", "encryptionsalt")


class StackLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1, like Pulumi's), refusing what YAML 1.1 reads surprisingly.

    Refused, each with its line: a duplicate key (the last one would silently win), ``yes``/``no``/
    ``on``/``off`` booleans, octal-, hex-, base-60- or underscore-looking numbers, and dates.
    """


def _problem(node: yaml.Node, text: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, text, node.start_mark)


def _mapping(loader: StackLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    # Only keys written in this mapping count: one that overrides a merged (<<: *anchor) key is fine.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: the base constructor reports it
        if first is not None:
            raise _problem(key_node, f"duplicate key {key!r} (first at line {first}); keep one")
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


def _bool(loader: StackLoader, node: yaml.ScalarNode) -> bool:
    value = loader.construct_scalar(node)
    if value.lower() not in ("true", "false"):
        raise _problem(
            node,
            f"{value!r} is read as {str(yaml.SafeLoader.construct_yaml_bool(loader, node)).lower()} by Pulumi "
            f"(YAML 1.1) but as a string by YAML 1.2 tools; write true or false, or quote it ('{value}') if you "
            "mean the word",
        )
    return value.lower() == "true"


def _int(loader: StackLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_scalar(node)
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", value):
        return int(value)
    as_11 = yaml.SafeLoader.construct_yaml_int(loader, node)
    if re.fullmatch(r"[-+]?0[0-7_]+", value):
        why = f"{value} looks octal: Pulumi (YAML 1.1) reads it as {as_11}"
        hint = f"write {int(value.replace('_', ''))}, or quote it"
    elif ":" in value:
        why = f"{value} is the base-60 number {as_11} to Pulumi (YAML 1.1)"
        hint = f"quote it ('{value}') if you mean text"
    else:
        why = f"{value} is {as_11} to Pulumi (YAML 1.1) but not a number to YAML 1.2 tools"
        hint = f"write {as_11}, or quote it"
    raise _problem(node, f"{why}; {hint}")


def _float(loader: StackLoader, node: yaml.ScalarNode) -> float:
    value = loader.construct_scalar(node)
    if ":" in value or "_" in value:
        raise _problem(node, f"{value} is read differently by YAML 1.1 (Pulumi) and 1.2; write a plain number, "
                             "or quote it")
    return yaml.SafeLoader.construct_yaml_float(loader, node)


def _timestamp(loader: StackLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    raise _problem(node, f"{value} is a date to Pulumi (YAML 1.1), which passes it on as e.g. "
                         f"'{value[:10]} 00:00:00 +0000 UTC'; quote it ('{value}') if you mean text")


StackLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
StackLoader.add_constructor("tag:yaml.org,2002:bool", _bool)
StackLoader.add_constructor("tag:yaml.org,2002:int", _int)
StackLoader.add_constructor("tag:yaml.org,2002:float", _float)
StackLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def yaml_error(exc: yaml.YAMLError, where: str) -> str:
    """One line for a YAML error: where, line and column, what, and a hint for tabs."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = ", ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x) or str(exc)
    if "\\t" in what or "\t" in what:
        what += " (YAML does not allow tabs for indentation; use spaces)"
    return f"{where}: {at}{what}"


def full_key(key: str) -> str:
    """The key Pulumi gives the program: a key without a namespace is in the project's (``openhands``)."""
    return key if ":" in key else f"{NAMESPACE}:{key}"


def _same_key_twice(text: str, path: Path) -> None:
    """``model`` and ``openhands:model`` in one config block: Pulumi keeps one of them silently."""
    root = yaml.compose(text, Loader=StackLoader)
    if not isinstance(root, yaml.MappingNode):
        return
    for key_node, value in root.value:
        if getattr(key_node, "value", None) != "config" or not isinstance(value, yaml.MappingNode):
            continue
        seen: dict[str, int] = {}
        for k, _ in value.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            name, line = full_key(str(k.value)), k.start_mark.line + 1
            if name in seen:
                raise ConfigError(
                    f"stack file {path}: line {line}, column {k.start_mark.column + 1}: {k.value!r} is {name} "
                    f"again (first at line {seen[name]}; a key without a namespace is in '{NAMESPACE}'); keep one"
                )
            seen[name] = line


def read_config(path: Path) -> dict[str, Any]:
    """The ``config:`` block of the stack file at ``path``, keys as written. Raises ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read stack file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"stack file {path} is not UTF-8 text") from None
    try:
        doc = yaml.load(text, Loader=StackLoader)  # noqa: S506 - a SafeLoader subclass
        _same_key_twice(text, path)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error(exc, f"stack file {path}")) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"stack file {path}: is a {type(doc).__name__}, not a mapping; it holds `config:` with "
            f"{NAMESPACE}:<key> entries"
        )
    for key in doc:
        if key not in STACK_FILE_KEYS:
            near = difflib.get_close_matches(str(key), STACK_FILE_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"stack file {path}: unknown top-level key {key!r}{hint}; allowed: {', '.join(STACK_FILE_KEYS)}"
            )
    config = doc.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"stack file {path}: `config` is a {type(config).__name__}, not a mapping of "
            f"{NAMESPACE}:<key>: <value>"
        )
    for key in config:
        if not isinstance(key, str) or not key.strip(":") or key.startswith(":") or key.endswith(":"):
            raise ConfigError(f"stack file {path}: {key!r} is not a config key; write {NAMESPACE}:<key>")
    typos = namespace_typos(config)
    if typos:
        raise ConfigError(f"stack file {path}: {typos[0]}")
    return {full_key(k): v for k, v in config.items()}


def tracked_file(stack: str) -> Path | None:
    """This project's ``Pulumi.<stack>.yaml`` as the real CLI finds it, or None.

    The project root is the one the language host reports, else the nearest ``Pulumi.yaml`` at or
    above the working directory (an Automation API inline program runs in the caller's process).
    """
    import os

    import pulumi

    try:
        root: str | None = pulumi.runtime.get_root_directory()
    except AttributeError:  # the mock runtime's settings have no root directory
        root = None
    candidates = [Path(root)] if root else [Path(os.getcwd()), *Path(os.getcwd()).parents]
    for directory in candidates:
        project = directory / "Pulumi.yaml"
        if project.is_file():
            try:
                settings = yaml.safe_load(project.read_text(encoding="utf-8")) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return None
            if not isinstance(settings, dict) or settings.get("name") != NAMESPACE:
                return None
            path = directory / str(settings.get("stackConfigDir") or ".") / f"Pulumi.{stack}.yaml"
            return path if path.is_file() else None
    return None


def stack_file(stack: str) -> Path:
    return contract.STACKS_DIR / f"Pulumi.{stack}.yaml"


def load_stack_config(stack: str, path: Path | None = None) -> dict[str, Any]:
    """The ``config:`` block of a stack file (``path``, default ``stacks/Pulumi.<stack>.yaml``), keys as
    Pulumi hands them over (``model:`` becomes ``openhands:model``). Raises FileNotFoundError, or
    ConfigError naming the file (components/config/stackfile.py: read as strictly as the program reads it)."""
    path = path or stack_file(stack)
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path} (stacks: {', '.join(contract.stack_names())})")
    return read_config(path)
