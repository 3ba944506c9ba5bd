"""Hostile clients against the rendered proxy (issue 21, case 8): the ``docker.proxy`` limits in Caddy.

The rendered Caddyfile of the `local` stack (the `vm` stack renders the same one) runs in the real
Caddy of scripts/caddy on loopback (tests/harness/caddy_proxy.py) in front of two real agent servers, alice
and bob, booted once for the module. Each test renders the limits it needs (short timeouts, a small cap) and
asserts what a client sees: a body over the limit refused with 413 before the server sees it, a
slow-header client cut while others are served, a tenant at its connection cap queueing its own
requests while the other tenant is served at once, and a WebSocket that stays open, idle, longer than
every timeout of the proxy, and a streamed response passed on as it is written. docs/local.md ("Limits")
states the values and why.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import contract
from components.config import ConfigError
from openhands_cli import check
from openhands_cli.render import Rendered, render
from tests.harness import agent_server
from tests.harness.agent_server import free_port
from tests.harness.caddy_proxy import Caddy, LoopbackHTTPS, caddy_binary, served_caddyfile

CONTAINER = "docker:index/container:Container"
TENANTS = ["alice", "bob"]
MIB = 1024 * 1024


def caddyfile_of(rendered: Rendered) -> str:
    return served_caddyfile(rendered)


def caddy_version() -> tuple[int, ...]:
    return check.caddy_version(caddy_binary())


# ----------------------------------------------------------------- rendered, offline


def test_defaults_are_rendered_for_both_engines_and_caddy_adapts_them(tmp_path: Path) -> None:
    for stack in ("local", "vm"):
        text = caddyfile_of(render(stack, overrides={"tenants": TENANTS}))
        assert "read_header 10s" in text and "idle 120s" in text, text
        assert "read_body" not in text and "write " not in text  # neither may cut a WebSocket
        assert text.count("max_size 64MiB") == 2 and text.count("max_conns_per_host 256") == 2
        conf = tmp_path / f"{stack}.Caddyfile"
        conf.write_text(text)
        adapted = subprocess.run([caddy_binary(), "adapt", "--config", str(conf), "--adapter", "caddyfile"],
                                 capture_output=True, text=True, timeout=60)
        assert adapted.returncode == 0, adapted.stderr
        servers = json.loads(adapted.stdout)["apps"]["http"]["servers"]
        for server in servers.values():  # the redirect listener too
            assert server["read_header_timeout"] == 10 * 10**9 and server["idle_timeout"] == 120 * 10**9
            assert "read_timeout" not in server and "write_timeout" not in server
        handlers = re.findall(r'"handler":"(\w+)"', adapted.stdout.replace(" ", ""))
        assert handlers.count("request_body") == 2 and handlers.count("reverse_proxy") == 2
        assert adapted.stdout.count('"max_size":67108864') == 2
        assert adapted.stdout.count('"max_conns_per_host":256') == 2


def test_every_limit_is_configurable_and_bounded() -> None:
    text = caddyfile_of(render("local", overrides={"tenants": TENANTS, "docker.proxy": {
        "maxRequestBodyMiB": 512, "readHeaderTimeoutSeconds": 5, "readBodyTimeoutSeconds": 900,
        "idleTimeoutSeconds": 30, "maxConnsPerTenant": 0}}))
    assert "read_header 5s" in text and "read_body 900s" in text and "idle 30s" in text
    assert "max_size 512MiB" in text and f"> {512 * MIB}`" in text
    assert "max_conns_per_host" not in text and "transport http" not in text  # 0: no cap
    for key, value in (("readHeaderTimeoutSeconds", 0), ("maxRequestBodyMiB", 0), ("idleTimeoutSeconds", 0),
                       ("maxConnsPerTenant", -1), ("readBodyTimeoutSeconds", True), ("maxBodyMiB", 1)):
        with pytest.raises(ConfigError) as exc:
            render("local", overrides={f"docker.proxy.{key}": value})
        assert f"docker.proxy.{key}" in str(exc.value), str(exc.value)


# ----------------------------------------------------------------- the real caddy and servers


class Tenant:
    def __init__(self, server: agent_server.RunningServer, key: str) -> None:
        self.server, self.key = server, key


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Tenant]]:
    """alice's and bob's real agent servers, booted at once, with the env and args the stack renders."""
    rendered = render("local", overrides={"tenants": TENANTS})
    started: dict[str, Tenant] = {}
    try:
        for spec in rendered.of_type(CONTAINER):
            name = spec.name.removesuffix("-agent-server")
            if name in TENANTS:
                env = dict(e.split("=", 1) for e in spec.inputs["envs"])
                server = agent_server.start(env, spec.inputs["command"], tmp_path_factory.mktemp(name), wait=False)
                started[name] = Tenant(server, env["OH_SESSION_API_KEYS_0"])
        for tenant in started.values():
            agent_server.wait_ready(tenant.server)
        yield started
    finally:
        for tenant in started.values():
            tenant.server.stop()


def proxy(run_caddy, tenants: dict[str, Tenant], **limits: Any) -> Caddy:
    """The rendered Caddyfile with these ``docker.proxy`` limits, run in front of the module's servers."""
    https_port, http_port = free_port(), free_port()
    overrides: dict[str, Any] = {"tenants": TENANTS, "docker.httpsPort": https_port, "docker.httpPort": http_port}
    overrides |= {f"docker.proxy.{k}": v for k, v in limits.items()}
    upstreams = {f"agent-{t}:{contract.PORT}": f"127.0.0.1:{tenants[t].server.port}" for t in TENANTS}
    run = run_caddy(caddyfile_of(render("local", overrides=overrides)), upstreams=upstreams,
                    wait_for_cert="alice.localhost")
    for t in TENANTS:  # both certificates issued, both upstreams answering
        deadline = time.monotonic() + 30
        while call(run, t, "GET", contract.READINESS_PROBE.path)[0] != 200:
            assert time.monotonic() < deadline, run.log.read_text()[-3000:]
            time.sleep(0.2)
    return run


