"""The smoke command against the real agent server (one boot per test), plus its input handling."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import contract
from openhands_cli import smoke
from tests.harness.agent_server import free_port

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "smoke-good-key-0123456789abcdef"
WRONG_KEY = "smoke-wrong-key-0123456789abcdef"


def server_env() -> dict[str, str]:
    """The env every model renders: the contract's plain env plus one tenant's key env."""
    keys = contract.KeyValues(session_keys=(GOOD_KEY,), secret_key="smoke-secret-key-0123456789")
    return {**contract.container_env(), **contract.secret_env(keys)}


def outputs_json(urls: dict[str, str], keys: dict[str, str]) -> str:
    """What `pulumi stack output --json --show-secrets` prints for a stack of this package."""
    return json.dumps({"model": "kubernetes", "url": urls, "apiKey": keys,
                       "image": contract.DEFAULT_IMAGE, "contractVersion": contract.CONTRACT_VERSION})


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openhands_cli", "smoke", *args], input=stdin, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_smoke_passes_on_healthy_server_and_names_tenant_and_check_on_wrong_key(start_agent_server, tmp_path):
    server = start_agent_server(server_env(), contract.args())

    # Healthy: stack outputs piped on stdin, as in CI.
    ok = run_cli("-s", "dev", "--timeout", "20", stdin=outputs_json({"alpha": server.url}, {"alpha": GOOD_KEY}))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for check in ("ready", "api-key", "no-key", "websocket"):
        assert f"ok    {check}" in ok.stdout, ok.stdout
    assert "[PASS] tenant alpha" in ok.stdout
    assert "OK: all 1 tenant(s) passed" in ok.stdout

    # beta holds a wrong key (same server): only beta fails, on the two checks that use the key.
    path = tmp_path / "outputs.json"
    path.write_text(outputs_json({"alpha": server.url, "beta": server.url}, {"alpha": GOOD_KEY, "beta": WRONG_KEY}))
    bad = run_cli("-s", "dev", "--outputs", str(path), "--timeout", "20")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "[PASS] tenant alpha" in bad.stdout
    assert "[FAIL] tenant beta" in bad.stdout
    assert "FAILED: 1 of 2 tenant(s): beta (api-key, websocket)" in bad.stdout, bad.stdout
    assert "-> 401, expected 200: the exported key is not accepted" in bad.stdout
    assert f"rejected the key: close {contract.WS_AUTH_FAILED_CLOSE_CODE} 'Authentication failed'" in bad.stdout
    # the no-key check still passes for beta: the server does refuse keyless calls
    beta = bad.stdout.split("[FAIL] tenant beta")[1]
    assert "ok    no-key" in beta


def test_smoke_through_tls_with_private_ca(start_agent_server, run_caddy):
    """https/wss through Caddy's internal CA: passes with --ca-file, fails clearly without it."""
    server = start_agent_server(server_env(), contract.args())
    port = free_port()
    http_port = free_port()
    caddyfile = (
        "{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n"
        f"\thttp_port {http_port}\n\thttps_port {port}\n}}\n"
        f"https://127.0.0.1:{port} {{\n\ttls internal\n\treverse_proxy 127.0.0.1:{server.port}\n}}\n"
    )
    proxy = run_caddy(caddyfile, upstreams={}, wait_for_cert="127.0.0.1")
    url = f"https://127.0.0.1:{port}"
    outputs = outputs_json({"alpha": url}, {"alpha": GOOD_KEY})

    trusted = run_cli("-s", "prod", "--outputs", "-", "--timeout", "20", "--ca-file", str(proxy.internal_root),
                      stdin=outputs)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr + proxy.log.read_text()[-2000:]
    assert "ok    websocket" in trusted.stdout

    untrusted = run_cli("-s", "prod", "--outputs", "-", "--timeout", "2", stdin=outputs)
    assert untrusted.returncode == 1
    assert "FAILED: 1 of 1 tenant(s): alpha (ready, api-key, no-key, websocket)" in untrusted.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout


# ------------------------------------------------------------------ without a server


def test_hidden_secrets_are_refused_with_the_fix(tmp_path):
    out = run_cli("-s", "dev", "--outputs", "-", stdin=json.dumps({"url": {"a": "https://a.x"}, "apiKey": "[secret]"}))
    assert out.returncode == 2
    assert "--show-secrets" in out.stderr


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("", "no outputs on stdin"), ("not json", "not JSON"), ('{"image": "x"}', "no `url` map")],
)
def test_unusable_outputs_exit_2(stdin, message):
    out = run_cli("-s", "dev", "--outputs", "-", stdin=stdin)
    assert out.returncode == 2
    assert message in out.stderr


def test_unreachable_tenant_fails_ready_and_skips_the_rest():
    port = free_port()  # nothing listens
    code, text, reports = smoke.run("dev", {"url": {"gone": f"http://127.0.0.1:{port}"}, "apiKey": {"gone": "k"}},
                                    timeout=1)
    assert code == 1
    assert reports[0].failed == ["ready", "api-key", "no-key", "websocket"]
    assert "not 200 within 1 s" in text and "ConnectionRefusedError" in text
    assert "skip  api-key" in text


class _NeverReady(http.server.BaseHTTPRequestHandler):
    """Answers like an agent server that never finishes starting: GET /ready -> 503 initializing."""

    hits: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(time.monotonic())
        body = b'{"status":"initializing","message":"Server is still initializing"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def never_ready(kind: str) -> Iterator[str]:
    """A URL whose /ready is never 200: ``503`` answers 503 to every poll, ``silent`` accepts the
    connection and never answers."""
    if kind == "503":
        _NeverReady.hits = []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NeverReady)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["503", "silent"])
def test_a_server_that_never_becomes_ready_fails_within_the_timeout(kind: str):
    timeout = 5.0
    with never_ready(kind) as url:
        t0 = time.monotonic()
        code, text, reports = smoke.run("dev", {"url": {"slow": url}, "apiKey": {"slow": "k"}}, timeout=timeout)
        elapsed = time.monotonic() - t0
    assert code == 1 and reports[0].failed == ["ready", "api-key", "no-key", "websocket"], text
    assert f"not 200 within {timeout:g} s" in text
    # It kept polling until the budget was nearly spent, and gave up by the timeout (plus a small margin).
    assert timeout - smoke.POLL_INTERVAL - 0.5 <= elapsed <= timeout + 1.5, elapsed
    if kind == "503":
        assert "last: 503" in text and "initializing" in text
        assert len(_NeverReady.hits) >= 2, _NeverReady.hits  # polled, not asked once
    else:
        assert "timed out" in text.lower(), text


def test_missing_key_for_a_tenant_is_a_failure_not_a_crash(start_agent_server):
    """The no-key branch for real: a tenant in `url` with no entry in `apiKey` fails its api-key check
    with a reason (the CLI exits 1 with the report, no traceback); its no-key check still runs."""
    server = start_agent_server(server_env(), contract.args())
    out = run_cli("-s", "dev", "--outputs", "-", "--timeout", "20",
                  stdin=outputs_json({"alpha": server.url, "nokey": server.url}, {"alpha": GOOD_KEY}))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "[PASS] tenant alpha" in out.stdout
    assert "FAILED: 1 of 2 tenant(s): nokey (api-key)" in out.stdout, out.stdout
    nokey = out.stdout.split("[FAIL] tenant nokey")[1]
    assert "FAIL  api-key    no key for this tenant in the apiKey output" in nokey
    assert "ok    no-key" in nokey and "ok    ready" in nokey
