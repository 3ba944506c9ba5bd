"""Preflight: what a stack needs before the engine starts, each named in a second or two.

``openhands doctor [-s STACK]`` runs these checks alone; ``up``, ``preview`` and ``rotate`` run them
before the engine starts and stop with exit 2 when one fails, so a missing prerequisite never turns
into a provider timeout or a half-applied stack, and nothing is recorded in the state (the stack is
not even created). This module is the operator's (openhands_cli/main.py); the Pulumi program never
imports it.

Each check returns one ``Result``: what was checked, what was found, and the fix when it fails.
``ok`` is True (passed), False (failed: blocks) or None (could not check: offline, no permission, a
secret this run cannot decrypt; blocks only with ``--strict``). Checks per stack (docs/operator.md):

* every stack: the Python against ``.python-version``, the Pulumi CLI version, each provider plugin
  the model needs (installed, on PATH, or downloadable by the CLI);
* Docker on this machine (``local``): the engine answers, its API version, the published ports are
  free (or held by this stack's own proxy), disk space for the images and volumes, and live-restore
  (a warning when off: a crash of dockerd would leave every tenant down);
* Docker on a VM (``vm``): the SSH client and the deploy key (the engine is on the VM the stack
  creates), plus the AWS checks;
* Kubernetes: the context answers with a supported version, the StorageClass (or a default one), the
  IngressClass and its controller's namespace (or, with ``routing: gateway``, the Gateway and
  GatewayClass Accepted and a listener admitting the tenants), the cert-manager issuer or TLS Secret,
  the namespace free or this stack's, and RBAC (SelfSubjectAccessReview) for every verb the provider
  uses;
* ECS (and VM): AWS credentials and region, the hosted zone and certificate where configured;
* Modal: a token.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import contract
from openhands_cli import workspace

Which = Callable[[str], str | None]
Run = Callable[..., subprocess.CompletedProcess]

GIB = 1024**3
# Disk the local engine needs: the agent-server image when not pulled yet (compressed layers plus
# their unpacked copy), Caddy's, and room for each tenant's state volume to start.
AGENT_IMAGE_BYTES = 3 * GIB
CADDY_IMAGE_BYTES = GIB // 8
PER_TENANT_BYTES = GIB
KUBE_TIMEOUT = (3, 10)  # connect, read (seconds) for each Kubernetes API call
NET_TIMEOUT = 5.0
PLUGIN_URL = "https://get.pulumi.com/releases/plugins/pulumi-resource-{name}-v{version}-{os}-{arch}.tar.gz"


@dataclass(frozen=True)
class Result:
    """One check: ``ok`` True passed, False failed (blocks), None could not check (blocks with --strict)."""

    name: str
    ok: bool | None
    found: str
    fix: str = ""

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "warn"}[self.ok]

    def line(self) -> str:
        text = f"{self.name}: {self.found}"
        if self.fix and self.ok is not True:
            text += f" -> fix: {self.fix}"
        return f"{self.status:<4}  " + " ".join(text.split())  # one line, whatever the found text held


@dataclass
class Report:
    stack: str
    results: list[Result] = field(default_factory=list)

    def blocking(self, strict: bool = False) -> list[Result]:
        return [r for r in self.results if r.ok is False or (strict and r.ok is None)]

    def text(self) -> str:
        return "\n".join(r.line() for r in self.results)


def _na(name: str, why: str) -> Result:
    return Result(name, None, f"not checked: {why}")


# --------------------------------------------------------------------------- every stack


def check_python(project: Path, version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Result:
    """The interpreter against the pin in .python-version (the version the suite runs on)."""
    running = ".".join(map(str, version))
    try:
        pinned = (project / ".python-version").read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return Result("Python", None, f"{running}; no .python-version in {project}", "restore .python-version")
    same = running == pinned or running.startswith(pinned + ".")
    if same:
        return Result("Python", True, f"{running} (pinned in .python-version: {pinned})")
    return Result("Python", None, f"{running}, but the tested version is {pinned} (.python-version)",
                  "run through `uv run`, which uses the pinned version")


def check_cli(which: Which = shutil.which, run: Run = subprocess.run) -> tuple[Result, str | None]:
    """The `pulumi` on PATH and its version (>= workspace.MIN_CLI_VERSION). Returns (result, its path)."""
    need = ".".join(map(str, workspace.MIN_CLI_VERSION))
    name = f"Pulumi CLI (>= {need})"
    exe = which("pulumi")
    if exe is None:
        return Result(name, False, "no `pulumi` on PATH", workspace.INSTALL_HINT), None
    try:
        out = run([exe, "version"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return Result(name, False, f"`{exe} version` failed ({exc})", f"reinstall: {workspace.INSTALL_HINT}"), None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        return Result(name, False, f"`{exe} version` printed {out!r}", f"reinstall: {workspace.INSTALL_HINT}"), None
    if tuple(int(p) for p in match.groups()) < workspace.MIN_CLI_VERSION:
        return Result(name, False, f"{exe} is {out}", f"upgrade: {workspace.INSTALL_HINT}"), None
    return Result(name, True, f"{exe} {out}"), exe


# The provider plugins each model's program registers resources of (random: every stack's keys; the
# engine loads a plugin when the first resource of its provider registers). tests/operator/test_doctor.py
# checks this against what the stacks render.
PLUGINS: dict[str, tuple[str, ...]] = {
    "local": ("docker", "random"),
    "vm": ("aws", "command", "docker", "random"),  # + tls for the stack's own CA (tls: selfsigned)
    "ecs": ("aws", "random"),
    "kubernetes": ("kubernetes", "random"),
    "modal": ("random",),
}


def plugins_for(cfg: Any) -> tuple[str, ...]:
    kind = kind_of(cfg)
    if kind == "vm" and cfg.settings.tls_mode == "selfsigned":
        return tuple(sorted((*PLUGINS[kind], "tls")))
    return PLUGINS[kind]


def kind_of(cfg: Any) -> str:
    """local | vm | ecs | kubernetes | modal."""
    if cfg.model == "docker":
        return "vm" if cfg.settings.engine == "vm" else "local"
    return cfg.model


def plugin_version(name: str) -> str:
    """The plugin version the installed ``pulumi_<name>`` SDK asks the engine for (its pulumi-plugin.json),
    read without importing the SDK."""
    import importlib.util

    spec = importlib.util.find_spec(f"pulumi_{name}")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "pulumi-plugin.json"
        if path.is_file():
            return str(json.loads(path.read_text(encoding="utf-8"))["version"])
    raise LookupError(f"the pulumi_{name} SDK is not installed (uv sync)")


def installed_plugins(exe: str, run: Run = subprocess.run, cwd: Path | None = None) -> set[tuple[str, str]]:
    """(name, version) of the resource plugins in the CLI's plugin cache (`pulumi plugin ls --json`)."""
    proc = run([exe, "plugin", "ls", "--json"], capture_output=True, text=True, timeout=60, check=True, cwd=cwd)
    return {(p["name"], p["version"].lstrip("v")) for p in json.loads(proc.stdout or "[]") or []
            if p.get("kind") == "resource"}


def _download_url(name: str, version: str) -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    osname = {"darwin": "darwin", "win32": "windows"}.get(sys.platform, "linux")
    return PLUGIN_URL.format(name=name, version=version, os=osname, arch=arch)


