"""The Modal app of one tenant's agent server: the module ``modal deploy`` loads.

Everything is built with the modal SDK from a typed ``AppSpec``; no source text is
generated. Two ways in:

* Pulumi (components/modal/deploy.py): the dynamic provider calls ``build_app(spec)``
  and deploys the result.
* By hand: ``OPENHANDS_MODAL_SPEC='<json>' modal deploy -m components.modal.app``, with
  the JSON from ``pulumi stack output modalSpecs`` (one entry per tenant). ``app`` below
  is built from that env var when Modal asks for it.

Modal imports this module again inside the container, where the image has neither
pulumi nor pydantic: keep the imports to modal, the standard library and the contract.
The class is defined at module level and decorated by ``@app.cls`` only inside
``build_app``, so the container finds it by name (Modal's "undecorated class" path) and
no pickling across Python versions (3.12 here, 3.13 in the image) is involved.

The container never runs ``build_app``: it imports this module fresh, looks the class up
by name and asks it for its web methods (``_find_partial_methods_for_user_cls``), whose
``webhook_config`` (port, startup timeout) it then uses. So ``serve`` is decorated with
``@modal.web_server`` at import time, from ``WEB_PORT_ENV`` / ``STARTUP_TIMEOUT_ENV``,
which the image's env carries (``image_env``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import modal

from components import contract

SPEC_ENV = "OPENHANDS_MODAL_SPEC"
# The web server's parameters, in the image's env: the container rebuilds ``serve``'s
# decorator from them on import (it never sees SPEC_ENV).
WEB_PORT_ENV = "OPENHANDS_MODAL_WEB_PORT"
STARTUP_TIMEOUT_ENV = "OPENHANDS_MODAL_STARTUP_TIMEOUT"
# The Modal class name is part of every deployed app (its web endpoint and lookups name it): keep it.
CLASS_NAME = "AgentServer"
WEB_METHOD = "serve"
# The Agent Canvas UI tool module the client asks the server to import (tool_module_qualnames).
CANVAS_UI_MODULE = "canvas_ui_tool"


@dataclass(frozen=True)
class AppSpec:
    """Everything that shapes one tenant's Modal app. Plain data: it is the dynamic
    resource's input, and its hash decides when the app is redeployed."""

    app_name: str
    tenant: str
    image: str
    secret_name: str
    secret_keys: tuple[str, ...]  # env names the Modal Secret must hold (contract.secret_env_names)
    volume_name: str
    environment: str | None = None
    cpu: float = 1.0
    memory: int = 2048  # MiB
    min_containers: int = 1
    max_containers: int = 1
    scaledown_window: int = 300
    timeout: int = 3600
    max_inputs: int = 100
    tools_dir: str | None = None  # local dir holding canvas_ui_tool.py; None = no Canvas UI tool
    python_version: str = contract.IMAGE_PYTHON_VERSION
    # Part of the spec (not only the decorator) so policies can see them in the resource's inputs.
    port: int = contract.PORT
    startup_timeout: int = contract.STARTUP_BUDGET_SECONDS

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["secret_keys"] = list(self.secret_keys)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AppSpec keys: {', '.join(unknown)}")
        values = dict(data)
        values["secret_keys"] = tuple(values.get("secret_keys") or ())
        for f in fields(cls):
            # Pulumi's wire format turns every number into a float; Modal wants ints here.
            if f.type == "int" and isinstance(values.get(f.name), float):
                if not values[f.name].is_integer():
                    raise ValueError(f"{f.name} must be a whole number, got {values[f.name]}")
                values[f.name] = int(values[f.name])
        return cls(**values)

    @property
    def mounts(self) -> dict[str, str]:
        """Container path -> Modal Volume name."""
        return {contract.DATA_DIR: self.volume_name}


def image_env(spec: AppSpec) -> dict[str, str]:
    """The plain env the image gives the container; the Modal Secret adds the keys."""
    extra = {WEB_PORT_ENV: str(spec.port), STARTUP_TIMEOUT_ENV: str(spec.startup_timeout)}
    if spec.tools_dir:
        extra[contract.EXTRA_PYTHON_PATH_ENV] = contract.TOOLS_DIR
    return contract.container_env(extra)


