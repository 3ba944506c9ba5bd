"""The real Pulumi engine for tests: the CLI that ``scripts/engine`` built, a project copy, a file backend.

Fixtures (register with ``pytest_plugins = ["tests.harness.real_engine"]``):

* ``pulumi_bin``: the directory holding the real ``pulumi`` (``scripts/engine --check``, or
  ``$OPENHANDS_ENGINE_BIN`` to test another install, e.g. a released CLI). With
  ``CI=true`` a missing build FAILS the test; elsewhere it skips with one reason.
* ``engine_project``: a copy of ``Pulumi.yaml`` and ``stacks/`` in a temp dir, with PULUMI_HOME in a
  temp dir, no update check, no plugin download, and no inherited backend or passphrase: the operator
  CLI then sets up its own file backend and passphrase file inside that copy, as for a new user.

Also a command line, run as a subprocess so every engine run starts from a fresh Python process:
``python -m tests.harness.real_engine seed STACK JSON`` runs ``up`` of an inline program that only exports
JSON's keys (to give a stack outputs without any provider plugin), and
``python -m tests.harness.real_engine program-preview STACK`` runs ``preview`` of the real program through the
engine without the operator's config pre-check (the engine path of a bad config), and
``python -m tests.harness.real_engine modal-app STACK preview|up`` runs one Modal app resource (our dynamic
provider) alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ci

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = ROOT / "scripts" / "engine"
OFFLINE_ENV = {"PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}
INHERITED = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_ACCESS_TOKEN")


def engine_bin() -> tuple[Path | None, str]:
    """(the directory of the cached build, or None; why not). $OPENHANDS_ENGINE_BIN names another one."""
    if override := os.environ.get("OPENHANDS_ENGINE_BIN"):
        ok = (Path(override) / "pulumi").is_file()
        return (Path(override), "") if ok else (None, f"OPENHANDS_ENGINE_BIN={override} holds no `pulumi`")
    try:
        proc = subprocess.run(["bash", str(ENGINE_SCRIPT), "--check"], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"scripts/engine --check did not run: {exc}"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not (Path(lines[-1]) / "pulumi").is_file():
        return None, (proc.stderr.strip().splitlines() or ["scripts/engine --check failed"])[-1]
    return Path(lines[-1]), ""


def unavailable(message: str) -> None:
    """A real tool is missing: FAIL under CI=true, skip with this one reason elsewhere (tests/harness/ci.py)."""
    ci.unavailable(message)


@pytest.fixture(scope="session")
def pulumi_bin() -> Path:
    path, why = engine_bin()
    if path is None:
        unavailable(f"the real Pulumi CLI is not built: {why}")
    return path


@dataclass
class EngineProject:
    """A project copy wired to the real CLI; ``openhands(...)`` runs the operator CLI in it."""

    dir: Path
    env: dict[str, str]

    def stack_file(self, stack: str) -> Path:
        return self.dir / "stacks" / f"Pulumi.{stack}.yaml"

    def openhands(self, *args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "openhands_cli.main", *args], cwd=self.dir, env=self.env, input=input,
            capture_output=True, text=True, timeout=timeout,
        )

    def helper(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.harness.real_engine", *args], cwd=self.dir, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )

    @property
    def cli_env(self) -> dict[str, str]:
        """The env under which a plain `pulumi` sees what the operator set up (backend, passphrase)."""
        local = self.dir / ".openhands-deploy"
        return {**self.env, "PULUMI_BACKEND_URL": (local / "state").as_uri(),
                "PULUMI_CONFIG_PASSPHRASE_FILE": str(local / "passphrase")}

    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["pulumi", *args], cwd=self.dir, env=self.cli_env, capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed: {proc.stderr or proc.stdout}")
        return proc

    def resources(self, stack: str) -> list[dict[str, Any]]:
        """The resources in the stack's state (`pulumi stack export`)."""
        exported = json.loads(self.pulumi("stack", "export", "--stack", stack).stdout)
        return exported.get("deployment", {}).get("resources") or []


@pytest.fixture
def engine_project(pulumi_bin: Path, tmp_path: Path) -> Iterator[EngineProject]:
    yield make_engine_project(pulumi_bin, tmp_path)