def tls_socket(run: Caddy, tenant: str, timeout: float = 10) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(run.internal_root))
    raw = socket.create_connection(("127.0.0.1", run.https_port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=f"{tenant}.localhost")


def call(run: Caddy, tenant: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    """One HTTPS request through the proxy (HTTP/1.1, its own connection)."""
    ctx = ssl.create_default_context(cafile=str(run.internal_root))
    conn = LoopbackHTTPS(f"{tenant}.localhost", run.https_port, context=ctx, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": f"{tenant}.localhost:{run.https_port}",
                                                       **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def recv_until(sock: ssl.SSLSocket, marker: bytes, data: bytes = b"") -> bytes:
    """``data`` and what ``sock`` receives after it, up to and including ``marker`` (or until the peer closes)."""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def response_head(sock: ssl.SSLSocket) -> str:
    """The status line and headers the proxy answered on ``sock``."""
    return recv_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)[0].decode(errors="replace")


def closed_by_peer(sock: ssl.SSLSocket, wait: float) -> bool:
    """Whether the other end closes ``sock`` within ``wait`` seconds (what it sends before is ignored)."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except (ssl.SSLError, OSError):
        return True  # reset, or the TLS close cut short: closed either way


def multipart(payload: bytes, boundary: str = "limit-test") -> tuple[bytes, str]:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_100_mb_body_is_refused_with_413_before_the_server_sees_it(run_caddy, tenants) -> None:
    run = proxy(run_caddy, tenants)  # the defaults: 64 MiB
    alice = tenants["alice"]
    big = alice.server.workdir / "cwd" / f"big-{uuid.uuid4().hex[:8]}.bin"
    with tls_socket(run, "alice") as sock:
        sock.sendall((f"POST /api/file/upload?path={big} HTTP/1.1\r\nHost: alice.localhost:{run.https_port}\r\n"
                      f"{contract.AUTH_HEADER}: {alice.key}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      f"Content-Length: {100 * 10**6}\r\n\r\n").encode())
        t0 = time.monotonic()
        try:
            sock.sendall(b"\0" * MIB)  # a client that does not wait for an answer starts uploading
        except OSError:
            pass
        head = response_head(sock)
        assert head.startswith("HTTP/1.1 413"), head
        assert time.monotonic() - t0 < 5
        assert closed_by_peer(sock, 5)  # closed: the client cannot push the other 99 MB through
    # Under the limit, an upload is stored; it shows what the server logs for an upload it receives.
    small = alice.server.workdir / "cwd" / f"small-{uuid.uuid4().hex[:8]}.bin"
    body, kind = multipart(b"x" * (2 * MIB))
    status, text = call(run, "alice", "POST", f"/api/file/upload?path={small}", body,
                        {contract.AUTH_HEADER: alice.key, "Content-Type": kind}, timeout=30)
    assert status == 200 and json.loads(text)["file_size"] == 2 * MIB, text
    log = alice.server.log.read_text(errors="replace")
    assert small.name in log and big.name not in log, log[-2000:]
    assert not big.exists() and small.stat().st_size == 2 * MIB
    assert call(run, "alice", "GET", contract.READINESS_PROBE.path)[0] == 200


def test_a_chunked_body_is_cut_at_the_limit(run_caddy, tenants) -> None:
    """No Content-Length to refuse: request_body cuts the stream at the limit and the upload never completes.
    Caddy answers 413; before 2.7 it may answer 502 instead when the cut surfaces while streaming the body
    upstream (caddyserver/caddy#5652; Debian's 2.6.2 gave 413 here and 502 for a plain-HTTP upload)."""
    run = proxy(run_caddy, tenants, maxRequestBodyMiB=1)
    alice = tenants["alice"]
    target = alice.server.workdir / "cwd" / f"chunked-{uuid.uuid4().hex[:8]}.bin"
    body, kind = multipart(b"y" * (3 * MIB))
    with tls_socket(run, "alice") as sock:
        sock.sendall((f"POST /api/file/upload?path={target} HTTP/1.1\r\nHost: alice.localhost:{run.https_port}\r\n"
                      f"{contract.AUTH_HEADER}: {alice.key}\r\nContent-Type: {kind}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        try:
            for at in range(0, len(body), 256 * 1024):
                piece = body[at:at + 256 * 1024]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the proxy stopped reading
        head = response_head(sock)
    codes = ("HTTP/1.1 413",) if caddy_version() >= (2, 7) else ("HTTP/1.1 413", "HTTP/1.1 502")
    assert head.startswith(codes), head
    time.sleep(0.5)
    assert not target.exists()
    assert call(run, "alice", "GET", contract.READINESS_PROBE.path)[0] == 200


def test_slow_headers_are_cut_after_the_timeout_while_others_are_served(run_caddy, tenants) -> None:
    run = proxy(run_caddy, tenants, readHeaderTimeoutSeconds=2)
    silent = socket.create_connection(("127.0.0.1", run.https_port), timeout=10)  # not even a TLS handshake
    slow = tls_socket(run, "alice")
    t0 = time.monotonic()
    slow.sendall(b"GET /ready HTTP/1.1\r\n")
    header = f"Host: alice.localhost:{run.https_port}\r\nX-Slow: {'a' * 40}\r\n".encode()
    cut_after = None
    served = []
    for byte in header:  # one byte a second
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            cut_after = time.monotonic() - t0
            break
        if closed_by_peer(slow, 0.5):
            cut_after = time.monotonic() - t0
            break
        s0 = time.monotonic()
        served.append((call(run, "alice", "GET", contract.READINESS_PROBE.path)[0], time.monotonic() - s0))
        time.sleep(max(0.0, 1 - (time.monotonic() - s0) - 0.5))
        if time.monotonic() - t0 > 10:
            break
    slow.close()
    assert cut_after is not None and 1.5 < cut_after < 5, cut_after
    assert served and all(status == 200 and took < 2 for status, took in served), served
    with silent:
        assert closed_by_peer(silent, 5)  # the handshake falls under the same timeout


def test_a_tenant_at_its_connection_cap_queues_its_own_requests_and_the_other_is_served(run_caddy, tenants) -> None:
    run = proxy(run_caddy, tenants, maxConnsPerTenant=2)
    alice = tenants["alice"]
    auth = {contract.AUTH_HEADER: alice.key, "Content-Type": "application/json"}
    command = json.dumps({"command": "sleep 4", "timeout": 30}).encode()
    crowd = [tls_socket(run, "alice") for _ in range(40)]  # many idle connections to alice's host
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            busy = [pool.submit(call, run, "alice", "POST", "/api/bash/execute_bash_command", command, auth, 30)
                    for _ in range(2)]  # alice's 2 connections, held 4 s
            time.sleep(1.0)
            t0 = time.monotonic()
            queued = pool.submit(call, run, "alice", "GET", contract.READINESS_PROBE.path, None, None, 30)
            other = []
            while not queued.done() and time.monotonic() - t0 < 10:
                s0 = time.monotonic()
                other.append((call(run, "bob", "GET", contract.READINESS_PROBE.path)[0], time.monotonic() - s0))
                time.sleep(0.3)
            waited = time.monotonic() - t0
            assert queued.result()[0] == 200  # waited for a free connection, then served: no error
            assert [f.result()[0] for f in busy] == [200, 200]
    finally:
        for sock in crowd:
            sock.close()
    assert 1.5 < waited < 10, waited  # it did wait for alice's cap
    assert len(other) >= 3 and all(status == 200 and took < 1.5 for status, took in other), other


def test_an_idle_websocket_outlives_every_timeout_of_the_proxy(run_caddy, tenants) -> None:
    """Idle 3 s, headers 2 s, and even a 3 s whole-body timeout (off by default): an HTTP/1.1 WebSocket is a
    hijacked connection, whose deadlines Go's server clears, so none of them applies to it. A keep-alive
    connection that goes idle is closed after the idle timeout meanwhile."""
    from websockets.sync.client import connect

    run = proxy(run_caddy, tenants, idleTimeoutSeconds=3, readHeaderTimeoutSeconds=2, readBodyTimeoutSeconds=3)
    alice = tenants["alice"]
    ctx = ssl.create_default_context(cafile=str(run.internal_root))
    keepalive = tls_socket(run, "alice")
    keepalive.sendall(f"GET /ready HTTP/1.1\r\nHost: alice.localhost:{run.https_port}\r\n\r\n".encode())
    assert response_head(keepalive).startswith("HTTP/1.1 200")
    sock = socket.create_connection(("127.0.0.1", run.https_port), timeout=10)
    with connect(f"wss://alice.localhost:{run.https_port}{contract.WS_CHECK_PATH}", sock=sock, ssl=ctx,
                 server_hostname="alice.localhost", open_timeout=10, close_timeout=2, ping_interval=None) as ws:
        ws.send(json.dumps(contract.ws_auth_frame(alice.key)))
        t0 = time.monotonic()
        with keepalive:
            assert closed_by_peer(keepalive, 8)  # the idle keep-alive connection is closed ...
        assert 2 < time.monotonic() - t0 < 8
        time.sleep(max(0.0, 8 - (time.monotonic() - t0)))  # ... the WebSocket, idle as long and longer, is not
        # The pong comes from the agent server, through Caddy, after 8 s without a frame either way.
        assert ws.ping().wait(timeout=5), "the WebSocket did not answer a ping after 8 s idle"


def test_open_websockets_do_not_count_against_the_cap(run_caddy, tenants) -> None:
    """Go's transport hands an upgraded connection to reverse_proxy and stops counting it: a tenant at its
    cap of 2 still opens a third WebSocket and answers plain requests at once."""
    from websockets.sync.client import connect

    run = proxy(run_caddy, tenants, maxConnsPerTenant=2)
    alice = tenants["alice"]
    ctx = ssl.create_default_context(cafile=str(run.internal_root))
    sockets = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", run.https_port), timeout=10)
            ws = connect(f"wss://alice.localhost:{run.https_port}{contract.WS_CHECK_PATH}", sock=sock, ssl=ctx,
                         server_hostname="alice.localhost", open_timeout=5, close_timeout=2, ping_interval=None)
            sockets.append(ws)
            ws.send(json.dumps(contract.ws_auth_frame(alice.key)))
        t0 = time.monotonic()
        assert call(run, "alice", "GET", contract.READINESS_PROBE.path, timeout=5)[0] == 200
        assert time.monotonic() - t0 < 1.5
        assert all(ws.ping().wait(timeout=5) for ws in sockets)
    finally:
        for ws in sockets:
            ws.close()


class _Streamer(http.server.BaseHTTPRequestHandler):
    """An upstream that streams as the agent server's StreamingResponses do (no Content-Length): two
    parts, ``PAUSE`` seconds apart, as Server-Sent Events (``/sse``) or plain chunked JSON lines."""

    protocol_version = "HTTP/1.1"
    PAUSE = 2.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        kind = "text/event-stream" if self.path == "/sse" else "application/x-ndjson"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, part in enumerate((b"data: one\n\n", b"data: two\n\n")):
            if i:
                time.sleep(self.PAUSE)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_streamed_response_reaches_the_client_as_it_is_written(run_caddy) -> None:
    """The rendered reverse_proxy sets no flush_interval: Caddy flushes every write of a response without a
    Content-Length (and of any text/event-stream) at once, so a stream's first part arrives before its
    last is written, for Server-Sent Events and for a plain chunked body alike."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        https_port, http_port = free_port(), free_port()
        text = caddyfile_of(render("local", overrides={"tenants": TENANTS, "docker.httpsPort": https_port,
                                                       "docker.httpPort": http_port}))
        assert "flush_interval" not in text
        port = upstream.server_address[1]
        run = run_caddy(text, upstreams={f"agent-{t}:{contract.PORT}": f"127.0.0.1:{port}" for t in TENANTS},
                        wait_for_cert="alice.localhost")
        for path in ("/sse", "/lines"):
            with tls_socket(run, "alice") as sock:
                t0 = time.monotonic()
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: alice.localhost:{https_port}\r\n\r\n".encode())
                data = recv_until(sock, b"one")
                first = time.monotonic() - t0
                data = recv_until(sock, b"two", data)
                last = time.monotonic() - t0
            assert b"two" in data, data
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
            assert first < _Streamer.PAUSE / 2 and last >= _Streamer.PAUSE, (path, first, last)
    finally:
        upstream.shutdown()
        upstream.server_close()
