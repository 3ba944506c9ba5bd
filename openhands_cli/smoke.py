"""``openhands smoke -s STACK``: smoke-test a deployed stack from its outputs.

Reads the stack outputs (``pulumi stack output --json --show-secrets`` piped in, a file
with ``--outputs FILE``, or, with neither, by running that command) and checks every
tenant in ``url`` with its key from ``apiKey``:

1. ``ready``     GET /ready answers 200 within ``--timeout`` seconds (polled: a rollout may still be starting)
2. ``api-key``   an authenticated REST call with X-Session-API-Key answers 200
3. ``no-key``    the same call without the key answers 401 (authentication is really on)
4. ``websocket`` the WebSocket endpoint accepts the key in the first-message auth frame.
   The server sends nothing back on success and closes with 4001 within milliseconds on
   a wrong key (observed on 1.58.0), so "accepted" means: still open ``--ws-grace`` seconds
   after the auth frame.

Prints a per-tenant report and exits 0 when every check passed, 1 when any failed, and
2 when the outputs cannot be read. ``--ca-file`` trusts a private CA (e.g. Caddy's internal
CA of the local stack, or a cluster-internal issuer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from components import contract, deployment

REQUEST_TIMEOUT = 10.0
POLL_INTERVAL = 2.0
WS_GRACE_SECONDS = 2.0  # a wrong key is closed in ~10 ms; 200x margin for a proxy hop


class SmokeError(Exception):
    """The outputs are missing or unusable (exit 2)."""


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str


@dataclass
class TenantReport:
    tenant: str
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]


@dataclass(frozen=True)
class Target:
    tenant: str
    url: str
    key: str | None


# ------------------------------------------------------------------ outputs


def read_outputs(stack: str, source: str | None, stdin: TextIO = sys.stdin) -> dict[str, Any]:
    """The stack outputs as a dict, from ``source`` (a path or ``-``), stdin, or the Pulumi CLI."""
    if source == "-":
        text, origin = stdin.read(), "stdin"
    elif source:
        try:
            with open(source, encoding="utf-8") as fh:
                text, origin = fh.read(), source
        except OSError as exc:
            raise SmokeError(f"cannot read --outputs {source}: {exc.strerror}") from None
    else:
        text, origin = ("" if stdin.isatty() else stdin.read()), "stdin"
        if not text.strip():
            text, origin = _pulumi_outputs(stack), f"pulumi stack output -s {stack}"
    if not text.strip():
        raise SmokeError(f"no outputs on {origin}")
    try:
        outputs = json.loads(text)
    except ValueError as exc:
        raise SmokeError(f"outputs from {origin} are not JSON ({exc})") from None
    if not isinstance(outputs, dict):
        raise SmokeError(f"outputs from {origin} are not a JSON object")
    return outputs


def _pulumi_outputs(stack: str) -> str:
    exe = shutil.which("pulumi")
    if exe is None:
        raise SmokeError(
            "no outputs given and no pulumi CLI on PATH; run "
            f"`pulumi stack output -s {stack} --json --show-secrets | openhands smoke -s {stack}` "
            "or pass --outputs FILE"
        )
    proc = subprocess.run(
        [exe, "stack", "output", "--json", "--show-secrets", "--stack", stack],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SmokeError(f"`pulumi stack output -s {stack}` failed: {proc.stderr.strip()}")
    return proc.stdout


def targets(outputs: Mapping[str, Any]) -> list[Target]:
    """Each tenant's URL and key from the ``url`` and ``apiKey`` outputs."""
    urls = outputs.get(deployment.URL)
    if not isinstance(urls, dict) or not urls:
        raise SmokeError("the outputs have no `url` map of tenant -> URL; is this a stack of this package?")
    keys = outputs.get(deployment.API_KEY)
    if keys == "[secret]" or (isinstance(keys, dict) and "[secret]" in keys.values()):
        raise SmokeError("apiKey is hidden as [secret]: run `pulumi stack output --json --show-secrets`")
    if not isinstance(keys, dict):
        raise SmokeError("the outputs have no `apiKey` map of tenant -> key (needs --show-secrets)")
    return [Target(t, str(u).rstrip("/"), keys.get(t)) for t, u in sorted(urls.items())]


# ------------------------------------------------------------------ checks


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SmokeError(f"cannot load --ca-file {ca_file}: {exc}") from None


