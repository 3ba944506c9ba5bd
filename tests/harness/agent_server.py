"""Boot the real ``openhands-agent-server`` (1.58.x) with a rendered env and args.

The server needs CPython >= 3.12, so it lives in its own virtualenv
(``.venv-agent-server`` at the repo root, or ``$OH_AGENT_SERVER_VENV``), built with uv
on first use when missing. Each server runs in a temp dir on a free loopback port and
is always stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components import contract

ROOT = Path(__file__).resolve().parents[2]
AGENT_SERVER_SPEC = f"openhands-agent-server=={contract.AGENT_SERVER_VERSION}"


def venv_dir() -> Path:
    return Path(os.environ.get("OH_AGENT_SERVER_VENV", ROOT / ".venv-agent-server"))


def find_python312() -> str:
    """A CPython >= 3.12 interpreter: $OH_AGENT_SERVER_PYTHON, PATH, pyenv, then uv's."""
    candidates = [os.environ.get("OH_AGENT_SERVER_PYTHON", "")]
    # 3.12 first: the version the agent-server facts were measured on.
    candidates += [shutil.which(n) or "" for n in ("python3.12", "python3.13")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob("versions/3.1[2-9]*/bin/python"))
    for c in candidates:
        if c and Path(c).exists():
            return c
    return "3.12"  # let uv find or install one


def ensure_tool_venv(venv: Path, spec: str, script: str) -> Path:
    """Path to ``script`` in a separate virtualenv holding ``spec``, built with uv if missing.

    Tools with their own Python needs (the agent server wants >= 3.12, checkov pins
    packages Pulumi cannot share) live apart from the project's environment."""
    exe = venv / "bin" / script
    if exe.exists():
        return exe
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError(f"uv is needed to build {venv} (pip install uv)")
    subprocess.run([uv, "venv", "-q", "-p", find_python312(), str(venv)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--compile-bytecode", "--exclude-newer", exclude_newer(), "-p",
         str(venv / "bin" / "python"), spec], check=True,
    )
    return exe


def exclude_newer() -> str:
    """The resolution date the images use (scripts/docker-images): the host venvs get the same
    dependencies (openhands-sdk/-tools are not pinned by the agent server's own metadata)."""
    import re

    text = (Path(__file__).resolve().parents[2] / "scripts" / "docker-images").read_text()
    return re.search(r'^EXCLUDE_NEWER="([^"]+)"', text, re.M).group(1)


def ensure_agent_server() -> Path:
    """Path to the ``agent-server`` console script, building its venv if needed."""
    return ensure_tool_venv(venv_dir(), AGENT_SERVER_SPEC, "agent-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, headers: Mapping[str, str] | None = None, body: object = None,
         timeout: float = 10) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class RunningServer:
    """A running agent server. ``url`` is http://127.0.0.1:<port>."""

    process: subprocess.Popen
    port: int
    workdir: Path
    env: dict[str, str]
    log: Path
    ready_after: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str, key: str | None = None) -> tuple[int, str]:
        headers = {contract.AUTH_HEADER: key} if key is not None else {}
        return http("GET", self.url + path, headers)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def local_args(args: Sequence[str], port: int) -> list[str]:
    """The rendered args, with the listen address moved to a free loopback port.

    Asserts they are the contract's args first, so a model that renders different
    args fails here rather than booting something else."""
    assert list(args) == contract.args(), f"rendered args {list(args)} are not the contract's {contract.args()}"
    out = list(args)
    out[out.index("--host") + 1] = "127.0.0.1"
    out[out.index("--port") + 1] = str(port)
    return out


def start(env: Mapping[str, str], args: Sequence[str], workdir: Path, *, wait: bool = True,
          tmp: Path | None = None) -> RunningServer:
    """Start the real server with a rendered ``env`` and ``args``.

    Container paths under the contract's DATA_DIR and HOME_DIR are mapped into
    ``workdir``; a ``workdir`` reused across starts keeps the state, as a volume would.
    ``TMPDIR`` is ``tmp`` (default ``workdir/tmp``): give a restart a new one, as a new container gets.
    """
    exe = ensure_agent_server()
    port = free_port()
    data = workdir / "data"
    home = workdir / "home"
    cwd = workdir / "cwd"
    for d in (data, home, cwd):
        d.mkdir(parents=True, exist_ok=True)
    mapped = contract.map_paths(env, {contract.DATA_DIR: str(data), contract.HOME_DIR: str(home)})
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp or workdir / "tmp"),
        "LANG": "C.UTF-8",
        **mapped,
    }
    Path(full_env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), *local_args(args, port)], env=full_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(process=proc, port=port, workdir=workdir, env=full_env, log=log)
    if wait:
        try:
            server.ready_after = wait_ready(server)
        except BaseException:
            server.stop()
            raise
    return server


def wait_ready(server: RunningServer, budget: float = contract.STARTUP_BUDGET_SECONDS) -> float:
    """Seconds until GET /ready gives 200; fails after the contract's startup budget."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < budget:
        if server.process.poll() is not None:
            tail = server.log.read_text()[-3000:]
            raise AssertionError(f"agent server exited with {server.process.returncode}:\n{tail}")
        try:
            status, _ = server.get(contract.READINESS_PROBE.path)
            if status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"/ready not 200 within {budget}s:\n{server.log.read_text()[-3000:]}")
