"""Run Caddy (the proxy image's release, scripts/caddy) with a rendered Caddyfile on loopback, in front of real servers.

The rendered Caddyfile is used as-is except for mechanical rewrites a container does for
us in production: upstream dial addresses (``agent-<t>:8000``) become the loopback address
of the real server, in-container file paths (certificates) become temp copies, and the
admin API's unix socket (in the container's own /tmp) moves to a directory of this
instance's, so parallel tests never share one. Ports come from the render itself (render
with free ports).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.docker import caddy as _caddy

ROUTES = "pulumi-python:dynamic/docker:ProxyRoutes"


def served_caddyfile(rendered) -> str:
    """The Caddyfile the `local` proxy serves: what ProxyRoutes hands Caddy (the container itself boots
    with the global options only); a render without it (the VM) uploads the whole file."""
    routes = [r for r in rendered.resources if r.type == ROUTES]
    if routes:
        (r,) = routes
        return r.inputs["caddyfile"]
    (proxy,) = [r for r in rendered.resources if r.type == "docker:index/container:Container"
                and r.name.endswith("-proxy-caddy")]
    (upload,) = [u for u in proxy.inputs["uploads"] if u["file"] == _caddy.CONFIG_PATH]
    return upload["content"]


def caddy_binary() -> str:
    """The Caddy release the `local` proxy image carries, built from its Go module by scripts/caddy
    (cached: instant when warm; $OPENHANDS_CADDY when the test command built it already)."""
    if os.environ.get("OPENHANDS_CADDY"):
        return os.environ["OPENHANDS_CADDY"]
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["bash", str(root / "scripts" / "caddy")], capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/caddy failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


class LoopbackHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with SNI and certificate checks for ``host`` (Python's resolver
    does not map ``*.localhost`` to loopback, browsers and curl do)."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _ports(caddyfile: str) -> tuple[int, int]:
    http_port = https_port = 0
    for line in caddyfile.splitlines():
        parts = line.split()
        if parts[:1] == ["http_port"]:
            http_port = int(parts[1])
        if parts[:1] == ["https_port"]:
            https_port = int(parts[1])
    return http_port, https_port


@dataclass
class Caddy:
    process: subprocess.Popen
    workdir: Path
    http_port: int
    https_port: int
    log: Path
    admin_socket: Path | None = None  # where the rendered admin socket was moved

    @property
    def internal_root(self) -> Path:
        """Caddy's local CA root (``tls internal``)."""
        return self.workdir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def https(self, host: str, path: str, cafile: Path | str, headers: Mapping[str, str] | None = None,
              timeout: float = 10) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(cafile))
        conn = LoopbackHTTPS(host, self.https_port, context=ctx, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": f"{host}:{self.https_port}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def http(self, host: str, path: str, timeout: float = 10) -> tuple[int, str | None]:
        """Plain HTTP; returns (status, Location header)."""
        return http_redirect(host, self.http_port, path, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.admin_socket is not None:
            shutil.rmtree(self.admin_socket.parent, ignore_errors=True)


def serve(
    caddyfile: str,
    *,
    upstreams: Mapping[str, str],
    workdir: Path,
    files: Mapping[str, str] | None = None,
    wait_for_cert: str | None = None,
) -> Caddy:
    """Start caddy with ``caddyfile``; see the module doc for the two rewrites.

    ``wait_for_cert`` names a host whose certificate must be served before returning.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    text = caddyfile
    for src, dst in upstreams.items():
        assert src in text, f"upstream {src} not in the rendered Caddyfile"
        text = text.replace(src, dst)
    for path, content in (files or {}).items():
        assert path in text, f"file {path} not referenced by the rendered Caddyfile"
        local = workdir / "files" / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
        text = text.replace(path, str(local))
    admin_socket = None
    rendered_socket = f"admin unix/{_caddy.ADMIN_SOCKET}"
    if rendered_socket in text:
        # A short path of its own: a unix socket path must stay under 108 bytes.
        admin_socket = Path(tempfile.mkdtemp(prefix="ohcaddy-")) / "admin.sock"
        text = text.replace(rendered_socket, f"admin unix/{admin_socket}")
    conf = workdir / "Caddyfile"
    conf.write_text(text)
    http_port, https_port = _ports(text)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "data"),
        "XDG_CONFIG_HOME": str(workdir / "config"),
    }
    log = workdir / "caddy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [caddy_binary(), "run", "--config", str(conf), "--adapter", "caddyfile"],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Caddy(process=proc, workdir=workdir, http_port=http_port, https_port=https_port, log=log,
                   admin_socket=admin_socket)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"caddy exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=1) as s:
                if wait_for_cert is None:
                    break
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(s, server_hostname=wait_for_cert):
                    break
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    else:
        server.stop()
        raise AssertionError(f"caddy did not serve https on {https_port}:\n{log.read_text()[-3000:]}")
    return server


def http_redirect(host: str, port: int, path: str, timeout: float = 10) -> tuple[int, str | None]:
    """Plain HTTP GET to 127.0.0.1:port for ``host``; returns (status, Location header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()
