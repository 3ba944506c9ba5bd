"""Hand-written policy fixtures: resources shaped like rendered props (wire names, secrets unwrapped).

Each module lists ``FIXTURES``: one resource (or, for stack policies, several) and whether the
named policy must report it. Some copy what our models render; others are what people write by
hand (a Deployment with a literal API key, a world-open SSH rule, an HTTP listener that forwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fixture:
    policy: str
    id: str
    type: str = ""
    props: dict[str, Any] = field(default_factory=dict)
    violates: bool = False
    name: str = "res"
    protect: bool = False  # the engine sends protect, but not retainOnDelete nor which values are secret
    additional_secret_outputs: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stack: list[tuple[str, str, dict[str, Any]]] | None = None  # stack policies: (type, name, props)
    expect: str = ""  # a phrase the message must contain


def all_fixtures() -> list[Fixture]:
    from tests.harness.policy_fixtures import aws, docker, kubernetes, modal

    return [*aws.FIXTURES, *kubernetes.FIXTURES, *docker.FIXTURES, *modal.FIXTURES]