def make_engine_project(pulumi_bin: Path, tmp_path: Path) -> EngineProject:
    """What the ``engine_project`` fixture yields, for any directory (a module-scoped deployment, a bench)."""
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "tmp").mkdir(exist_ok=True)
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", project / "stacks")
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(OFFLINE_ENV)
    env.update({
        "PATH": os.pathsep.join([str(pulumi_bin), env.get("PATH", "")]),
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        # pulumi-kubernetes writes the kubeconfig it is given to a temp file per configure and never
        # removes it (os.CreateTemp in its provider): keep those inside the test's own directory.
        "TMPDIR": str(tmp_path / "tmp"),
        "OPENHANDS_PROJECT_DIR": str(project),
        # The operator and this helper import components/ and tests/ from the checkout.
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "NO_COLOR": "1",
        # These tests drive the engine itself (its plugin errors, its state): the operator's preflight
        # (openhands_cli/preflight.py) would stop most of them first. tests/operator/test_doctor.py removes this.
        "OPENHANDS_SKIP_PREFLIGHT": "1",
    })
    return EngineProject(project, env)


def random_standin_bin() -> Path:
    """The directory holding the test-only ``pulumi-resource-random`` (``scripts/random-standin``: built once,
    cached); a missing build fails under CI=true and skips elsewhere."""
    try:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "random-standin")], capture_output=True, text=True,
                              timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable(f"scripts/random-standin did not run: {exc}")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not (Path(lines[-1]) / "pulumi-resource-random").is_file():
        unavailable(f"the random stand-in did not build: {proc.stderr.strip()[-2000:]}")
    return Path(lines[-1])


# --------------------------------------------------------------------------- helper CLI (subprocess)


def _session(stack: str):
    from openhands_cli import main as operator

    project = operator.find_project()
    s = operator.settings(project)
    return operator.open_stack(stack, s, operator.pulumi_cli())


def _seed(stack: str, outputs: dict[str, Any]) -> int:
    import pulumi

    def program() -> None:
        for name, value in outputs.items():
            pulumi.export(name, pulumi.Output.secret(value) if name in ("apiKey", "secretKeys") else value)

    session = _session(stack)
    session.stack.up(program=program, on_output=print, config_file=session.config_file(), show_secrets=False)
    return 0


def _program_preview(stack: str) -> int:
    from pulumi.automation import errors

    session = _session(stack)
    try:
        session.stack.preview(on_output=print, config_file=session.config_file(), color="never")
    except errors.CommandError as exc:
        print(f"CommandError: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


def _modal_app(stack: str, op: str) -> int:
    """One tenant's Modal app resource (our dynamic provider) alone: the stack's keys would need the
    random plugin. Prints the engine's output; exit 1 if the engine failed."""
    import pulumi
    from pulumi.automation import errors

    from components import config, contract
    from components.modal import deploy as modal_deploy

    session = _session(stack)
    values = session.stack.get_all_config()
    prefix = config.NAMESPACE + ":"
    cfg = config.parse({k[len(prefix):]: v.value for k, v in values.items() if k.startswith(prefix)}, set(), stack)
    names = ["OH_SESSION_API_KEYS_0", contract.SECRET_KEY_ENV]

    def program() -> None:
        spec = modal_deploy.spec_for(cfg, cfg.tenants[0], names)
        props = spec.to_dict()
        app = modal_deploy.ModalAppResource(f"{cfg.tenants[0]}-modal-app", {
            "appName": spec.app_name, "environment": spec.environment or "", "secretName": spec.secret_name,
            "volumeName": spec.volume_name, "role": contract.ROLE, "spec": props,
            "specHash": modal_deploy.spec_hash(props), "secretEnv": pulumi.Output.secret({n: "k" * 48 for n in names}),
            "secretHash": "test", "retainData": True,
        }, opts=pulumi.ResourceOptions(additional_secret_outputs=["secretEnv"]))
        pulumi.export("url", app.url)

    kwargs = {"program": program, "config_file": session.config_file(), "on_output": print, "color": "never"}
    try:
        getattr(session.stack, op)(**kwargs, **({"show_secrets": False} if op == "up" else {}))
    except errors.CommandError:
        return 1
    return 0


if __name__ == "__main__":
    op, stack_name, *rest = sys.argv[1:]
    if op == "seed":
        sys.exit(_seed(stack_name, json.loads(rest[0])))
    if op == "program-preview":
        sys.exit(_program_preview(stack_name))
    if op == "modal-app":
        sys.exit(_modal_app(stack_name, rest[0]))
    sys.exit(f"unknown helper command {op!r}")