def _get(url: str, key: str | None, ctx: ssl.SSLContext, timeout: float) -> tuple[int, str]:
    headers = {contract.AUTH_HEADER: key} if key is not None else {}
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read(300).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode(errors="replace")


def _error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return f"{type(exc).__name__}: {exc}"


def check_ready(t: Target, ctx: ssl.SSLContext, timeout: float) -> Check:
    path = contract.READINESS_PROBE.path
    t0 = time.monotonic()
    last = "no answer"
    while True:
        left = timeout - (time.monotonic() - t0)
        try:
            status, body = _get(t.url + path, None, ctx, max(1.0, min(REQUEST_TIMEOUT, left)))
            if status == 200:
                return Check("ready", True, f"GET {path} -> 200 after {time.monotonic() - t0:.1f} s")
            last = f"{status} {body.strip()[:80]}"
        except (OSError, ssl.SSLError) as exc:
            last = _error(exc)
        if time.monotonic() - t0 + POLL_INTERVAL > timeout:
            return Check("ready", False, f"GET {path} not 200 within {timeout:g} s (last: {last})")
        time.sleep(POLL_INTERVAL)


def check_api(t: Target, ctx: ssl.SSLContext, *, with_key: bool) -> Check:
    path = contract.AUTH_CHECK_PATH
    name, want = ("api-key", 200) if with_key else ("no-key", 401)
    what = f"GET {path} {'with' if with_key else 'without'} {contract.AUTH_HEADER}"
    try:
        status, body = _get(t.url + path, t.key if with_key else None, ctx, REQUEST_TIMEOUT)
    except (OSError, ssl.SSLError) as exc:
        return Check(name, False, f"{what}: {_error(exc)}")
    if status == want:
        return Check(name, True, f"{what} -> {status}")
    hint = ""
    if with_key and status == 401:
        hint = ": the exported key is not accepted (wrong key, or a rotation not rolled out yet)"
    elif not with_key and status == 200:
        hint = ": the API answers WITHOUT a key, authentication is off (empty session key?)"
    return Check(name, False, f"{what} -> {status}, expected {want}{hint}")


def check_websocket(t: Target, ctx: ssl.SSLContext, grace: float) -> Check:
    path = contract.WS_CHECK_PATH
    url = "ws" + t.url.removeprefix("http") + path  # http->ws, https->wss
    try:
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect
    except ImportError:
        return Check("websocket", False, "the `websockets` package is not installed (uv sync / pip install websockets)")
    try:
        with connect(url, ssl=ctx if url.startswith("wss:") else None, open_timeout=REQUEST_TIMEOUT,
                     close_timeout=2) as ws:
            ws.send(json.dumps(contract.ws_auth_frame(t.key or "")))
            try:
                ws.recv(timeout=grace)  # the server only sends after a successful auth
            except TimeoutError:
                pass
            return Check("websocket", True, f"{path} accepted the first-frame auth (still open after {grace:g} s)")
    except ConnectionClosed as exc:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "no close frame")
        if code == contract.WS_AUTH_FAILED_CLOSE_CODE:
            return Check("websocket", False, f"{path} rejected the key: close {code} {reason!r}")
        return Check("websocket", False, f"{path} closed after the auth frame: close {code} {reason!r}")
    except InvalidStatus as exc:
        return Check("websocket", False, f"{path} handshake refused: HTTP {exc.response.status_code}")
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        return Check("websocket", False, f"{path}: {_error(exc)}")
    except Exception as exc:  # noqa: BLE001 - any protocol error is a failed check, not a crash
        return Check("websocket", False, f"{path}: {_error(exc)}")


def check_tenant(t: Target, ctx: ssl.SSLContext, timeout: float, grace: float) -> TenantReport:
    report = TenantReport(t.tenant, t.url)
    if not t.url.startswith(("http://", "https://")):
        report.checks.append(Check("url", False, f"{t.url!r} is not an http(s) URL"))
        return report
    report.checks.append(check_ready(t, ctx, timeout))
    if not report.checks[0].ok:
        report.checks += [Check(n, None, "skipped: not ready") for n in ("api-key", "no-key", "websocket")]
        return report
    if not t.key:
        report.checks.append(Check("api-key", False, "no key for this tenant in the apiKey output"))
    else:
        report.checks.append(check_api(t, ctx, with_key=True))
    report.checks.append(check_api(t, ctx, with_key=False))
    if t.key:
        report.checks.append(check_websocket(t, ctx, grace))
    return report


# ------------------------------------------------------------------ report


