"""Operator CLI: ``uv run openhands <command>`` on Pulumi's Automation API (``pulumi.automation``).

Commands (``-s/--stack``, default ``local``): ``up``, ``preview``, ``down`` (keeps data unless
``--delete-data``), ``rotate`` (``keys.rotation`` + 1, then up), ``status`` (the smoke check of
``components/smoke.py``), ``connect [TENANT]`` (what Agent Canvas needs) and ``doctor`` (the
preflight of ``components/preflight.py`` alone; ``up``, ``preview`` and ``rotate`` run it first).

Where things live, unless the user says otherwise:

* backend: a file backend in ``.openhands-deploy/state`` inside the project (gitignored), unless
  ``PULUMI_BACKEND_URL`` is set or the user is logged in (``pulumi login ...``) elsewhere;
* passphrase: generated once into ``.openhands-deploy/passphrase`` (mode 0600), unless
  ``PULUMI_CONFIG_PASSPHRASE`` or ``PULUMI_CONFIG_PASSPHRASE_FILE`` is set;
* dynamic providers (Modal's) run with this process's Python (``PULUMI_PYTHON_CMD``), which has the
  SDK and imports ``components``, unless ``PULUMI_PYTHON_CMD`` or ``PULUMI_RUNTIME_VIRTUALENV`` is set;
* stack config: the tracked ``stacks/Pulumi.<stack>.yaml`` is read, never rewritten by init.
  ``pulumi stack init`` would append the passphrase's ``encryptionsalt`` to it (measured with
  3.259.0). So the stack is created from a scratch workspace (the salt also lands in the
  backend's checkpoint), and each run hands the engine ``--config-file`` with the tracked config
  plus that salt (``.openhands-deploy/config/``). ``rotate`` writes ``keys.rotation`` into the
  tracked file on purpose: that is the deployment's config, as with ``pulumi config set --path``.

Inline program, not a work_dir program: the program (``components.program.run``) runs in this
process and the CLI gets ``--client``, so no Python language host is needed. A user's full Pulumi
install could run either; our offline engine (``scripts/engine``) has no language host, because the
Go module proxy refuses it, so only the inline form runs there, and one form is tested. It also lets
a ``ConfigError`` reach the user as our one message: the program records it before the SDK's
``LanguageServer`` turns it into an engine diagnostic (which it prints twice).

Exit codes: 0 done; 1 the engine ran and failed (its errors printed once); 2 nothing was changed:
usage, configuration, or a missing prerequisite. No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

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
        candidates.append(Path(__file__).resolve().parent.parent)
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
class Settings:
    """Where the engine keeps state and how it decrypts secrets; what the user is told about it."""

    project: Path
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def local_dir(self) -> Path:
        return self.project / LOCAL_DIR


def settings(project: Path, environ: Mapping[str, str] = os.environ) -> Settings:
    s = Settings(project)
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


# --------------------------------------------------------------------------- the stack


class Program:
    """The inline Pulumi program; remembers a ConfigError so it is reported once, as ours."""

    def __init__(self) -> None:
        self.config_error: str | None = None

    def __call__(self) -> None:
        from components import config, program

        try:
            program.run()
        except config.ConfigError as exc:
            self.config_error = str(exc)
            raise


@dataclass
class Session:
    """A selected stack and what is needed to run the engine on it."""

    name: str
    settings: Settings
    stack: Any  # pulumi.automation.Stack
    program: Program
    out: TextIO = sys.stdout

    @property
    def tracked_config(self) -> Path:
        return self.settings.project / "stacks" / f"Pulumi.{self.name}.yaml"

    def config_file(self, overrides: Mapping[str, Any] | None = None) -> str | None:
        """The config the engine reads: the tracked file, plus the state's salt when it has none."""
        tracked = _read_yaml(self.tracked_config)
        salt = None if tracked.get("encryptionsalt") else _state_salt(self.stack)
        if salt is None and not overrides:
            return None  # the tracked file is complete (or the secrets provider is not a passphrase)
        generated = dict(tracked)
        generated["config"] = {**(tracked.get("config") or {}), **(overrides or {})}
        if salt is not None:
            generated["encryptionsalt"] = salt
        path = self.settings.local_dir / "config" / f"Pulumi.{self.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Generated by `openhands` for each run: stacks/Pulumi.<stack>.yaml plus the secrets salt. Do not edit.\n"
            + yaml.safe_dump(generated, sort_keys=False),
            encoding="utf-8",
        )
        return str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise OperatorError(f"{path} is not valid YAML: {exc}") from None
    return data if isinstance(data, dict) else {}


