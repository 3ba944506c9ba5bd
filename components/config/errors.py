"""The one error every configuration problem raises, and the config namespace."""

from __future__ import annotations

import difflib
from typing import Any

import pulumi

NAMESPACE = "openhands"
MODELS = ("modal", "docker", "ecs", "kubernetes")


class ConfigError(pulumi.RunError):
    """A configuration problem. Pulumi prints a RunError's message with no traceback."""



def namespace_typos(keys: Any) -> list[str]:
    """Config keys whose namespace looks like a misspelt ``openhands`` (they would be silently ignored)."""
    out = []
    for key in keys:
        ns, _, name = str(key).partition(":")
        if ns != NAMESPACE and difflib.SequenceMatcher(None, ns.lower(), NAMESPACE).ratio() >= 0.8:
            out.append(f"{key}: unknown namespace {ns!r} (did you mean {NAMESPACE}:{name}?)")
    return out
