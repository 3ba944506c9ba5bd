"""The agent-server runtime contract: the one place that says how the server runs.

Every deployment model renders its workload from these values, so an env name, a
path, the port or a probe is never typed twice. The facts behind each value were
measured on ``openhands-agent-server`` 1.58.0 (see shared/research/agent_server_facts.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Bump when anything below changes in a way a running deployment would notice.
# Prod promotes this together with the image (see components/promotion.py).
CONTRACT_VERSION = "1"

AGENT_SERVER_VERSION = "1.58.0"
IMAGE_REPOSITORY = "ghcr.io/openhands/agent-server"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{AGENT_SERVER_VERSION}-python"

PORT = 8000
PORT_NAME = "http"
# The server binary in the image; the image's ENTRYPOINT runs it under tini. Runtimes that
# clear the entrypoint (Modal) start it themselves: ``command()``.
SERVER_BINARY = "/usr/local/bin/openhands-agent-server"
# CPython of the image's base (python-node-runtime: Python 3.13). Runtimes that add their
# own interpreter (Modal's add_python) must match it.
IMAGE_PYTHON_VERSION = "3.13"
# The image's WORKDIR: the server resolves its relative defaults (the config file) from here.
IMAGE_WORKDIR = "/"
# Custom tool modules (e.g. the Agent Canvas UI tool) are imported from the dirs listed here.
EXTRA_PYTHON_PATH_ENV = "OH_EXTRA_PYTHON_PATH"
TOOLS_DIR = "/opt/openhands/tools"

# The server picks 127.0.0.1 when no key is set at boot; we always pass the host
# explicitly so a container is reachable through its network namespace.
ARGS: tuple[str, ...] = ("--host", "0.0.0.0", "--port", str(PORT))

# The image's own user (Dockerfile ARG UID/GID); volumes must be writable by it.
UID = 10001
GID = 10001

# The data volume mounts here. The image pre-creates /workspace owned by 10001, so a
# fresh Docker named volume inherits that ownership, and the image's own defaults
# (CWD /, relative "workspace/...") already point inside it.
DATA_DIR = "/workspace"
HOME_DIR = "/home/openhands"

# Every path the server persists, placed inside DATA_DIR. OH_PERSISTENCE_DIR moves
# settings and secrets off ~/.openhands, which would otherwise be lost on restart.
STATE_ENV: dict[str, str] = {
    "OH_CONVERSATIONS_PATH": f"{DATA_DIR}/conversations",
    "OH_PERSISTENCE_DIR": f"{DATA_DIR}/.openhands",
    "OH_WORKSPACE_PATH": f"{DATA_DIR}/project",
    "OH_BASH_EVENTS_DIR": f"{DATA_DIR}/bash_events",
    # The server's default is /tmp/conversation-worktrees. A conversation started with
    # `worktree: true` on a git workspace (and every child conversation, whose isolation
    # defaults to "worktree") gets a git worktree at <root>/<conversation id>/<repo name>,
    # on branch openhands/<id>, and that worktree IS its working directory: the agent's
    # uncommitted edits live there. Under /tmp a restart loses them and leaves the stored
    # conversation pointing at a missing directory (observed on 1.58.0). Outside
    # OH_WORKSPACE_PATH, so worktrees never show up as untracked files of the repo.
    "OH_CONVERSATION_WORKTREE_ROOT": f"{DATA_DIR}/conversation-worktrees",
}

# Writable but disposable: the PyInstaller binary unpacks into /tmp at each start,
# and the server creates $HOME/.config and $HOME/.openhands/* at import time.
SCRATCH_DIRS: tuple[str, ...] = ("/tmp", HOME_DIR)

# Plain (non-secret) env every model sets.
PLAIN_ENV: dict[str, str] = {
    **STATE_ENV,
    # Without it, litellm's remote cost-map fetch races the import and crashes
    # about 1 start in 5 when egress is blocked. Only the string "true" counts.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # VS Code would bind 0.0.0.0:8001 with the session key as its token; no model
    # exposes it, so keep it off.
    "OH_ENABLE_VSCODE": "false",
    "OPENHANDS_SUPPRESS_BANNER": "1",
}

# Conversation leases guard against two servers on one volume (agent_server_facts.md). A crashed
# server's leases stay held until they expire (45 s), so its conversations answer 404 that long after it
# restarts. A model whose platform makes a second server on the volume impossible turns them off
# (0 disables leasing, per the server's config), and the conversations are served at once.
LEASE_TTL_ENV = "OH_LEASE_TTL_SECONDS"
NO_LEASES: dict[str, str] = {LEASE_TTL_ENV: "0"}
# A model that keeps leases can still have a restarted server take them over at once: the server treats
# an owner on its own host whose PID is gone as dead, so the restart must bring a new PID. A PID namespace
# that outlives the container does (a Kubernetes pod's shared one); tini is then not PID 1 and must be a
# subreaper to keep reaping the server's orphans.
SHARED_PID_NAMESPACE: dict[str, str] = {"TINI_SUBREAPER": "1"}

# Secret env names. The server accepts every OH_SESSION_API_KEYS_<n>, so the
# previous session key keeps working until the next rotation; OH_PREVIOUS_SECRET_KEYS_<n>
# are tried when decrypting, so stored secrets survive a secret-key rotation.
SESSION_KEY_ENV = "OH_SESSION_API_KEYS_{}"
SECRET_KEY_ENV = "OH_SECRET_KEY"
PREVIOUS_SECRET_KEY_ENV = "OH_PREVIOUS_SECRET_KEYS_{}"

AUTH_HEADER = "X-Session-API-Key"

# The oldest Docker Engine API the rendered containers need: Docker 20.10 (Debian 12's docker.io).
# Newer API fields are left out: pulumi-docker's client refuses to create a container that sets one on
# an older engine (a healthcheck start_interval needs 1.44, Docker 25). Tested on a 20.10 engine.
DOCKER_MIN_API = "1.41"

# How every model labels/tags the agent-server workload, so policies can find it.
ROLE = "agent-server"

# ------------------------------------------------------------------ shared vocabulary
# Labels on Docker containers, networks and volumes, and tags on EC2/ECS resources: which
# role (ROLE, or the TLS proxy's), tenant and deployment (<project>/<stack>) an object belongs to.
ROLE_LABEL = "dev.openhands.role"
TENANT_LABEL = "dev.openhands.tenant"
STACK_LABEL = "dev.openhands.stack"
TLS_PROXY_ROLE = "tls-proxy"
CHECKSUM_LABEL = "dev.openhands.keys-checksum"  # the keys' checksum: the rollout trigger
# Kubernetes keys take a DNS prefix; they sit in immutable StatefulSet selectors, so they stay as
# first released (a different spelling from the Docker labels above).
K8S_TENANT_LABEL = "openhands.dev/tenant"
K8S_CHECKSUM_ANNOTATION = "openhands.dev/keys-checksum"
# "The internet": the default source/destination ranges in config, and what the policy pack refuses
# to expose to.
WORLD_CIDRS = ("0.0.0.0/0", "::/0")

# The project directory (Pulumi.yaml): where `pulumi` runs the program, so where relative paths in
# stack config point; the shipped stack files are in its stacks/.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
STACKS_DIR = PROJECT_ROOT / "stacks"


def stack_names(stacks_dir: Path = STACKS_DIR) -> list[str]:
    """The stacks with a file in ``stacks_dir`` (``Pulumi.<stack>.yaml``), sorted."""
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def global_name(
    project: str,
    stack: str,
    *parts: str,
    sep: str = "-",
    max_length: int = 255,
    invalid: str = r"[^A-Za-z0-9_-]",
) -> str:
    """A name for an object whose name is global to an account (an ECS cluster, a log
    group, a snapshot policy's target tag): project and stack both in it, so two stacks
    or two projects never share one. Characters matching ``invalid`` become "-"; a name
    over ``max_length`` is cut and ends in a hash of the whole, so it stays unique."""
    whole = sep.join([project, stack, *parts])
    name = re.sub(invalid, "-", whole) if invalid else whole
    if len(name) > max_length:
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        name = name[: max_length - len(digest) - 1] + "-" + digest
    return name

# What the smoke test (openhands_cli/smoke.py) calls on every tenant, besides READINESS_PROBE:
# an authenticated REST call (401 without the key) and the WebSocket first-message auth.
# A good key gets no reply and the socket stays open; a wrong key is closed with 4001
# within milliseconds (observed on 1.58.0).
AUTH_CHECK_PATH = "/api/conversations/count"
WS_CHECK_PATH = "/sockets/bash-events"
WS_AUTH_FAILED_CLOSE_CODE = 4001


def ws_auth_frame(key: str) -> dict[str, str]:
    """The first frame a WebSocket client sends to authenticate."""
    return {"type": "auth", "session_api_key": key}


@dataclass(frozen=True)
class KeyValues:
    """Plain key material for one tenant (only ever handled inside an ``apply``)."""

    session_keys: tuple[str, ...]  # current first, then the previous one
    secret_key: str
    previous_secret_keys: tuple[str, ...] = ()  # newest first


def secret_env_names(n_session_keys: int, n_previous_secret_keys: int) -> list[str]:
    """The secret env names, in order, for the given key counts."""
    return (
        [SESSION_KEY_ENV.format(i) for i in range(n_session_keys)]
        + [SECRET_KEY_ENV]
        + [PREVIOUS_SECRET_KEY_ENV.format(i) for i in range(n_previous_secret_keys)]
    )


def secret_env(keys: KeyValues) -> dict[str, str]:
    """Secret env for one tenant. Refuses blank keys: an empty session key disables auth."""
    values = [*keys.session_keys, keys.secret_key, *keys.previous_secret_keys]
    if any(not v or not v.strip() for v in values):
        raise ValueError("agent-server keys must not be empty: an empty session key leaves the server open")
    names = secret_env_names(len(keys.session_keys), len(keys.previous_secret_keys))
    return dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class Probe:
    """An HTTP GET probe against PORT. HEAD is refused (405), so GET only."""

    path: str
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int

    @property
    def budget_seconds(self) -> int:
        return self.period_seconds * self.failure_threshold


# Measured start: 6-11 s on 2 vCPU with empty state, plus a scan of every stored
# conversation. 120 s leaves room for a large state volume and a slow node.
STARTUP_BUDGET_SECONDS = 120
STARTUP_PROBE = Probe("/ready", period_seconds=5, timeout_seconds=3, failure_threshold=24)
READINESS_PROBE = Probe("/ready", period_seconds=10, timeout_seconds=3, failure_threshold=3)
LIVENESS_PROBE = Probe("/alive", period_seconds=20, timeout_seconds=5, failure_threshold=3)
assert STARTUP_PROBE.budget_seconds >= STARTUP_BUDGET_SECONDS >= 60

# Health command for runtimes that exec inside the container (Docker, ECS). The image
# has bash but not necessarily curl, so speak HTTP over bash's /dev/tcp.
HEALTHCHECK_SCRIPT = (
    f"exec 3<>/dev/tcp/127.0.0.1/{PORT} && "
    f"printf 'GET {READINESS_PROBE.path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    "IFS= read -r status <&3 && [[ $status == *' 200 '* ]]"
)
HEALTHCHECK_COMMAND: tuple[str, ...] = ("CMD", "bash", "-c", HEALTHCHECK_SCRIPT)
HEALTHCHECK_INTERVAL_SECONDS = 15
HEALTHCHECK_TIMEOUT_SECONDS = 5
HEALTHCHECK_RETRIES = 3

# How long a runtime waits after SIGTERM before SIGKILL. On SIGTERM the server exits in
# 0.6-1.5 s and deletes its conversation leases; a SIGKILLed server leaves them behind, and a
# replacement with a new hostname answers 404 "Conversation not found" until the lease
# expires (45 s). 10 s is Docker's own default stop timeout.
STOP_GRACE_SECONDS = 10


def container_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain env for the agent-server container, with optional model-specific extras."""
    env = dict(PLAIN_ENV)
    for key in extra or {}:
        if key in env or key.startswith(("OH_SESSION_API_KEYS", "OH_SECRET_KEY", "OH_PREVIOUS_SECRET_KEYS")):
            raise ValueError(f"{key} is owned by the runtime contract and cannot be overridden")
    env.update(extra or {})
    return env


def map_paths(env: Mapping[str, str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Rewrite env values under a container path (e.g. DATA_DIR) to a host path.

    Used by tests to boot the real server with a rendered env on a temp dir.
    """
    out = {}
    for key, value in env.items():
        for src, dst in mapping.items():
            if value == src or value.startswith(src.rstrip("/") + "/"):
                value = dst + value[len(src) :]
                break
        out[key] = value
    return out


def args() -> list[str]:
    return list(ARGS)


def command() -> list[str]:
    """The full server command, for runtimes that do not use the image's entrypoint."""
    return [SERVER_BINARY, *ARGS]


def state_paths() -> Sequence[str]:
    return list(STATE_ENV.values())