def _state_salt(stack: Any) -> str | None:
    deployment = stack.export_stack().deployment or {}
    provider = deployment.get("secrets_providers") or {}
    if provider.get("type") != "passphrase":
        return None
    return (provider.get("state") or {}).get("salt")


def open_stack(name: str, s: Settings, exe: str, out: TextIO = sys.stdout, *, create: bool = True) -> Session:
    """Select the stack, creating it first (without touching the tracked stack file) if needed."""
    from pulumi import automation as auto

    # `exe` is the first `pulumi` on PATH, which is what PulumiCommand() runs; its version was checked.
    command = auto.PulumiCommand(skip_version_check=True)
    program = Program()
    ws = auto.LocalWorkspace(
        work_dir=str(s.project), program=program, env_vars=dict(s.env), secrets_provider="passphrase",
        pulumi_command=command,
    )
    try:
        stack = auto.Stack.select(name, ws)
    except auto.errors.StackNotFoundError:
        if not create:
            backend = s.env.get("PULUMI_BACKEND_URL") or "your Pulumi backend"
            raise OperatorError(
                f"stack {name!r} does not exist in {backend}: deploy it first (`uv run openhands up -s {name}`)"
            ) from None
        # `stack init` here would append `encryptionsalt:` to stacks/Pulumi.<stack>.yaml: init from a
        # scratch copy of the project instead; the salt is also kept in the backend's checkpoint.
        with tempfile.TemporaryDirectory(prefix="openhands-init-") as scratch:
            init_ws = auto.LocalWorkspace(
                work_dir=scratch, env_vars=dict(s.env), secrets_provider="passphrase", pulumi_command=command,
                project_settings=auto.ProjectSettings(name=PROJECT, runtime="python"),
            )
            _engine(lambda: init_ws.create_stack(name), f"create stack {name!r}")
        print(f"created stack {name!r}", file=out)
        stack = _engine(lambda: auto.Stack.select(name, ws), f"select stack {name!r}")
    except auto.errors.CommandError as exc:
        raise OperatorError(f"could not select stack {name!r}: {engine_message(str(exc))}", EXIT_FAILED) from None
    return Session(name, s, stack, program, out)


def _engine(fn: Callable[[], Any], what: str) -> Any:
    """Run one Automation API call; its failure becomes one message."""
    from pulumi.automation import errors

    try:
        return fn()
    except errors.CommandError as exc:
        raise OperatorError(f"could not {what}: {engine_message(str(exc))}", EXIT_FAILED) from None