def _head(url: str) -> int:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=NET_TIMEOUT) as response:  # noqa: S310 - a fixed https URL
        return int(response.status)


def check_plugins(
    names: Sequence[str],
    installed: set[tuple[str, str]] | None,
    *,
    which: Which = shutil.which,
    environ: Mapping[str, str] = os.environ,
    fetch: Callable[[str], int] = _head,
    why_unknown: str = "",
) -> list[Result]:
    """Each plugin: on PATH (the engine prefers it), in the plugin cache at the SDK's exact version, or
    downloadable (the CLI fetches it on first use unless PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION)."""
    out = []
    no_download = environ.get("PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION", "").lower() in ("1", "true")
    for name in names:
        try:
            version = plugin_version(name)
        except LookupError as exc:
            out.append(Result(f"plugin {name}", False, str(exc), "uv sync"))
            continue
        label = f"plugin {name} {version}"
        install = f"pulumi plugin install resource {name} {version}"
        offline = f"offline: {install} --file <path to pulumi-resource-{name}>"
        if (ambient := which(f"pulumi-resource-{name}")) is not None:
            out.append(Result(label, True, f"on PATH at {ambient} (the engine uses it)"))
        elif installed is None:
            out.append(_na(label, why_unknown or "the plugin cache could not be listed"))
        elif (name, version) in installed:
            out.append(Result(label, True, "installed"))
        elif no_download:
            others = sorted(v for n, v in installed if n == name)
            have = f" (installed: {', '.join(others)}; the engine needs exactly {version})" if others else ""
            out.append(Result(label, False, "not installed, and PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION is set"
                              + have, f"{install} (needs the network), or {offline}"))
        else:
            url = _download_url(name, version)
            try:
                status = fetch(url)
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                reason = getattr(exc, "reason", exc)
                out.append(Result(label, None, f"not installed; the CLI downloads it on first use, but "
                                  f"get.pulumi.com did not answer here ({reason})", f"{install}, or {offline}"))
                continue
            if status == 200:
                out.append(Result(label, True, "not installed; downloadable (the CLI fetches it on first use)"))
            else:  # the CLI also tries GitHub releases: not a certain failure
                out.append(Result(label, None, f"not installed, and {url} answered HTTP {status}",
                                  f"{install}, or {offline}"))
    return out


# --------------------------------------------------------------------------- the stack's config


@dataclass
class StackInputs:
    """The stack's parsed config, its ``aws:*`` values, and which secret keys could not be read."""

    cfg: Any  # config.StackConfig
    aws: dict[str, str] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)  # openhands:<key> whose secrets this run cannot decrypt


def _has_secure(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"secure"} or any(_has_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secure(v) for v in value)
    return False


def _without_secure(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_secure(v) for k, v in value.items() if not (isinstance(v, dict) and set(v) == {"secure"})}
    if isinstance(value, list):
        return [_without_secure(v) for v in value]
    return value