def render_report(stack: str, outputs: Mapping[str, Any], reports: list[TenantReport]) -> str:
    lines = [
        f"smoke test of stack {stack!r}: {len(reports)} tenant(s), image {outputs.get('image', '?')}, "
        f"contract {outputs.get('contractVersion', '?')}"
    ]
    for r in reports:
        lines.append(f"[{'PASS' if r.ok else 'FAIL'}] tenant {r.tenant}  {r.url}")
        for c in r.checks:
            mark = "ok  " if c.ok else ("skip" if c.ok is None else "FAIL")
            lines.append(f"    {mark}  {c.name:<10} {c.detail}")
    failed = [r for r in reports if not r.ok]
    if failed:
        lines.append(
            f"FAILED: {len(failed)} of {len(reports)} tenant(s): "
            + "; ".join(f"{r.tenant} ({', '.join(r.failed)})" for r in failed)
        )
    else:
        lines.append(f"OK: all {len(reports)} tenant(s) passed")
    return "\n".join(lines)


def _step_summary(stack: str, reports: list[TenantReport]) -> None:
    """A markdown table in the GitHub Actions job summary, when running there."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    rows = [f"### Smoke test: `{stack}`", "", "| tenant | result | failed checks |", "|---|---|---|"]
    rows += [f"| {r.tenant} | {'pass' if r.ok else 'FAIL'} | {', '.join(r.failed) or '-'} |" for r in reports]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")


def run(
    stack: str, outputs: Mapping[str, Any], *, timeout: float, ca_file: str | None = None,
    ws_grace: float = WS_GRACE_SECONDS, tenants: list[str] | None = None,
) -> tuple[int, str, list[TenantReport]]:
    """Check every tenant; returns (exit code, report text, reports)."""
    found = targets(outputs)
    if tenants:
        unknown = sorted(set(tenants) - {t.tenant for t in found})
        if unknown:
            raise SmokeError(f"--tenant {', '.join(unknown)} not in the url output ({[t.tenant for t in found]})")
        found = [t for t in found if t.tenant in tenants]
    ctx = ssl_context(ca_file)
    with ThreadPoolExecutor(max_workers=min(8, len(found))) as pool:
        reports = list(pool.map(lambda t: check_tenant(t, ctx, timeout, ws_grace), found))
    text = render_report(stack, outputs, reports)
    return (0 if all(r.ok for r in reports) else 1), text, reports


def resolve_localhost_to_loopback() -> None:
    """Map ``*.localhost`` to loopback in this process, as browsers and curl do (RFC 6761):
    Python's resolver asks DNS and fails, so the local stack's URLs would never connect.
    SNI and the Host header keep the tenant's name."""
    real = socket.getaddrinfo
    if getattr(real, "_localhost_loopback", False):
        return

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.rstrip(".").lower().endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    getaddrinfo._localhost_loopback = True  # type: ignore[attr-defined]
    socket.getaddrinfo = getaddrinfo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="openhands smoke",
        description="Smoke-test every tenant of a deployed stack from its outputs.",
        epilog="example: pulumi stack output -s dev --json --show-secrets | openhands smoke -s dev",
    )
    parser.add_argument("-s", "--stack", required=True, help="stack name (labels the report; used to call pulumi)")
    parser.add_argument("--outputs", metavar="FILE|-",
                        help="stack outputs JSON file, or - for stdin (default: stdin if piped, else pulumi CLI)")
    parser.add_argument("--timeout", type=float, default=float(contract.STARTUP_BUDGET_SECONDS), metavar="S",
                        help="seconds each tenant has to answer /ready with 200 (default %(default)g)")
    parser.add_argument("--ca-file", metavar="PEM", help="trust this CA bundle for https/wss (private CAs)")
    parser.add_argument("--ws-grace", type=float, default=WS_GRACE_SECONDS, metavar="S",
                        help="seconds the WebSocket must stay open after the auth frame (default %(default)g)")
    parser.add_argument("--tenant", action="append", help="check only this tenant (repeatable)")
    args = parser.parse_args(argv)
    resolve_localhost_to_loopback()
    try:
        outputs = read_outputs(args.stack, args.outputs)
        code, text, reports = run(args.stack, outputs, timeout=args.timeout, ca_file=args.ca_file,
                                  ws_grace=args.ws_grace, tenants=args.tenant)
    except SmokeError as exc:
        print(f"smoke: {exc}", file=sys.stderr)
        return 2
    print(text)
    _step_summary(args.stack, reports)
    return code