def engine_message(text: str) -> str:
    """The useful lines of a CommandError's text (its stderr, else its stdout), with hints."""
    stderr = text.split("\n stderr:", 1)[1] if "\n stderr:" in text else ""
    stdout = text.split("\n stdout:", 1)[1].split("\n stderr:", 1)[0] if "\n stdout:" in text else text
    lines = [ln.strip() for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")] or lines[-3:]
    message = "\n".join(dict.fromkeys(errs)) or "the Pulumi CLI failed without a message"
    if "incorrect passphrase" in message or "failed to decrypt" in message:
        message += (
            "\n  the stack was created with another passphrase: set PULUMI_CONFIG_PASSPHRASE(_FILE) to it"
        )
    if "currently locked" in message:
        message += "\n  another update holds the stack; if none is running, `pulumi cancel` releases it"
    return message


# --------------------------------------------------------------------------- progress


_VERB = {"create": "+", "update": "~", "delete": "-", "replace": "+-", "create-replacement": "++",
         "delete-replaced": "--", "read": ">", "refresh": "~", "import": "=", "discard": "-"}
# What the line says when a step finishes (the engine's op names are not all verbs).
_DONE = {"create": "created", "update": "updated", "delete": "deleted", "replace": "replaced",
         "create-replacement": "created replacement", "delete-replaced": "deleted replaced", "read": "read",
         "refresh": "refreshed", "import": "imported", "discard": "discarded"}


class Progress:
    """Prints engine events as they stream; keeps error diagnostics for the one final message."""

    def __init__(self, out: TextIO, preview: bool) -> None:
        self.out = out
        self.preview = preview
        self.errors: list[str] = []
        self.started: dict[str, float] = {}
        self.summary: dict[str, int] | None = None

    def __call__(self, event: Any) -> None:
        if (pre := event.resource_pre_event) is not None:
            meta = pre.metadata
            if meta.op.value == "same":
                return
            self.started[meta.urn] = time.monotonic()
            action = f"would {meta.op.value}" if self.preview else meta.op.value + "..."
            self._line(f" {_VERB.get(meta.op.value, ' '):<2} {action:<18} {meta.type} {_name(meta.urn)}")
        elif (done := event.res_outputs_event) is not None and not self.preview:
            meta = done.metadata
            if meta.op.value != "same" and meta.urn in self.started:
                took = time.monotonic() - self.started.pop(meta.urn)
                done_ = _DONE.get(meta.op.value, meta.op.value)
                self._line(f"    {done_:<18} {meta.type} {_name(meta.urn)} ({took:.1f} s)")
        elif (failed := event.res_op_failed_event) is not None:
            self.errors.append(f"{_name(failed.metadata.urn)}: {failed.metadata.op.value} failed")
        elif (diag := event.diagnostic_event) is not None:
            text = diag.message.rstrip()
            if diag.severity == "error":
                where = f"{_name(diag.urn)}: " if diag.urn and "pulumi:pulumi:Stack" not in diag.urn else ""
                self.errors.append(where + _no_traceback(text.removeprefix("an unhandled error occurred: ")))
            elif diag.severity in ("warning", "info", "info#err") and not diag.ephemeral and text:
                self._line(("warning: " if diag.severity == "warning" else "") + text)
        elif (summary := event.summary_event) is not None:
            self.summary = {k: v for k, v in summary.resource_changes.items() if v}

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def error_text(self) -> str:
        # The SDK reports a program error twice (its log and the engine's "unhandled error").
        return "\n".join(dict.fromkeys(self.errors))


def _no_traceback(text: str) -> str:
    """A program bug arrives as the SDK's "inline source runtime error" with a traceback: keep its message."""
    if "Traceback (most recent call last):" not in text or os.environ.get("OPENHANDS_DEBUG"):
        return text
    head, tail = text.split("Traceback (most recent call last):", 1)
    last = [ln for ln in tail.strip().splitlines() if ln.strip() and not ln.startswith(" ")][-1:]
    return "\n".join([head.strip(), *last, "(a bug in the program: OPENHANDS_DEBUG=1 shows the traceback)"])


def _name(urn: str | None) -> str:
    return (urn or "").rsplit("::", 1)[-1]


def run_engine(session: Session, op: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """``preview`` / ``up`` / ``destroy`` with streamed progress; one message on failure."""
    from pulumi.automation import errors

    if op != "destroy":
        validate_config(session, overrides)
    progress = Progress(session.out, preview=op == "preview")
    config_file = _engine(lambda: session.config_file(overrides), "read the stack's secrets provider")
    kwargs: dict[str, Any] = {"on_event": progress, "color": "never"}
    if op != "preview":
        # The Automation API ends up/destroy with `pulumi stack history --show-secrets`, which ignores
        # --config-file and writes a new encryptionsalt into the tracked stack file; the summary needs
        # no secrets.
        kwargs["show_secrets"] = False
    if config_file:
        kwargs["config_file"] = config_file
    print(f"{op} of stack {session.name!r} ...", file=session.out, flush=True)
    try:
        result = getattr(session.stack, op)(**kwargs)
    except errors.CommandError as exc:
        if session.program.config_error:
            raise OperatorError("error: " + session.program.config_error, EXIT_USAGE) from None
        message = _plugin_hint(progress.error_text() or engine_message(str(exc)))
        raise OperatorError(f"{op} of stack {session.name!r} failed:\n{_indent(message)}", EXIT_FAILED) from None
    if progress.summary is not None:
        changes = ", ".join(f"{n} {k}" for k, n in sorted(progress.summary.items())) or "no changes"
        print(f"{op} of stack {session.name!r} done: {changes}", file=session.out)
    return result


def validate_config(session: Session, overrides: Mapping[str, Any] | None = None) -> None:
    """Parse the stack's config with components/config.py before the engine starts.

    The program checks it again under the engine; checking first means a bad config never
    reaches an `up`, which would record the root Stack resource before the program fails.
    """
    from components import config, stackfile

    if session.tracked_config.is_file():
        # Strictly first (duplicates, `yes`, `0443`, ...): `pulumi config` would end in "yaml: unmarshal errors".
        try:
            stackfile.read_config(session.tracked_config)
        except config.ConfigError as exc:
            raise OperatorError(f"error: {exc}", EXIT_USAGE) from None
    values = _engine(session.stack.get_all_config, "read the stack config")
    prefix = config.NAMESPACE + ":"
    plain = {k[len(prefix):]: v.value for k, v in values.items() if k.startswith(prefix)}
    plain.update({k[len(prefix):]: json.dumps(v) for k, v in (overrides or {}).items()})
    secret = {k[len(prefix):] for k, v in values.items() if k.startswith(prefix) and v.secret}
    try:
        config.parse(plain, secret, session.name)
    except config.ConfigError as exc:
        raise OperatorError(f"error: {exc}", EXIT_USAGE) from None


def _plugin_hint(message: str) -> str:
    missing = dict(re.findall(r"no resource plugin 'pulumi-resource-([\w-]+)' found[^\n]*? at version v([\w.+-]+)",
                              message))
    if missing:
        message += "\nThe Pulumi CLI downloads provider plugins by itself unless PULUMI_DISABLE_AUTOMATIC_PLUGIN_" \
                   "ACQUISITION is set; offline, install each from a file:\n" + "\n".join(
                       f"  pulumi plugin install resource {name} {version} --file <path to pulumi-resource-{name}>"
                       for name, version in sorted(missing.items()))
    return message


def _indent(text: str) -> str:
    return "\n".join("  " + ln for ln in text.splitlines())


# --------------------------------------------------------------------------- what Canvas needs


def outputs_of(session: Session) -> dict[str, Any]:
    return {k: v.value for k, v in _engine(session.stack.outputs, "read the stack outputs").items()}


def connect_text(stack: str, outputs: Mapping[str, Any], *, tenant: str | None = None, show_secrets: bool = False,
                 platform: str = sys.platform) -> str:
    """Agent Canvas' Host and API Key per tenant, and how a client trusts and reaches them."""
    from components import contract

    urls = outputs.get("url")
    if not isinstance(urls, dict) or not urls:
        raise OperatorError(f"stack {stack!r} has no `url` output: deploy it first (`uv run openhands up -s {stack}`)")
    if tenant is not None and tenant not in urls:
        raise OperatorError(f"no tenant {tenant!r} in stack {stack!r}; its tenants: {', '.join(sorted(urls))}")
    keys = outputs.get("apiKey") if isinstance(outputs.get("apiKey"), dict) else {}
    lines = [f"Agent Canvas settings for stack {stack!r} (Host, API Key):"]
    for name in sorted(urls) if tenant is None else [tenant]:
        key = keys.get(name) if show_secrets else None
        shown = key if key else (
            "(hidden: add --show-secrets)" if not show_secrets else "(not in the apiKey output)")
        lines += [f"  {name}:", f"    Host:    {urls[name]}", f"    API Key: {shown}"]
    lines.append(f"  Clients send the key as the {contract.AUTH_HEADER} header.")
    lines += _trust_lines(stack, outputs, platform)
    hosts = sorted({_host(u) for u in urls.values() if _host(u).endswith(".localhost")})
    if hosts:
        port = _port(next(iter(urls.values())))
        lines += [
            "Reaching *.localhost: browsers and curl resolve it to 127.0.0.1 by themselves; other clients",
            "(Python, Node, Java) ask the system resolver, which often does not. Add once to /etc/hosts:",
            f"  127.0.0.1 {' '.join(hosts)}",
            f"or, for curl against an old resolver: --resolve {hosts[0]}:{port}:127.0.0.1",
        ]
    return "\n".join(lines)


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", str(url)).split("/", 1)[0].split(":", 1)[0]


def _port(url: str) -> str:
    hostport = re.sub(r"^[a-z]+://", "", str(url)).split("/", 1)[0]
    return hostport.split(":", 1)[1] if ":" in hostport else ("443" if str(url).startswith("https") else "80")


def _trust_command(path: str, platform: str) -> str:
    if platform == "darwin":
        return f"sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {path}"
    return (f"sudo install -m 644 {path} /usr/local/share/ca-certificates/openhands.crt "
            "&& sudo update-ca-certificates")


def _trust_lines(stack: str, outputs: Mapping[str, Any], platform: str) -> list[str]:
    local = outputs.get("localCaRoot")
    if isinstance(local, str) and (m := re.search(r"docker cp (\S+):(\S+)", local)):
        container, path = m.groups()
        crt = f"openhands-{stack}-root.crt"
        return [
            f"TLS: Caddy's internal CA signs these hosts. Its root is {path} in container {container}.",
            "Trust it once (browsers; Firefox keeps its own store: import it there too):",
            f"  docker cp {container}:{path} {crt} && {_trust_command(crt, platform)}",
            f"Non-browser clients can instead point at the file: SSL_CERT_FILE={crt} / curl --cacert {crt}",
        ]
    if isinstance(outputs.get("caCertificate"), str):
        crt = f"openhands-{stack}-ca.crt"
        return [
            "TLS: the stack's own CA signs these hosts (no domain configured). Trust it once:",
            f"  uv run openhands connect -s {stack} --ca-out {crt} && {_trust_command(crt, platform)}",
        ]
    return []


# --------------------------------------------------------------------------- commands


def deployed_generation(deployment: Mapping[str, Any]) -> int | None:
    """The newest key generation in the state (``<tenant>-session-key-g<g>``), None if no keys."""
    found = [int(m.group(1)) for r in deployment.get("resources") or []
             if (m := re.search(r"-session-key-g(\d+)$", str(r.get("urn", ""))))]
    return max(found) if found else None


def cmd_up(session: Session, args: argparse.Namespace) -> int:
    run_engine(session, "up")
    print(connect_text(session.name, outputs_of(session), show_secrets=args.show_secrets), file=session.out)
    return 0


def cmd_preview(session: Session, args: argparse.Namespace) -> int:
    run_engine(session, "preview")
    return 0


def cmd_down(session: Session, args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    values = {k: v.value for k, v in _engine(session.stack.get_all_config, "read the stack config").items()}
    retain = str(values.get(f"{PROJECT}:retainData", "true")).lower() != "false"
    if not args.delete_data:
        if not retain:
            raise OperatorError(
                f"stack {session.name!r} sets retainData: false, so `down` would delete its data volumes.\n"
                "  Pass --delete-data to do that, or set retainData true to keep them."
            )
        saved = _save_secret_keys(session)
        run_engine(session, "destroy")
        print(f"stack {session.name!r} is down; its data volumes are kept"
              + (f", and the keys that decrypt them are saved in {saved} (mode 0600)" if saved else ""),
              file=session.out)
        return 0
    if not _deployed(session):
        # `--delete-data` works by an up without the retain flags, then a destroy: on an empty stack that
        # up would deploy every tenant again first. Data kept by an earlier `down` is outside the stack.
        print(f"stack {session.name!r} has nothing deployed, so nothing was deleted. Data volumes kept by an "
              f"earlier `down` are no longer in the stack: `uv run openhands up -s {session.name}` re-attaches "
              f"them, then `uv run openhands down -s {session.name} --delete-data` deletes them.", file=session.out)
        return 0
    if not args.yes:
        if not stdin.isatty():
            raise OperatorError("--delete-data deletes every tenant's data for good: confirm with --yes")
        print(f"This deletes every tenant's data of stack {session.name!r} for good. "
              "Type the stack name to confirm: ", end="", file=session.out, flush=True)
        if stdin.readline().strip() != session.name:
            raise OperatorError("not confirmed; nothing was changed")
    # Resources lose their retain flag first (an up with retainData false), then go.
    overrides = {f"{PROJECT}:retainData": False}
    run_engine(session, "up", overrides)
    run_engine(session, "destroy", overrides)
    print(f"stack {session.name!r} is down and its data is deleted", file=session.out)
    return 0


def _deployed(session: Session) -> bool:
    """Whether the stack's state holds any resource beyond the root Stack and providers."""
    resources = (_engine(session.stack.export_stack, "read the state").deployment or {}).get("resources") or []
    return any(not str(r.get("type", "")).startswith(("pulumi:pulumi:Stack", "pulumi:providers:"))
               for r in resources)


def _save_secret_keys(session: Session) -> Path | None:
    """Kept volumes outlive the generated keys: save the ones that decrypt them (see docs/teardown.md)."""
    outputs = outputs_of(session)
    keys = outputs.get("secretKeys")
    if not keys:
        return None
    path = session.settings.local_dir / session.name / "secret-keys.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(keys, fh, indent=2)
    return path


def cmd_rotate(session: Session, args: argparse.Namespace) -> int:
    from pulumi import automation as auto
    from pulumi.automation import errors

    key = f"{PROJECT}:keys.rotation"
    try:
        current = int(session.stack.get_config(key, path=True).value)
    except errors.CommandError:
        current = 0  # not set: generation 0
    except ValueError:
        raise OperatorError(f"{key} in {session.tracked_config} is not an integer") from None
    deployed = deployed_generation(_engine(session.stack.export_stack, "read the state").deployment or {})
    if deployed is not None and deployed < current:
        print(f"keys.rotation is {current} but the deployed keys are generation {deployed}: "
              "finishing that rotation (not raising it again)", file=session.out)
    else:
        _engine(lambda: session.stack.set_config(key, auto.ConfigValue(str(current + 1)), path=True),
                "set keys.rotation")
        print(f"keys.rotation: {current} -> {current + 1} (in {session.tracked_config.name})", file=session.out)
    return cmd_up(session, args)


def cmd_status(session: Session, args: argparse.Namespace) -> int:
    from components import contract, smoke

    outputs = outputs_of(session)
    ca_file = args.ca_file or _fetch_local_ca(session, outputs)
    try:
        code, text, _ = smoke.run(session.name, outputs, timeout=args.timeout or float(contract.STARTUP_BUDGET_SECONDS),
                                  ca_file=ca_file)
    except smoke.SmokeError as exc:
        raise OperatorError(f"status: {exc}") from None
    print(text, file=session.out)
    return code


def _fetch_local_ca(session: Session, outputs: Mapping[str, Any]) -> str | None:
    """Caddy's internal root CA of a local stack, copied out of its container (status trusts it)."""
    found = re.search(r"docker cp (\S+):(\S+)", str(outputs.get("localCaRoot") or ""))
    docker = shutil.which("docker")
    if not found or docker is None:
        return None
    container, path = found.groups()
    dest = session.settings.local_dir / session.name / "caddy-root.crt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([docker, "cp", f"{container}:{path}", str(dest)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        print(f"note: could not copy Caddy's root CA out of {container} ({proc.stderr.strip()}); "
              "pass --ca-file", file=session.out)
        return None
    print(f"trusting Caddy's root CA from container {container} (copied to {dest})", file=session.out)
    return str(dest)


def cmd_connect(session: Session, args: argparse.Namespace) -> int:
    outputs = outputs_of(session)
    if args.ca_out:
        ca = outputs.get("caCertificate")
        if not isinstance(ca, str):
            raise OperatorError(f"stack {session.name!r} exports no caCertificate (its CA is public or Caddy's)")
        Path(args.ca_out).write_text(ca, encoding="utf-8")
    print(connect_text(session.name, outputs, tenant=args.tenant, show_secrets=args.show_secrets), file=session.out)
    return 0


COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "up": (cmd_up, "deploy the stack (creating it if needed) and print what Agent Canvas needs"),
    "preview": (cmd_preview, "show what `up` would change"),
    "down": (cmd_down, "remove the deployment; data volumes are kept unless --delete-data"),
    "rotate": (cmd_rotate, "rotate every tenant's keys: keys.rotation + 1, then up"),
    "status": (cmd_status, "smoke-check every tenant: /ready, API key accepted, no key refused, WebSocket"),
    "connect": (cmd_connect, "print Agent Canvas' Host and API Key per tenant, and how to trust the TLS"),
}


PREFLIGHT_COMMANDS = ("up", "preview", "rotate")
SKIP_PREFLIGHT_ENV = "OPENHANDS_SKIP_PREFLIGHT"


def run_preflight(project: Path, stack: str, out: TextIO, *, strict: bool, exe: str | None = None) -> int:
    """Print one line per check of components/preflight.py; OperatorError (exit 2) if one blocks."""
    from components import config, preflight

    print(f"preflight of stack {stack!r}:", file=out, flush=True)
    try:
        report = preflight.run(project, stack, exe=exe)
    except config.ConfigError as exc:
        raise OperatorError(f"error: {exc}", EXIT_USAGE) from None
    print(report.text(), file=out, flush=True)
    blocking = report.blocking(strict)
    if blocking:
        raise OperatorError(f"preflight: {len(blocking)} check(s) failed ({', '.join(r.name for r in blocking)}); "
                            "nothing was changed", EXIT_USAGE)
    unknown = sum(r.ok is None for r in report.results)
    print(f"preflight: {len(report.results) - unknown} checks passed"
          + (f", {unknown} could not run (--strict makes them fail)" if unknown else ""), file=out, flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openhands", description="Deploy and operate the OpenHands agent server (Pulumi Automation API).",
        epilog="The backend, passphrase and stack are set up on first use; see README.md and docs/operator.md.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-s", "--stack", default=DEFAULT_STACK,
                        help="stack name, stacks/Pulumi.<stack>.yaml (default: %(default)s)")
    cmds = {name: sub.add_parser(name, parents=[common], help=text, description=text)
            for name, (_, text) in COMMANDS.items()}
    doctor = "check what the stack needs before `up` (also run by up, preview and rotate); exit 2 if one fails"
    cmds["doctor"] = sub.add_parser("doctor", parents=[common], help=doctor, description=doctor)
    for name in ("doctor", *PREFLIGHT_COMMANDS):
        cmds[name].add_argument("--strict", action="store_true",
                                help="a check that cannot run (offline, no permission) fails too")
    for name in PREFLIGHT_COMMANDS:
        cmds[name].add_argument("--skip-preflight", action="store_true",
                                default=bool(os.environ.get(SKIP_PREFLIGHT_ENV)),
                                help=f"start the engine without the checks (also: {SKIP_PREFLIGHT_ENV}=1)")
    for name in ("up", "rotate", "connect"):
        cmds[name].add_argument("--show-secrets", action="store_true", help="print the API keys")
    cmds["down"].add_argument("--delete-data", action="store_true", help="also delete every tenant's data")
    cmds["down"].add_argument("-y", "--yes", action="store_true", help="do not ask before --delete-data")
    cmds["status"].add_argument("--ca-file", metavar="PEM", help="trust this CA (e.g. the local Caddy root)")
    cmds["status"].add_argument("--timeout", type=float, metavar="S", help="seconds each tenant has to be ready")
    cmds["connect"].add_argument("tenant", nargs="?", help="only this tenant")
    cmds["connect"].add_argument("--ca-out", metavar="FILE", help="write the stack's CA certificate here (vm)")
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage (code 2) or help (code 0)
        return int(exc.code or 0)
    try:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.stack):
            raise OperatorError(f"-s {args.stack!r}: a stack name is letters, digits, '-', '_' or '.'")
        project = find_project()
        if not (project / "stacks" / f"Pulumi.{args.stack}.yaml").is_file():
            shipped = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (project / "stacks").glob("Pulumi.*.yaml"))
            raise OperatorError(f"no stacks/Pulumi.{args.stack}.yaml; the shipped stacks: {', '.join(shipped)}")
        if args.command == "doctor":
            return run_preflight(project, args.stack, out, strict=args.strict)
        exe = pulumi_cli()
        if args.command in PREFLIGHT_COMMANDS and not args.skip_preflight:
            # Before the stack is even selected: a failure leaves no stack and no state behind.
            run_preflight(project, args.stack, out, strict=args.strict, exe=exe)
        s = settings(project)
        for note in s.notes:
            print(note, file=out)
        session = open_stack(args.stack, s, exe, out, create=args.command in ("up", "preview"))
        return COMMANDS[args.command][0](session, args)
    except OperatorError as exc:
        print(str(exc) if str(exc).startswith("error:") else f"error: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130


if __name__ == "__main__":
    sys.exit(main())
