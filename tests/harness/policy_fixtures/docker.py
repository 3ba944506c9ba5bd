"""Docker fixtures: containers and volumes as components/docker/local.py renders them, and as
people write them by hand (ports published straight from the agent server, keys in env)."""

from __future__ import annotations

from typing import Any

from components import contract
from tests.harness.policy_fixtures import Fixture

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"
KEYS = {"OH_SESSION_API_KEYS_0": "k" * 48, "OH_SECRET_KEY": "s" * 48}
# How the engine marshals a secret value (pulumi sdk/go/common/resource/properties.go).
SECRET_SIG_KEY, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


def agent(**extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": "openhands-local-default",
        "image": "sha256:" + "9" * 64,
        "command": list(contract.ARGS),
        "envs": [f"{k}={v}" for k, v in {**contract.PLAIN_ENV, **KEYS}.items()],
        "user": f"{contract.UID}:{contract.GID}",
        "memory": 2048, "cpus": "1.0",
        "healthcheck": {"tests": list(contract.HEALTHCHECK_COMMAND), "interval": "15s", "retries": 3},
        "labels": [{"label": "dev.openhands.role", "value": contract.ROLE},
                   {"label": "dev.openhands.tenant", "value": "default"}],
        "volumes": [{"volumeName": "openhands-local-default-state", "containerPath": contract.DATA_DIR}],
        "networksAdvanced": [{"name": "openhands-local", "aliases": ["agent-default"]}],
    }
    props.update(extra)
    return props


PROXY = {"name": "openhands-local-proxy", "image": "sha256:" + "8" * 64,
         "ports": [{"internal": 8443, "external": 8443}, {"internal": 8080, "external": 8080}],
         "labels": [{"label": "dev.openhands.role", "value": "tls-proxy"}]}

# `docker run -p 8000:8000 -e OH_SESSION_API_KEYS_0=... ghcr.io/openhands/agent-server:latest`, in Pulumi.
HAND = {"name": "agent", "image": "ghcr.io/openhands/agent-server:latest",
        "ports": [{"internal": 8000, "external": 8000}],
        "envs": ["OH_SESSION_API_KEYS_0=", "OH_SECRET_KEY=abc"]}

FIXTURES: list[Fixture] = [
    Fixture("no-plain-secrets", "engine-envs-declared-secret", CONTAINER, agent(),
            additional_secret_outputs=["envs"]),
    # envs holds Pulumi secrets (the engine sends them as secret envelopes), but the analyzer unwraps them
    # unmarked: without additional_secret_outputs the policy cannot tell.
    Fixture("no-plain-secrets", "engine-cannot-see-secretness", CONTAINER,
            agent(envs=[{SECRET_SIG_KEY: SECRET_SIG, "value": e} for e in agent()["envs"]]), True,
            expect="additional_secret_outputs"),
    Fixture("no-plain-secrets", "hand-written-plain-env", CONTAINER, HAND, True,
            name="agent", expect="OH_SECRET_KEY"),
    Fixture("session-key-not-empty", "rendered-keys", CONTAINER, agent(), additional_secret_outputs=["envs"]),
    Fixture("session-key-not-empty", "hand-written-blank-key", CONTAINER, HAND, True, expect="OH_SESSION_API_KEYS_0"),
    Fixture("docker-publish-only-tls-proxy", "agent-unpublished", CONTAINER, agent()),
    Fixture("docker-publish-only-tls-proxy", "proxy-publishes", CONTAINER, PROXY),
    Fixture("docker-publish-only-tls-proxy", "hand-written-agent-published", CONTAINER, HAND, True,
            expect="TLS proxy"),
    Fixture("docker-publish-only-tls-proxy", "host-network", CONTAINER, agent(networkMode="host"), True,
            expect="host network"),
    Fixture("docker-publish-only-tls-proxy", "proxy-exposes-agent-port", CONTAINER,
            {**PROXY, "ports": [{"internal": 8000, "external": 8000}]}, True),
    Fixture("agent-server-health-checks", "rendered-healthcheck", CONTAINER, agent()),
    Fixture("agent-server-health-checks", "healthcheck-none", CONTAINER, agent(healthcheck={"tests": ["NONE"]}), True),
    Fixture("agent-server-health-checks", "hand-written-no-healthcheck", CONTAINER, HAND, True),
    Fixture("one-workload-per-volume", "one-container-per-volume", stack=[
        (CONTAINER, "a", agent()),
        (CONTAINER, "b", agent(volumes=[{"volumeName": "other", "containerPath": contract.DATA_DIR}]))]),
    Fixture("one-workload-per-volume", "two-containers-one-volume", stack=[
        (CONTAINER, "a", agent()), (CONTAINER, "b", agent())], violates=True,
        expect="openhands-local-default-state"),
    Fixture("resource-limits", "rendered-limits", CONTAINER, agent()),
    Fixture("resource-limits", "no-limits", CONTAINER, agent(memory=None, cpus=None), True, expect="memory"),
    Fixture("image-pinned", "image-id", CONTAINER, agent()),
    Fixture("image-pinned", "remote-image-pinned", IMAGE, {"name": contract.DEFAULT_IMAGE}),
    Fixture("image-pinned", "remote-image-untagged", IMAGE, {"name": "caddy"}, True),
    Fixture("image-pinned", "hand-written-latest", CONTAINER, HAND, True),
    Fixture("data-protected", "volume-protected", VOLUME, {"name": "state"}, protect=True),
    Fixture("data-protected", "volume-deleted-on-destroy", VOLUME, {"name": "state"}, True),
]
