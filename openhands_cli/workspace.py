"""Where the operator works: the project directory, the Pulumi CLI, the backend and the passphrase.

Shared by the commands (``openhands_cli.main``) and the preflight (``openhands_cli.preflight``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components import contract

PROJECT = "openhands"
DEFAULT_STACK = "local"
LOCAL_DIR = ".openhands-deploy"  # gitignored: state, passphrase, generated config, saved keys
# The oldest CLI this was verified with (scripts/engine builds it; newer releases are fine).
MIN_CLI_VERSION = (3, 259, 0)
INSTALL_HINT = "curl -fsSL https://get.pulumi.com | sh"
PASSPHRASE_ENV = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")

EXIT_FAILED = 1
EXIT_USAGE = 2


class OperatorError(Exception):
    """One clear message for the user, and the exit code it ends with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- environment


def find_project(start: Path | None = None) -> Path:
    """The project directory: $OPENHANDS_PROJECT_DIR, else the nearest Pulumi.yaml of this project."""
    env = os.environ.get("OPENHANDS_PROJECT_DIR")
    candidates = [Path(env)] if env else [*(p for p in [(start or Path.cwd()).resolve()] for p in (p, *p.parents))]
    if not env:
        candidates.append(contract.PROJECT_ROOT)
    for path in candidates:
        settings = path / "Pulumi.yaml"
        if settings.is_file() and _project_name(settings) == PROJECT:
            return path
    where = env or f"{Path.cwd()} or its parents"
    raise OperatorError(f"no Pulumi.yaml of project {PROJECT!r} in {where}: run this in the openhands-deploy checkout")


def _project_name(path: Path) -> str | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data.get("name") if isinstance(data, dict) else None


def pulumi_cli(which: Callable[[str], str | None] = shutil.which) -> str:
    """The `pulumi` executable on PATH, checked to be recent enough."""
    exe = which("pulumi")
    if exe is None:
        raise OperatorError(
            "the Pulumi CLI is not installed (no `pulumi` on PATH). Install it with:\n"
            f"  {INSTALL_HINT}\n"
            "then open a new shell (or add ~/.pulumi/bin to PATH). Offline, build it from Go modules:\n"
            '  export PATH="$(scripts/engine | tail -1):$PATH"'
        )
    try:
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise OperatorError(f"`{exe} version` failed ({exc}); reinstall the Pulumi CLI: {INSTALL_HINT}") from None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out.strip())
    if not match:
        raise OperatorError(f"`{exe} version` printed {out.strip()!r}, not a version; reinstall: {INSTALL_HINT}")
    version = tuple(int(p) for p in match.groups())
    if version < MIN_CLI_VERSION:
        need = ".".join(map(str, MIN_CLI_VERSION))
        raise OperatorError(f"the Pulumi CLI at {exe} is {out.strip()}; this needs >= {need}. Upgrade: {INSTALL_HINT}")
    return exe


def logged_in_elsewhere(environ: Mapping[str, str] = os.environ) -> str | None:
    """The backend URL of a `pulumi login`, if any (from $PULUMI_HOME/credentials.json)."""
    home = Path(environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    try:
        current = json.loads((home / "credentials.json").read_text(encoding="utf-8")).get("current")
    except (OSError, ValueError, AttributeError):
        return None
    return current or None


def ensure_passphrase(path: Path) -> Path:
    """A random passphrase in a mode-0600 file, created once and reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise OperatorError(
                f"{path} is readable by others (mode {mode:04o}); it decrypts the stacks' secrets: chmod 600 {path}"
            ) from None
        if not path.read_text(encoding="utf-8").strip():
            raise OperatorError(f"{path} is empty; delete it only if no stack uses it yet (secrets need it)") from None
        return path
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return path


@dataclass
class WorkspaceSettings:
    """Where the engine keeps state and how it decrypts secrets; what the user is told about it."""

    project: Path
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def local_dir(self) -> Path:
        return self.project / LOCAL_DIR


def settings(project: Path, environ: Mapping[str, str] = os.environ) -> WorkspaceSettings:
    s = WorkspaceSettings(project)
    if environ.get("PULUMI_BACKEND_URL"):
        s.notes.append(f"backend: {environ['PULUMI_BACKEND_URL']} (PULUMI_BACKEND_URL)")
    elif (url := logged_in_elsewhere(environ)) is not None:
        s.notes.append(f"backend: {url} (pulumi login)")
    else:
        state = s.local_dir / "state"
        state.mkdir(parents=True, exist_ok=True)
        s.env["PULUMI_BACKEND_URL"] = state.as_uri()
        s.notes.append(f"backend: {state} (a file backend in the project)")
    if not environ.get("PULUMI_PYTHON_CMD") and not environ.get("PULUMI_RUNTIME_VIRTUALENV"):
        # The engine starts dynamic providers (Modal's) with `python3 -m pulumi.dynamic` from PATH unless
        # told otherwise; it must be this interpreter, which has the SDK and imports components/.
        s.env["PULUMI_PYTHON_CMD"] = sys.executable
    if any(environ.get(k) for k in PASSPHRASE_ENV):
        s.notes.append("passphrase: from " + " / ".join(k for k in PASSPHRASE_ENV if environ.get(k)))
    else:
        s.env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(ensure_passphrase(s.local_dir / "passphrase"))
        s.notes.append(f"passphrase: {s.local_dir / 'passphrase'} (mode 0600; keep it: it decrypts the keys)")
    return s


