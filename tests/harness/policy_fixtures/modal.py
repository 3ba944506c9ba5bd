"""Modal fixtures: the dynamic resource of components/modal/deploy.py (``pulumi-python:dynamic/modal:App``)
and a generic ``pulumi-python:dynamic:Resource`` someone wrote around ``modal deploy``."""

from __future__ import annotations

from typing import Any

from components import contract
from tests.harness.policy_fixtures import Fixture

APP = "pulumi-python:dynamic/modal:App"
GENERIC = "pulumi-python:dynamic:Resource"


def app(**spec: Any) -> dict[str, Any]:
    body = {"app_name": "openhands-agent-server-default", "image": contract.DEFAULT_IMAGE, "cpu": 1.0,
            "memory": 2048, "min_containers": 1, "max_containers": 1, "scaledown_window": 300, "timeout": 3600,
            "startup_timeout": contract.STARTUP_BUDGET_SECONDS}
    body.update(spec)
    return {"appName": body["app_name"], "role": contract.ROLE, "spec": body, "retainData": True,
            "secretEnv": {"OH_SESSION_API_KEYS_0": "k" * 48, "OH_SECRET_KEY": "s" * 48}}


HAND = {"__provider": "gASV...", "app_file": "serve.py", "max_containers": 4, "image": "ghcr.io/openhands/agent-server"}

FIXTURES: list[Fixture] = [
    Fixture("modal-single-container", "rendered-app", APP, app(), name="default-modal-app"),
    Fixture("modal-single-container", "two-containers", APP, app(max_containers=2), True, expect="max_containers"),
    Fixture("modal-single-container", "hand-written-generic", GENERIC, HAND, True, name="modal-deploy"),
    Fixture("modal-single-container", "unrelated-dynamic-resource", GENERIC, {"bucket": "x"}, name="dns-record"),
    Fixture("agent-server-health-checks", "startup-timeout", APP, app()),
    Fixture("agent-server-health-checks", "no-startup-timeout", APP, app(startup_timeout=None), True,
            expect="startup_timeout"),
    Fixture("agent-server-health-checks", "short-startup-timeout", APP, app(startup_timeout=5), True),
    Fixture("session-key-not-empty", "keys", APP, app()),
    Fixture("session-key-not-empty", "blank-key", APP, {**app(), "secretEnv": {"OH_SESSION_API_KEYS_0": ""}}, True),
    Fixture("resource-limits", "cpu-memory", APP, app()),
    Fixture("resource-limits", "no-memory", APP, app(memory=None), True),
    Fixture("image-pinned", "pinned", APP, app()),
    Fixture("image-pinned", "hand-written-untagged", GENERIC, HAND, True),
    Fixture("data-protected", "retained", APP, app()),
    Fixture("data-protected", "volume-dropped", APP, {**app(), "retainData": False}, True),
]