def _engine_env(project: Path, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The backend and passphrase the operator would use, without creating them (None: no stack can exist)."""
    env: dict[str, str] = {}
    local = project / workspace.LOCAL_DIR
    if not environ.get("PULUMI_BACKEND_URL") and workspace.logged_in_elsewhere(environ) is None:
        if not (local / "state").is_dir():
            return None
        env["PULUMI_BACKEND_URL"] = (local / "state").as_uri()
    if not any(environ.get(k) for k in workspace.PASSPHRASE_ENV):
        if not (local / "passphrase").is_file():
            return None
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(local / "passphrase")
    return env


def _engine_values(project: Path, stack: str, environ: Mapping[str, str]) -> dict[str, tuple[str, bool]] | None:
    """The stack's config with secrets decrypted, if the stack exists (read only: nothing is created)."""
    from pulumi import automation as auto

    env = _engine_env(project, environ)
    if env is None:
        return None
    try:
        ws = auto.LocalWorkspace(work_dir=str(project), env_vars=env,
                                 pulumi_command=auto.PulumiCommand(skip_version_check=True))
        values = auto.Stack.select(stack, ws).get_all_config()
    except (auto.errors.CommandError, OSError):
        return None
    return {k: (v.value, v.secret) for k, v in values.items()}


def load_inputs(project: Path, stack: str, *, exe: str | None, environ: Mapping[str, str] = os.environ) -> StackInputs:
    """The tracked stack file, strictly parsed (ConfigError as `up` reports it). Secret values come from the
    engine when the stack exists; otherwise the checks that need them say they could not check."""
    from components import config
    from components.config import stackfile

    path = project / "stacks" / f"Pulumi.{stack}.yaml"
    raw = stackfile.read_config(path)
    secure = {k for k, v in raw.items() if _has_secure(v)}
    engine = _engine_values(project, stack, environ) if secure and exe else None
    if engine is not None:
        values = {k: v for k, (v, _) in engine.items()}
        secret_keys = {k for k, (_, s) in engine.items() if s}
        unreadable: set[str] = set()
    else:
        values = {}
        for key, value in raw.items():
            if isinstance(value, dict) and set(value) == {"secure"}:
                continue  # a secret value: not readable without the stack
            value = _without_secure(value)
            values[key] = value if isinstance(value, str) else json.dumps(value)
        secret_keys, unreadable = set(), secure
    prefix = config.NAMESPACE + ":"
    plain = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    cfg = config.parse(plain, {k[len(prefix):] for k in secret_keys if k.startswith(prefix)}, stack)
    aws = {k: str(v) for k, v in values.items() if k.startswith("aws:")}
    return StackInputs(cfg, aws, {k[len(prefix):] for k in unreadable if k.startswith(prefix)})


# --------------------------------------------------------------------------- Docker (local)


class _DockerSdk:
    """The engine through the Docker SDK for Python (DOCKER_HOST, TLS and ssh:// as docker-py reads them)."""

    def __init__(self, host: str | None) -> None:
        import docker

        if host:
            client = docker.DockerClient(base_url=host, version="auto", timeout=int(NET_TIMEOUT),
                                         use_ssh_client=host.startswith("ssh://"))
        else:
            client = docker.from_env(version="auto", timeout=int(NET_TIMEOUT))
        self.api = client.api

    def version(self) -> dict[str, Any]:
        return self.api.version()

    def root_dir(self) -> str:
        return str(self.api.info().get("DockerRootDir") or "")

    def live_restore(self) -> bool | None:
        """``docker info``'s LiveRestoreEnabled (None: the engine does not say)."""
        value = self.api.info().get("LiveRestoreEnabled")
        return value if isinstance(value, bool) else None

    def publishers(self, port: int) -> list[tuple[str, str]]:
        found = self.api.containers(filters={"publish": str(port)})
        return [(c["Names"][0].lstrip("/"), (c.get("Labels") or {}).get(contract.STACK_LABEL, "")) for c in found]

    def has_image(self, ref: str) -> bool:
        import docker.errors

        try:
            self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True


class _DockerCli:
    """The same through the docker CLI, when the SDK is not installed (`uv sync --no-dev`)."""

    def __init__(self, host: str | None, exe: str, run: Run = subprocess.run) -> None:
        self.base = [exe, *(["-H", host] if host else [])]
        self.run = run
        self.version()  # raises when the engine does not answer

    def _call(self, *args: str) -> str:
        proc = self.run([*self.base, *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise OSError(proc.stderr.strip() or f"docker {args[0]} failed")
        return proc.stdout

    def version(self) -> dict[str, Any]:
        server = json.loads(self._call("version", "--format", "{{json .Server}}")) or {}
        if not server:
            raise OSError("the docker CLI reached no engine")
        return {"Version": server.get("Version"), "ApiVersion": server.get("APIVersion") or server.get("ApiVersion")}

    def root_dir(self) -> str:
        return self._call("info", "--format", "{{.DockerRootDir}}").strip()

    def live_restore(self) -> bool | None:
        return {"true": True, "false": False}.get(self._call("info", "--format", "{{.LiveRestoreEnabled}}").strip())

    def publishers(self, port: int) -> list[tuple[str, str]]:
        out = self._call("ps", "--filter", f"publish={port}", "--format",
                         '{{.Names}}\t{{.Label "' + contract.STACK_LABEL + '"}}')
        return [tuple(ln.split("\t", 1)) if "\t" in ln else (ln, "") for ln in out.splitlines() if ln]  # type: ignore[misc]

    def has_image(self, ref: str) -> bool:
        return self.run([*self.base, "image", "inspect", ref], capture_output=True, timeout=30).returncode == 0


def docker_engine(host: str | None, *, which: Which = shutil.which) -> Any:
    """A client of the engine the stack deploys to; raises if it does not answer."""
    try:
        import docker  # noqa: F401 - the SDK when installed (a dev dependency, installed by `uv sync`)
    except ImportError:
        exe = which("docker")
        if exe is None:
            raise OSError("neither the Docker SDK for Python nor the docker CLI is installed") from None
        return _DockerCli(host, exe)
    return _DockerSdk(host)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def _is_local_engine(host: str | None) -> bool:
    if not host or host.startswith(("unix://", "npipe://")):
        return True
    return bool(re.match(r"^tcp://(localhost|127\.[\d.]+|\[::1\])(:\d+)?/?$", host))


def docker_checks(cfg: Any, stack: str, *, environ: Mapping[str, str] = os.environ,
                  engine_factory: Callable[[str | None], Any] = docker_engine,
                  free_bytes: Callable[[str], int] = lambda p: shutil.disk_usage(p).free) -> list[Result]:
    from components import contract

    settings = cfg.settings
    host = settings.host or environ.get("DOCKER_HOST") or None
    where = host or "the default socket (unix:///var/run/docker.sock)"
    need_api = contract.DOCKER_MIN_API
    try:
        engine = engine_factory(host)
        version = engine.version()
    except Exception as exc:  # noqa: BLE001 - whatever the client raises, the engine did not answer
        message = " ".join(str(exc).split())[:300]
        fix = ("start the Docker engine (e.g. `sudo systemctl start docker`, or Docker Desktop)"
               + (", or fix docker.host / DOCKER_HOST" if host else ""))
        return [Result("Docker engine", False, f"{where} did not answer ({message})", fix),
                _na(f"Docker API version (>= {need_api})", "the engine did not answer"),
                _na("host ports", "the engine did not answer"), _na("disk space", "the engine did not answer")]
    out = [Result("Docker engine", True, f"{where}: Docker {version.get('Version')}")]
    api = str(version.get("ApiVersion") or "")
    if _version(api) >= _version(need_api):
        out.append(Result(f"Docker API version (>= {need_api})", True, api))
    else:
        out.append(Result(f"Docker API version (>= {need_api})", False, f"{api} (Docker {version.get('Version')})",
                          "upgrade the engine to Docker >= 20.10 (e.g. Debian 12's docker.io)"))
    out += [check_port(port, key, settings.publish_address, stack, engine, local=_is_local_engine(host))
            for port, key in ((settings.https_port, "docker.httpsPort"), (settings.http_port, "docker.httpPort"))]
    out.append(check_disk(cfg, engine, local=_is_local_engine(host), free_bytes=free_bytes))
    out.append(check_live_restore(engine, local=_is_local_engine(host)))
    return out


LIVE_RESTORE_FIX = ('add "live-restore": true to /etc/docker/daemon.json{where} (merged with what is there), then '
                    "`sudo systemctl reload docker`: a reload applies it, running containers keep running "
                    "(Docker Desktop: Settings > Docker Engine)")


def check_live_restore(engine: Any, *, local: bool = True) -> Result:
    """The engine's live-restore. Off, a crash of dockerd leaves every tenant down until someone starts the
    containers again (docs/faults.md): a warning, not a failure, since the stack leaves the daemon as it is."""
    name = "Docker live-restore"
    try:
        enabled = engine.live_restore()
    except Exception as exc:  # noqa: BLE001 - the engine did not say (an older fake, a CLI error)
        return _na(name, f"the engine did not report it ({' '.join(str(exc).split())[:120]})")
    if enabled is None:
        return _na(name, "the engine does not report LiveRestoreEnabled")
    if enabled:
        return Result(name, True, "on: containers keep running while dockerd restarts or crashes")
    return Result(name, None, "off: if dockerd crashes, every tenant stays down until its container is started "
                  "again (a graceful restart recovers by itself)",
                  LIVE_RESTORE_FIX.format(where="" if local else " of the engine's host"))


def _bind_error(address: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc
    return None


def _listening(address: str, port: int) -> bool:
    target = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    try:
        with socket.create_connection((target, port), timeout=1):
            return True
    except OSError:
        return False


def check_port(port: int, key: str, address: str, stack: str, engine: Any, *, local: bool) -> Result:
    """The port the proxy publishes: free, or published by this stack's own proxy (a redeploy)."""
    name = f"host port {address}:{port}"
    ours = f"{workspace.PROJECT}/{stack}"
    try:
        publishers = engine.publishers(port)
    except Exception:  # noqa: BLE001 - the listing is a refinement; the bind test below still runs
        publishers = []
    mine = [n for n, label in publishers if label == ours]
    others = [n for n, label in publishers if label != ours]
    if mine and not others:
        return Result(name, True, f"published by this stack's proxy ({', '.join(mine)})")
    fix = f"stop what holds it, or set {key} to a free port"
    if others:
        return Result(name, False, f"published by container {', '.join(others)}", fix)
    if not local:
        return Result(name, True, "not published by any container on the remote engine (other processes on "
                                  "that host are not visible from here)")
    error = _bind_error(address, port)
    if error is None:
        return Result(name, True, "free")
    if error.errno == 98 or "in use" in str(error).lower():  # EADDRINUSE
        return Result(name, False, "in use by another process on this machine", fix + " (`ss -ltnp` names it)")
    if error.errno == 99:  # EADDRNOTAVAIL
        return Result(name, False, f"{address} is not an address of this machine", "fix docker.bindAddress")
    if _listening(address, port):  # EACCES below 1024: the engine (root) may bind it, so probe instead
        return Result(name, False, "in use (something accepts connections on it)", fix)
    return Result(name, True, f"free (nothing answers; binding it here failed with {error.strerror}, "
                              "which the engine as root does not)")


def check_disk(cfg: Any, engine: Any, *, local: bool, free_bytes: Callable[[str], int]) -> Result:
    """Free space where the engine keeps images and volumes, against what this stack adds."""
    name = "disk space"
    try:
        root = engine.root_dir()
    except Exception as exc:  # noqa: BLE001
        return _na(name, f"the engine did not say where it keeps its data ({exc})")
    if not local or not root or not Path(root).exists():
        return _na(name, f"the engine's data root {root or '(unknown)'} is not on this machine")
    settings = cfg.settings
    need, parts = PER_TENANT_BYTES * len(cfg.tenants), [f"{len(cfg.tenants)} GiB for tenant volumes"]
    for ref, size in ((cfg.image, AGENT_IMAGE_BYTES), (settings.caddy_image, CADDY_IMAGE_BYTES)):
        try:
            present = engine.has_image(ref)
        except Exception:  # noqa: BLE001 - unknown: count it as a pull
            present = False
        if not present:
            need += size
            parts.append(f"{size / GIB:.2g} GiB to pull {ref}")
    try:
        free = free_bytes(root)
    except OSError as exc:
        return _na(name, f"{root}: {exc.strerror}")
    found = f"{free / GIB:.1f} GiB free at {root}; needs ~{need / GIB:.1f} GiB ({', '.join(parts)})"
    if free >= need:
        return Result(name, True, found)
    return Result(name, False, found, f"free space under {root} (e.g. `docker system prune`)")


# --------------------------------------------------------------------------- Docker on a VM


def _key_blob(line: str) -> str:
    parts = line.split()
    return parts[1] if len(parts) > 1 else ""


def check_vm_ssh(cfg: Any, *, which: Which = shutil.which, run: Run = subprocess.run,
                 environ: Mapping[str, str] = os.environ) -> Result:
    """The Docker provider reaches the VM's engine over SSH with the private half of vm.sshPublicKey."""
    vm = cfg.settings.vm
    name = "SSH deploy key (vm.sshPublicKey)"
    if which("ssh") is None:
        return Result(name, False, "no `ssh` client on PATH (the Docker provider reaches the VM with it)",
                      "install OpenSSH's client (e.g. `apt-get install openssh-client`)")
    want = _key_blob(vm.ssh_public_key)
    if vm.ssh_private_key_path:
        path = str(Path(vm.ssh_private_key_path).expanduser())
        keygen = which("ssh-keygen")
        if keygen is None:
            return Result(name, True, f"{path} (not compared with sshPublicKey: no ssh-keygen)")
        proc = run([keygen, "-y", "-f", path], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            return Result(name, None, f"{path}: ssh-keygen could not read it ({proc.stderr.strip()[:120]})",
                          "a passphrase-protected key works through the SSH agent: ssh-add it and remove "
                          "sshPrivateKeyPath")
        if _key_blob(proc.stdout) == want:
            return Result(name, True, f"{path} matches sshPublicKey")
        return Result(name, False, f"{path} is not the private half of sshPublicKey",
                      "set docker.vm.sshPrivateKeyPath to the matching key, or sshPublicKey to its .pub")
    if not environ.get("SSH_AUTH_SOCK"):
        return Result(name, False, "no sshPrivateKeyPath and no SSH agent (SSH_AUTH_SOCK is unset)",
                      "eval $(ssh-agent) && ssh-add <the private key>, or set docker.vm.sshPrivateKeyPath")
    add = which("ssh-add")
    proc = run([add or "ssh-add", "-L"], capture_output=True, text=True, timeout=10, env={**environ})
    if proc.returncode not in (0, 1):  # 1: the agent holds no key; 2: no agent answers
        return Result(name, False, f"the SSH agent at SSH_AUTH_SOCK does not answer ({proc.stderr.strip()[:120]})",
                      "start one (eval $(ssh-agent)) and ssh-add the key, or set docker.vm.sshPrivateKeyPath")
    if want in {_key_blob(ln) for ln in proc.stdout.splitlines()}:
        return Result(name, True, "the SSH agent holds it")
    return Result(name, False, "the SSH agent does not hold the private half of sshPublicKey",
                  "ssh-add <the private key>, or set docker.vm.sshPrivateKeyPath")


# --------------------------------------------------------------------------- AWS (ecs, vm)


def aws_region(aws: Mapping[str, str], environ: Mapping[str, str], session: Any = None) -> tuple[str | None, str]:
    """The region the aws provider uses, and where it came from."""
    if aws.get("aws:region"):
        return aws["aws:region"], "aws:region in the stack config"
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if environ.get(var):
            return environ[var], var
    if session is not None:
        try:
            region = session.get_config_variable("region")
        except Exception:  # noqa: BLE001 - a broken profile: no region from it
            region = None
        if region:
            return region, f"profile {session.profile or 'default'}"
    return None, ""


def _aws_error(exc: Exception) -> tuple[str, str]:
    """(code, message) of a botocore error; code '' for a network problem."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        return str(err.get("Code") or "error"), str(err.get("Message") or exc)
    return "", " ".join(str(exc).split())[:200]


_BAD_CREDENTIALS = ("InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch",
                    "UnrecognizedClientException", "InvalidToken", "AuthFailure")


def aws_checks(cfg: Any, aws: Mapping[str, str], *, environ: Mapping[str, str] = os.environ,
               session: Any = None, client: Callable[[str, str | None], Any] | None = None) -> list[Result]:
    """Credentials (and whose they are), the region, and the hosted zone and certificate the config names.

    With botocore (a dev dependency) these are real AWS calls, with short timeouts; without it only the
    presence of credentials and a region is checked."""
    settings = cfg.settings
    zone = getattr(settings, "hosted_zone_id", None) or (settings.vm.hosted_zone_id if kind_of(cfg) == "vm" else None)
    certificate = getattr(settings, "certificate_arn", None)
    try:
        import botocore.config
        import botocore.session
    except ImportError:
        return _aws_without_botocore(aws, environ, zone, certificate)
    if session is None:
        session = botocore.session.Session(profile=aws.get("aws:profile") or None)
        if aws.get("aws:accessKey") and aws.get("aws:secretKey"):
            session.set_credentials(aws["aws:accessKey"], aws["aws:secretKey"], aws.get("aws:token"))
    region, region_from = aws_region(aws, environ, session)
    if client is None:
        conf = botocore.config.Config(connect_timeout=NET_TIMEOUT, read_timeout=10, retries={"max_attempts": 2})

        def client(service: str, where: str | None) -> Any:
            return session.create_client(service, region_name=where or "us-east-1", config=conf)

    out = []
    if region:
        out.append(Result("AWS region", True, f"{region} ({region_from})"))
    else:
        out.append(Result("AWS region", False, "none: no aws:region in the stack config, AWS_REGION or profile",
                          "add `aws:region: us-east-1` (your region) under config: in the stack file"))
    try:
        creds = session.get_credentials()
    except Exception as exc:  # noqa: BLE001 - a missing profile, a broken SSO cache ...
        creds, problem = None, " ".join(str(exc).split())[:200]
    else:
        problem = "none found (environment, shared files, SSO, instance role)"
    if creds is None:
        out.append(Result("AWS credentials", False, problem,
                          "`aws configure` or `aws sso login`, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"))
        out += [_na(f"Route 53 hosted zone {zone}", "no AWS credentials")] if zone else []
        out += [_na("ACM certificate", "no AWS credentials")] if certificate else []
        return out
    method = getattr(creds, "method", "") or "found"
    try:
        who = client("sts", region).get_caller_identity()
    except Exception as exc:  # noqa: BLE001
        code, message = _aws_error(exc)
        if code in _BAD_CREDENTIALS:
            out.append(Result("AWS credentials", False, f"from {method}, refused by AWS ({code}: {message})",
                              "renew them (`aws sso login`, `aws configure`)"))
            return out
        out.append(Result("AWS credentials", None, f"from {method}; not verified: STS did not answer ({message})",
                          "check the network (or a proxy) to AWS"))
    else:
        out.append(Result("AWS credentials", True, f"from {method}: account {who.get('Account')} ({who.get('Arn')})"))
    if zone:
        out.append(_check_zone(zone, cfg, client))
    if certificate:
        out.append(_check_certificate(certificate, cfg, region, client))
    return out


def _domain(cfg: Any) -> str:
    return str(cfg.settings.domain or "")


def _check_zone(zone: str, cfg: Any, client: Callable[[str, str | None], Any]) -> Result:
    name = f"Route 53 hosted zone {zone}"
    try:
        found = client("route53", None).get_hosted_zone(Id=zone)
    except Exception as exc:  # noqa: BLE001
        code, message = _aws_error(exc)
        if code == "NoSuchHostedZone":
            return Result(name, False, "does not exist in this account",
                          "set hostedZoneId to the public zone of the domain (`aws route53 list-hosted-zones`)")
        return Result(name, None, f"could not look it up ({code or 'network'}: {message})",
                      "allow route53:GetHostedZone, or check the network")
    info = found.get("HostedZone") or {}
    zone_name = str(info.get("Name", "")).rstrip(".")
    domain = _domain(cfg)
    if (info.get("Config") or {}).get("PrivateZone"):
        return Result(name, False, f"{zone_name} is a private zone; certificates and records need the public one",
                      "set hostedZoneId to the public zone")
    if domain and not (domain == zone_name or domain.endswith("." + zone_name)):
        return Result(name, False, f"is {zone_name}, which does not hold {domain}",
                      "set hostedZoneId to the zone of the domain")
    return Result(name, True, f"{zone_name} (public)")


def _check_certificate(arn: str, cfg: Any, region: str | None, client: Callable[[str, str | None], Any]) -> Result:
    name = "ACM certificate"
    cert_region = arn.split(":")[3]
    if region and cert_region != region:
        return Result(name, False, f"{arn} is in {cert_region}; the load balancer is in {region}",
                      f"request or import the certificate in {region}")
    try:
        cert = client("acm", cert_region).describe_certificate(CertificateArn=arn).get("Certificate") or {}
    except Exception as exc:  # noqa: BLE001
        code, message = _aws_error(exc)
        if code == "ResourceNotFoundException":
            return Result(name, False, f"{arn} does not exist", "set ecs.certificateArn to an existing certificate")
        return Result(name, None, f"could not look it up ({code or 'network'}: {message})",
                      "allow acm:DescribeCertificate, or check the network")
    status = cert.get("Status")
    names = set(cert.get("SubjectAlternativeNames") or []) | {cert.get("DomainName")}
    missing = [h for h in (cfg.settings.host_for(t) for t in cfg.tenants)
               if h not in names and f"*.{h.split('.', 1)[1]}" not in names]
    if status != "ISSUED":
        return Result(name, False, f"{arn} is {status}", "wait for validation, or use an ISSUED certificate")
    if missing:
        return Result(name, False, f"does not cover {', '.join(missing)} (it names {', '.join(sorted(names))})",
                      f"use a certificate for *.{_domain(cfg)}")
    return Result(name, True, f"ISSUED for {', '.join(sorted(n for n in names if n))}")


def _aws_without_botocore(aws: Mapping[str, str], environ: Mapping[str, str], zone: str | None,
                          certificate: str | None) -> list[Result]:
    import configparser

    region, region_from = aws_region(aws, environ)
    files = [Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"),
             Path(environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")]
    profile = aws.get("aws:profile") or environ.get("AWS_PROFILE") or "default"
    sections = set()
    for path in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        sections |= {s.removeprefix("profile ") for s in parser.sections()}
    out = [Result("AWS region", True, f"{region} ({region_from})") if region else Result(
        "AWS region", False, "none in aws:region or AWS_REGION", "add `aws:region: <region>` to the stack file")]
    if environ.get("AWS_ACCESS_KEY_ID") or aws.get("aws:accessKey") or profile in sections:
        out.append(Result("AWS credentials", True, "present (not verified: botocore is not installed)"))
    else:
        out.append(Result("AWS credentials", False, f"no AWS_ACCESS_KEY_ID and no profile {profile!r}",
                          "`aws configure`, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"))
    why = "botocore is not installed (`uv sync` installs it)"
    return out + ([_na(f"Route 53 hosted zone {zone}", why)] if zone else []) + (
        [_na("ACM certificate", why)] if certificate else [])


# --------------------------------------------------------------------------- Kubernetes


def kube_client(settings: Any) -> tuple[Any, str]:
    """An ApiClient for the stack's kubeconfig and context (ambient KUBECONFIG / ~/.kube/config when unset),
    with short timeouts and one retry; and a description of where it points."""
    import yaml
    from kubernetes import client, config

    conf = client.Configuration()
    context = settings.context
    if settings.kubeconfig is not None:
        value = settings.kubeconfig.get_secret_value().strip()
        if "\n" not in value and not value.startswith("{") and "apiVersion" not in value:
            value = Path(value).expanduser().read_text(encoding="utf-8")  # the provider takes a path too
        config.load_kube_config_from_dict(yaml.safe_load(value), context=context, client_configuration=conf)
        source = "kubernetes.kubeconfig"
    else:
        # Read here, not at import: the client's own default is os.environ at its import time.
        source = os.environ.get("KUBECONFIG") or "~/.kube/config"
        paths = [str(Path(p).expanduser()) for p in source.split(os.pathsep) if p]
        if not any(Path(p).is_file() for p in paths):
            raise FileNotFoundError(f"no kubeconfig at {source}")
        config.load_kube_config(config_file=os.pathsep.join(paths), context=context, client_configuration=conf)
    conf.retries = 1
    conf.connection_pool_maxsize = 8
    return client.ApiClient(conf), f"context {context or '(current)'} of {source} at {conf.host}"


def _status(exc: Exception) -> int:
    return int(getattr(exc, "status", 0) or 0)


def _reason(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)[:200]
        except (ValueError, AttributeError):
            return " ".join(str(body).split())[:200]
    return " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]


def _minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"v?(\d+)\.(\d+)", version).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


# What the kubernetes provider does with each object the stack creates: server-side apply (create,
# patch), read and await (get, list, watch), delete. Reads of what it awaits: pods (StatefulSet
# readiness) and endpoints (Service, Ingress backends). tests/operator/test_doctor.py checks this covers
# every kind the k8s stack renders.
K8S_OBJECTS: tuple[tuple[str, str], ...] = (
    ("", "secrets"), ("", "serviceaccounts"), ("", "services"), ("apps", "statefulsets"),
    ("networking.k8s.io", "networkpolicies"),
)
K8S_ROUTES = {"ingress": ("networking.k8s.io", "ingresses"), "gateway": ("gateway.networking.k8s.io", "httproutes")}
K8S_VERBS = ("get", "list", "watch", "create", "patch", "delete")
K8S_READS: tuple[tuple[str, str], ...] = (("", "pods"), ("", "endpoints"), ("", "persistentvolumeclaims"))


def rbac_needs(settings: Any, namespace: str) -> list[tuple[str, str, str, str]]:
    """(verb, group, resource, namespace) of every access the stack's deployment makes."""
    objects = [*K8S_OBJECTS, K8S_ROUTES[_routing(settings)]]
    needs = [(v, g, r, namespace) for g, r in objects for v in K8S_VERBS]
    needs += [(v, g, r, namespace) for g, r in K8S_READS for v in ("get", "list", "watch")]
    gw = settings.gateway if _routing(settings) == "gateway" else None
    if gw is not None and gw.create:
        needs += [(v, "gateway.networking.k8s.io", "gateways", gw.namespace) for v in K8S_VERBS]
    if settings.create_namespace:
        needs += [(v, "", "namespaces", "") for v in ("get", "create", "patch", "delete")]
    return needs


def _routing(settings: Any) -> str:
    return getattr(settings, "routing", "ingress")


def kube_checks(cfg: Any, stack: str, *, unreadable: set[str] = frozenset(),  # type: ignore[assignment]
                owned_namespace: Callable[[str], bool] | None = None,
                client_factory: Callable[[Any], tuple[Any, str]] = kube_client) -> list[Result]:
    from components import kubernetes as model

    settings = cfg.kubernetes
    prefix = settings.object_prefix(workspace.PROJECT, stack)
    namespace = settings.tenants_namespace(prefix)
    gateway = _routing(settings) == "gateway"
    names = ["StorageClass", "Gateway" if gateway else f"IngressClass {settings.ingress_class}", "TLS",
             f"namespace {namespace}", "RBAC"]
    if settings.render_to is not None:
        return [Result("Kubernetes cluster", True, f"not contacted: renderTo writes manifests to {settings.render_to}")]
    if "kubernetes" in unreadable:
        why = "kubernetes.kubeconfig is a secret this run cannot decrypt (the stack does not exist yet)"
        return [_na(n, why) for n in ["Kubernetes cluster", *names]]
    low, high = (_minor(v) for v in model.SUPPORTED_K8S_VERSIONS)
    supported = f"{low[0]}.{low[1]}-{high[0]}.{high[1]}"
    cluster = f"Kubernetes cluster (version {supported})"
    try:
        api, where = client_factory(settings)
    except Exception as exc:  # noqa: BLE001 - kubeconfig problems of every kind
        return [Result(cluster, False, f"no usable kubeconfig ({' '.join(str(exc).split())[:200]})",
                       "set KUBECONFIG, kubernetes.kubeconfig or kubernetes.context")] + [
            _na(n, "no cluster") for n in names]
    from kubernetes import client

    try:
        version = client.VersionApi(api).get_code(_request_timeout=KUBE_TIMEOUT).git_version
    except Exception as exc:  # noqa: BLE001
        status = _status(exc)
        found = ("credentials refused (401)" if status == 401 else f"did not answer ({_reason(exc)})")
        return [Result(cluster, False, f"{where}: {found}",
                       "check the context (`kubectl --context ... version`), VPN or credentials")] + [
            _na(n, "the cluster did not answer") for n in names]
    out = []
    if low <= _minor(version) <= high:
        out.append(Result(cluster, True, f"{where}: {version}"))
    else:
        out.append(Result(cluster, False, f"{where}: {version}", f"use a cluster running Kubernetes {supported}"))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    out.append(_storage_class(settings, client.StorageV1Api(api)))
    ns_obj, ns_result = _namespace(settings, namespace, prefix, core, client.AppsV1Api(api), stack, owned_namespace)
    if gateway:
        out += _gateway(settings.gateway, namespace, core, custom)
    else:
        out += _ingress(settings, core, client.NetworkingV1Api(api))
    if settings.tls is None:
        out.append(Result("TLS", True, "from the existing Gateway's listeners"))
    elif gateway:  # a created Gateway: its listeners refer to secrets (and an Issuer) in its own namespace
        gw_ns = settings.gateway.namespace
        out.append(_tls(settings.tls, gw_ns, _exists(core, gw_ns), core, custom))
    else:
        out.append(_tls(settings.tls, namespace, ns_obj is not None, core, custom))
    out.append(ns_result)
    out.append(_rbac(settings, namespace, client.AuthorizationV1Api(api)))
    return out


def _exists(core: Any, namespace: str) -> bool | None:
    """Whether the namespace exists; None when it cannot be read (no permission)."""
    try:
        core.read_namespace(namespace, _request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        return False if _status(exc) == 404 else None
    return True


def _namespace_line(name: str, exists: bool | None, missing: str, fix: str) -> Result:
    if exists is None:
        return _na(name, "no permission to read namespaces")
    return Result(name, exists, "exists" if exists else f"does not exist; {missing}", "" if exists else fix)


def _storage_class(settings: Any, storage: Any) -> Result:
    try:
        classes = storage.list_storage_class(_request_timeout=KUBE_TIMEOUT).items
    except Exception as exc:  # noqa: BLE001
        return Result("StorageClass", None, f"could not list StorageClasses ({_status(exc)}: {_reason(exc)})",
                      "ask for `list storageclasses`, or check it by hand")
    default_key = "storageclass.kubernetes.io/is-default-class"
    defaults = [c.metadata.name for c in classes if (c.metadata.annotations or {}).get(default_key) == "true"]
    have = ", ".join(c.metadata.name + (" (default)" if c.metadata.name in defaults else "") for c in classes) or "none"
    if settings.storage_class:
        name = f"StorageClass {settings.storage_class}"
        if any(c.metadata.name == settings.storage_class for c in classes):
            return Result(name, True, "exists")
        return Result(name, False, f"not in the cluster (it has: {have}); a claim would wait for it forever",
                      "create it, or set kubernetes.storageClass to a class the cluster has")
    if defaults:
        return Result("StorageClass (the default)", True, f"{defaults[0]} is the default")
    return Result("StorageClass (the default)", False, f"kubernetes.storageClass is unset and no class is the "
                  f"default (the cluster has: {have})", "set kubernetes.storageClass, or mark a class as default")


def _ingress(settings: Any, core: Any, net: Any) -> list[Result]:
    name = f"IngressClass {settings.ingress_class}"
    try:
        found = net.read_ingress_class(settings.ingress_class, _request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        if _status(exc) == 404:
            try:
                have = ", ".join(c.metadata.name for c in net.list_ingress_class(_request_timeout=KUBE_TIMEOUT).items)
            except Exception:  # noqa: BLE001
                have = "?"
            result = Result(name, False, f"not in the cluster (it has: {have or 'none'}); no controller would give "
                            "the Ingress an address, and the provider waits 10 minutes for one",
                            "install the controller, or set kubernetes.ingressClass to a class the cluster has")
        else:
            result = Result(name, None, f"could not read it ({_status(exc)}: {_reason(exc)})",
                            "ask for `get ingressclasses`, or check it by hand")
    else:
        result = Result(name, True, f"exists (controller {found.spec.controller})")
    return [result, _namespace_line(f"ingress controller namespace {settings.ingress_namespace}",
                                    _exists(core, settings.ingress_namespace),
                                    "the NetworkPolicy admits traffic only from it",
                                    "set kubernetes.ingressNamespace to the namespace the controller runs in")]


def _not_found_object(exc: Exception) -> bool:
    """A 404 for the object itself (the API knows the kind), not for an unknown resource type."""
    try:
        return bool((json.loads(getattr(exc, "body", "") or "{}").get("details") or {}).get("name"))
    except (ValueError, AttributeError):
        return False


def _tls(tls: Any, namespace: str, ns_exists: bool | None, core: Any, custom: Any) -> Result:
    """The cert-manager issuer (Ready) or the TLS Secret the certificates come from."""
    if tls.cluster_issuer or tls.issuer:
        cluster = bool(tls.cluster_issuer)
        issuer = tls.cluster_issuer or tls.issuer
        name = f"cert-manager {'ClusterIssuer' if cluster else 'Issuer'} {issuer}"
        if not cluster and ns_exists is False:
            return Result(name, False, f"an Issuer lives in the namespace, and {namespace} does not exist yet",
                          "use tls.clusterIssuer, or create the namespace and Issuer first (createNamespace: false)")
        try:
            if cluster:
                obj = custom.get_cluster_custom_object("cert-manager.io", "v1", "clusterissuers", issuer,
                                                       _request_timeout=KUBE_TIMEOUT)
            else:
                obj = custom.get_namespaced_custom_object("cert-manager.io", "v1", namespace, "issuers", issuer,
                                                          _request_timeout=KUBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404 and _not_found_object(exc):
                return Result(name, False, "not found; no certificate would be issued",
                              f"create it, or set tls.{'clusterIssuer' if cluster else 'issuer'} to an existing one")
            if _status(exc) == 404:
                return Result(name, False, "cert-manager is not installed (no cert-manager.io/v1 issuers)",
                              "install cert-manager and the issuer, or use tls.secretName")
            return Result(name, None, f"could not read it ({_status(exc)}: {_reason(exc)})")
        ok, why = _condition(obj, "Ready")
        if ok:
            return Result(name, True, "Ready")
        kind = "clusterissuer" if cluster else f"-n {namespace} issuer"
        return Result(name, False, f"not Ready ({why})", f"fix the issuer (`kubectl describe {kind} {issuer}`)")
    name = f"TLS Secret {tls.secret_name}"
    if ns_exists is False:
        return Result(name, False, f"it must exist in {namespace}, which does not exist yet",
                      "create the namespace and the secret first (createNamespace: false), or use tls.clusterIssuer")
    try:
        secret = core.read_namespaced_secret(tls.secret_name, namespace, _request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        if _status(exc) == 404:
            return Result(name, False, f"not in namespace {namespace}",
                          f"kubectl -n {namespace} create secret tls {tls.secret_name} --cert=... --key=...")
        return Result(name, None, f"could not read it ({_status(exc)}: {_reason(exc)})")
    if secret.type != "kubernetes.io/tls":
        return Result(name, False, f"is of type {secret.type}, not kubernetes.io/tls", "recreate it as a TLS secret")
    return Result(name, True, f"exists in {namespace}")


def _condition(obj: Mapping[str, Any], kind: str) -> tuple[bool, str]:
    """Whether the object's status has condition ``kind`` True, and why not."""
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind]
    if found and found[0].get("status") == "True":
        return True, kind
    if not found:
        return False, f"no {kind} condition: no controller has taken it up"
    return False, str(found[0].get("message") or found[0].get("reason") or found[0].get("status"))


GATEWAY_API = ("gateway.networking.k8s.io", "v1")


def _gateway(gw: Any, tenants_ns: str, core: Any, custom: Any) -> list[Result]:
    """routing: gateway. A created Gateway: its GatewayClass Accepted, its namespace there. An existing one:
    it and its class Accepted, the listener (sectionName) there and admitting routes from the tenants'
    namespace. Either way the namespace the NetworkPolicy admits (proxyNamespace) exists."""
    group, version = GATEWAY_API
    no_crds = Result("Gateway API", False, "the Gateway API CRDs are not installed (no gateway.networking.k8s.io/v1)",
                     "install the standard-channel CRDs (v1.2 or later) and an implementation")

    def get(plural: str, name: str, namespace: str | None = None) -> tuple[Any, Result | None]:
        label = f"{'GatewayClass' if plural == 'gatewayclasses' else 'Gateway'} " + \
            (f"{namespace}/{name}" if namespace else name)
        try:
            if namespace:
                return custom.get_namespaced_custom_object(group, version, namespace, plural, name,
                                                           _request_timeout=KUBE_TIMEOUT), None
            return custom.get_cluster_custom_object(group, version, plural, name, _request_timeout=KUBE_TIMEOUT), None
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404 and _not_found_object(exc):
                return None, Result(label, False, "not in the cluster; the routes would never be served",
                                    "create it, or fix kubernetes.gateway")
            if _status(exc) == 404:
                return None, no_crds
            return None, Result(label, None, f"could not read it ({_status(exc)}: {_reason(exc)})")

    def accepted(kind: str, name: str, obj: Any) -> Result:
        ok, why = _condition(obj, "Accepted")
        return Result(f"{kind} {name}", ok, "Accepted" if ok else f"not Accepted ({why})",
                      "" if ok else f"check the controller (`kubectl describe {kind.lower()} {name}`)")

    out: list[Result] = []
    if gw.create:
        cls, problem = get("gatewayclasses", gw.class_name)
        out.append(problem or accepted("GatewayClass", gw.class_name, cls))
        out.append(_namespace_line(f"gateway namespace {gw.namespace}", _exists(core, gw.namespace),
                                   "the Gateway is created there", f"kubectl create namespace {gw.namespace}"))
    else:
        obj, problem = get("gateways", gw.name, gw.namespace)
        if problem is not None:
            return [problem]
        out.append(accepted("Gateway", f"{gw.namespace}/{gw.name}", obj))
        class_name = (obj.get("spec") or {}).get("gatewayClassName", "")
        cls, problem = get("gatewayclasses", class_name)
        out.append(problem or accepted("GatewayClass", class_name, cls))
        listeners = (obj.get("spec") or {}).get("listeners") or []
        if gw.section_name:
            listeners = [x for x in listeners if x.get("name") == gw.section_name]
        out.append(_listeners(gw, tenants_ns, listeners))
    if gw.proxy_namespace:
        out.append(_namespace_line(f"gateway proxy namespace {gw.proxy_namespace}", _exists(core, gw.proxy_namespace),
                                   "the NetworkPolicy admits traffic only from it",
                                   "set gateway.proxyNamespace to where the controller runs its proxies"))
    return out


def _listeners(gw: Any, tenants_ns: str, listeners: list[dict[str, Any]]) -> Result:
    name = f"Gateway {gw.namespace}/{gw.name} listeners"
    if not listeners:
        return Result(name, False, f"no listener named {gw.section_name}" if gw.section_name else "no listeners",
                      "fix gateway.sectionName" if gw.section_name else "add an HTTPS listener to the Gateway")
    admitting = []
    for listener in listeners:
        frm = ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from", "Same")
        if frm == "All" or frm == "Selector" or (frm == "Same" and gw.namespace == tenants_ns):
            admitting.append(f"{listener.get('name')} ({frm})")
    if admitting:
        return Result(name, True, f"admit routes from {tenants_ns}: {', '.join(admitting)}")
    return Result(name, False, f"admit routes only from their own namespace {gw.namespace} (allowedRoutes from: "
                  f"Same), not from {tenants_ns}", f"set allowedRoutes.namespaces.from: All (or a Selector matching "
                  f"{tenants_ns}) on the listener")


def _namespace(settings: Any, namespace: str, prefix: str, core: Any, apps: Any, stack: str,
               owned: Callable[[str], bool] | None) -> tuple[Any, Result]:
    name = f"namespace {namespace}"
    try:
        obj = core.read_namespace(namespace, _request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        if _status(exc) != 404:
            return None, Result(name, None, f"could not read it ({_status(exc)}: {_reason(exc)})")
        if settings.create_namespace:
            return None, Result(name, True, "free (the stack creates it)")
        return None, Result(name, False, "does not exist, and createNamespace is false",
                            f"create it (`kubectl create namespace {namespace}`), or set createNamespace: true")
    if obj.status and obj.status.phase == "Terminating":
        return obj, Result(name, False, "is being deleted", "wait until it is gone, then run again")
    if not settings.create_namespace:
        return obj, Result(name, True, "exists (reused: createNamespace is false)")
    labels = obj.metadata.labels or {}
    if owned is not None and owned(namespace):
        return obj, Result(name, True, f"exists, created by stack {stack}")
    if labels.get("app.kubernetes.io/part-of") == "openhands" and \
            labels.get("app.kubernetes.io/managed-by") == "pulumi":
        # An earlier `down` keeps the namespace (with the data); another stack's holds its own workloads.
        try:
            sets = apps.list_namespaced_stateful_set(namespace, _request_timeout=KUBE_TIMEOUT).items
        except Exception:  # noqa: BLE001 - cannot look inside: the labels say it is this project's
            sets = []
        foreign = sorted(s.metadata.name for s in sets if not s.metadata.name.startswith(prefix + "-"))
        if not foreign:
            return obj, Result(name, True, "exists with this project's labels and no other stack's workloads "
                               "(kept by an earlier `down`)")
        return obj, Result(name, False, f"holds another stack's workloads ({', '.join(foreign[:3])})",
                           "set kubernetes.namespace to another name")
    return obj, Result(name, False, "exists and is not this stack's (not in its state, no app.kubernetes.io/part-of="
                       "openhands label)", "set kubernetes.namespace to another name, or createNamespace: false to "
                       "deploy into it")


def _rbac(settings: Any, namespace: str, authz: Any) -> Result:
    from kubernetes import client

    needs = rbac_needs(settings, namespace)

    def review(need: tuple[str, str, str, str]) -> bool | None:
        verb, group, resource, ns = need
        body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                            namespace=ns or None)))
        try:
            return bool(authz.create_self_subject_access_review(body, _request_timeout=KUBE_TIMEOUT).status.allowed)
        except Exception:  # noqa: BLE001
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(review, needs))
    name = "RBAC (SelfSubjectAccessReview)"
    if all(a is None for a in answers):
        return Result(name, None, "the cluster did not answer the access reviews")
    denied = [n for n, a in zip(needs, answers, strict=True) if a is False]
    if not denied:
        return Result(name, True, f"all {len(needs)} verbs the stack uses are allowed")
    by_resource: dict[str, list[str]] = {}
    for verb, group, resource, ns in denied:
        where = f" in {ns}" if ns and ns != namespace else ""
        by_resource.setdefault(f"{resource}{'.' + group if group else ''}{where}", []).append(verb)
    listed = "; ".join(f"{r}: {', '.join(v)}" for r, v in by_resource.items())
    return Result(name, False, f"denied in {namespace}: {listed}",
                  f"ask the cluster admin for a Role in {namespace} with these verbs"
                  + (" (and a ClusterRole for namespaces)" if any(d[2] == "namespaces" for d in denied) else ""))


# --------------------------------------------------------------------------- Modal


def check_modal(cfg: Any, *, unreadable: set[str] = frozenset(),  # type: ignore[assignment]
                environ: Mapping[str, str] = os.environ) -> Result:
    """A Modal token: in the stack config, MODAL_TOKEN_ID/SECRET, or the active profile of ~/.modal.toml."""
    import tomllib

    name = "Modal token"
    settings = cfg.settings
    if settings.token_id is not None:
        return Result(name, True, "modal.tokenId / modal.tokenSecret in the stack config")
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return Result(name, True, "MODAL_TOKEN_ID / MODAL_TOKEN_SECRET")
    path = Path(environ.get("MODAL_CONFIG_PATH") or Path(environ.get("HOME") or Path.home()) / ".modal.toml")
    fix = "`modal token new`, or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    if "modal" in unreadable:
        return _na(name, "modal.tokenId/tokenSecret are secrets this run cannot decrypt (the stack does not exist yet)")
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Result(name, False, f"none: not in the stack config or the environment, and no {path}", fix)
    except (OSError, ValueError) as exc:
        return Result(name, False, f"{path} is not readable TOML ({exc})", fix)
    active = [k for k, v in profiles.items() if isinstance(v, dict) and v.get("active") is True]
    profile = environ.get("MODAL_PROFILE") or (active[0] if active else "default")
    section = profiles.get(profile) if isinstance(profiles.get(profile), dict) else {}
    if section.get("token_id") and section.get("token_secret"):
        return Result(name, True, f"profile {profile!r} of {path}")
    return Result(name, False, f"profile {profile!r} of {path} has no token_id/token_secret", fix)


# --------------------------------------------------------------------------- all of it


def run(project: Path, stack: str, *, environ: Mapping[str, str] = os.environ, which: Which = shutil.which,
        exe: str | None = None) -> Report:
    """Every check for the stack. Raises config.ConfigError for an invalid stack config (reported as `up` does)."""
    report = Report(stack)
    report.results.append(check_python(project))
    cli, found_exe = check_cli(which)
    report.results.append(cli)
    exe = exe or found_exe
    inputs = load_inputs(project, stack, exe=exe, environ=environ)
    cfg, kind = inputs.cfg, kind_of(inputs.cfg)
    installed = None
    why = "no usable Pulumi CLI"
    if exe:
        try:
            installed = installed_plugins(exe, cwd=project)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            why = f"`pulumi plugin ls` failed ({' '.join(str(exc).split())[:120]})"
    report.results += check_plugins(plugins_for(cfg), installed, which=which, environ=environ, why_unknown=why)
    if kind == "local":
        report.results += docker_checks(cfg, stack, environ=environ)
    elif kind == "vm":
        report.results.append(check_vm_ssh(cfg, which=which, environ=environ))
        report.results += aws_checks(cfg, inputs.aws, environ=environ)
    elif kind == "ecs":
        report.results += aws_checks(cfg, inputs.aws, environ=environ)
    elif kind == "kubernetes":
        report.results += kube_checks(cfg, stack, unreadable=inputs.unreadable,
                                      owned_namespace=_state_namespaces(project, stack, exe, environ))
    elif kind == "modal":
        report.results.append(check_modal(cfg, unreadable=inputs.unreadable, environ=environ))
    return report


def _state_namespaces(project: Path, stack: str, exe: str | None,
                      environ: Mapping[str, str]) -> Callable[[str], bool] | None:
    """Whether the stack's state holds a Namespace of that name (asked only when one exists in the cluster)."""
    if exe is None:
        return None

    def owned(namespace: str) -> bool:
        env = _engine_env(project, environ)
        if env is None:
            return False
        proc = subprocess.run([exe, "stack", "export", "--stack", stack], capture_output=True, text=True,
                              timeout=60, cwd=project, env={**environ, **env})
        try:
            resources = (json.loads(proc.stdout).get("deployment") or {}).get("resources") or []
        except (ValueError, AttributeError):
            return False  # no such stack (or no state): not this stack's
        return any(r.get("type") == "kubernetes:core/v1:Namespace"
                   and ((r.get("outputs") or {}).get("metadata") or {}).get("name") == namespace for r in resources)

    return owned