def build_image(spec: AppSpec) -> modal.Image:
    # Modal runs its own Python next to the image's: same minor version as the image's
    # base, so the two do not fight over /usr/local. The entrypoint (tini + the server)
    # is cleared because Modal's runtime must be PID 1; AgentServer.serve starts the server.
    image = (
        modal.Image.from_registry(spec.image, add_python=spec.python_version)
        .entrypoint([])
        .env(image_env(spec))
    )
    if spec.tools_dir:
        # Baked in (copy=True) so a change to the tool changes the image and is redeployed.
        image = image.add_local_dir(spec.tools_dir, contract.TOOLS_DIR, copy=True)
    return image


class AgentServer:
    """One agent-server process per container; Modal proxies HTTPS to its port."""

    process: subprocess.Popen | None = None

    def serve(self) -> None:
        # Env: the image's (state paths inside the volume) plus the Modal Secret's keys.
        # Decorated with @modal.web_server below, at import time (see the module doc).
        self.process = subprocess.Popen(contract.command(), cwd=contract.IMAGE_WORKDIR)

    @modal.exit()
    def stop(self) -> None:
        # SIGTERM lets the server release its conversation leases before the volume's
        # final commit, so the next container can open them at once.
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


_RAW_SERVE = AgentServer.serve  # undecorated


def _web_server_params(environ: Mapping[str, str]) -> tuple[int, int]:
    """(port, startup_timeout) from the image's env; the contract's values elsewhere."""
    port = int(environ.get(WEB_PORT_ENV) or contract.PORT)
    startup_timeout = int(environ.get(STARTUP_TIMEOUT_ENV) or contract.STARTUP_BUDGET_SECONDS)
    return port, startup_timeout


def _decorate_serve(port: int, startup_timeout: int) -> None:
    # Modal's default startup_timeout (5 s) is shorter than the server's measured start
    # (6-11 s); the contract's budget also covers a large state volume.
    AgentServer.serve = modal.web_server(port=port, startup_timeout=startup_timeout)(_RAW_SERVE)


# At import, so the container (a fresh import, the image's env) finds ``serve`` as a web server.
_decorate_serve(*_web_server_params(os.environ))


def build_app(spec: AppSpec) -> modal.App:
    """The tenant's ``modal.App``: one class, its Secret, its Volume. Offline; Modal
    validates the arguments here (raises ``modal.exception.InvalidError``)."""
    app = modal.App(spec.app_name, tags={"role": contract.ROLE, "tenant": spec.tenant})
    secret = modal.Secret.from_name(
        spec.secret_name, environment_name=spec.environment, required_keys=list(spec.secret_keys)
    )
    volumes = {
        path: modal.Volume.from_name(name, environment_name=spec.environment, create_if_missing=True)
        for path, name in spec.mounts.items()
    }
    # The deploying process registers the spec's values; the container gets the same ones
    # from image_env at import time.
    _decorate_serve(spec.port, spec.startup_timeout)
    cls = modal.concurrent(max_inputs=spec.max_inputs)(AgentServer)
    app.cls(
        image=build_image(spec),
        secrets=[secret],
        volumes=volumes,
        cpu=spec.cpu,
        memory=spec.memory,
        min_containers=spec.min_containers,
        # One writer per volume: a second container would serve a stale catalog (see
        # agent_server_facts.md section 5). The config refuses anything but 1.
        max_containers=spec.max_containers,
        scaledown_window=spec.scaledown_window,
        timeout=spec.timeout,
    )(cls)
    return app


def spec_from_env(environ: dict[str, str] | None = None) -> AppSpec:
    env = os.environ if environ is None else environ
    raw = env.get(SPEC_ENV)
    if not raw:
        raise RuntimeError(
            f"{SPEC_ENV} is not set: export one tenant's spec, e.g.\n"
            f"  export {SPEC_ENV}=\"$(pulumi stack output modalSpecs --json -s modal | jq -c .default)\"\n"
            "  modal deploy -m components.modal.app"
        )
    return AppSpec.from_dict(json.loads(raw))


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access, from the env: importing this module (Pulumi, tests,
    # the container) needs no env, while ``modal deploy -m components.modal.app`` gets it.
    if name == "app":
        value = build_app(spec_from_env())
        globals()["app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
