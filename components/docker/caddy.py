"""Caddyfile for the TLS proxy in front of the Docker agent servers.

Caddy terminates TLS for one site per tenant, redirects plain HTTP to HTTPS, and
proxies to the tenant's container; its reverse_proxy passes WebSocket upgrades
(``/sockets/*``) through with no extra setting.

Hostile clients meet the stack's ``docker.proxy`` limits (``ProxyLimits``; docs/local.md, "Limits"),
rendered with directives Caddy 2.6 (Debian's, the tests' proxy) and 2.10 (the image) both accept:
the ``servers { timeouts }`` global option, a 413 for a declared body over the limit (``expression``
matcher on Content-Length, so the server never sees it) with ``request_body { max_size }`` for chunked
bodies, and ``max_conns_per_host`` on each tenant's own reverse_proxy transport. None of them cuts an
open WebSocket: Go's server clears a connection's deadlines when reverse_proxy hijacks it for the
upgrade, and the idle timeout applies only between requests. ``read_body``, off by default, is the
exception on HTTP/2, where it bounds each stream's body: a WebSocket over HTTP/2 (RFC 8441, which Caddy
>= 2.9 proxies when Go's extended CONNECT is on) would be cut by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from components.config.docker import ProxyLimits

TlsMode = Literal["internal", "acme", "selfsigned"]
CONFIG_PATH = "/etc/caddy/Caddyfile"
CERT_PATH = "/etc/caddy/tls/cert.pem"
KEY_PATH = "/etc/caddy/tls/key.pem"
DATA_DIR = "/data"  # the official image's XDG_DATA_HOME: certificates, ACME account, internal CA

# Caddy's admin API listens on a unix socket inside the container only (never on TCP, so no
# tenant on a shared network can reach it): the healthcheck's only way in. The image holds the
# caddy binary and nothing else (no shell, no curl or wget in Debian's build), so the check is
# caddy itself: ``caddy reload`` of the file Caddy runs, which the admin API answers with
# "config is unchanged" (no reload) while Caddy is up, and which fails when it is not.
ADMIN_SOCKET = "/tmp/caddy-admin.sock"
HEALTHCHECK_COMMAND: tuple[str, ...] = (
    "CMD", "caddy", "reload", "--config", CONFIG_PATH, "--adapter", "caddyfile", "--address", f"unix/{ADMIN_SOCKET}",
)
# How long a WebSocket outlives the config that opened it (reverse_proxy's stream_close_delay): a reload
# for another tenant's change leaves open sockets alone; after this they close and clients reconnect.
STREAM_CLOSE_DELAY = "1h"
# Caddy listens within a second; certificates are obtained in the background and do not gate it.
HEALTHCHECK_START_PERIOD_SECONDS = 30


# Browsers cannot set headers on a WebSocket, so they authenticate with ?session_api_key=
# in the URL; other clients send the X-Session-API-Key header. Neither may reach a log:
# every log entry that carries the request (access logs, and the error logs reverse_proxy
# writes while an upstream is down, e.g. during a key rotation) goes through this filter.
SESSION_KEY_QUERY = "session_api_key"
SESSION_KEY_HEADER = "X-Session-Api-Key"  # as Go canonicalises contract.AUTH_HEADER


def _log_filter(wrap: str, indent: str) -> list[str]:
    """A ``format filter`` block (Caddy >= 2.5 syntax, still accepted by 2.10)."""
    body = [
        "format filter {",
        f"\twrap {wrap}",
        "\tfields {",
        "\t\trequest>uri query {",
        f"\t\t\tdelete {SESSION_KEY_QUERY}",
        "\t\t}",
        f"\t\trequest>headers>{SESSION_KEY_HEADER} delete",
        "\t}",
        "}",
    ]
    return [indent + line for line in body]


MIB = 1024 * 1024


def _server_options(limits: ProxyLimits) -> list[str]:
    """The ``servers`` global option: every listener's timeouts (HTTP and HTTPS alike)."""
    timeouts = [f"read_header {limits.read_header_timeout_seconds}s"]
    if limits.read_body_timeout_seconds:
        timeouts.append(f"read_body {limits.read_body_timeout_seconds}s")
    timeouts.append(f"idle {limits.idle_timeout_seconds}s")
    # No `write` timeout: it would cut long responses (a command run by /api/bash/execute_bash_command
    # answers when it ends) and, on HTTP/2, a WebSocket carried in a stream.
    return ["\tservers {", "\t\ttimeouts {", *[f"\t\t\t{t}" for t in timeouts], "\t\t}", "\t}"]


def _body_limit(limits: ProxyLimits) -> list[str]:
    """A site's body limit: 413 at once for a declared Content-Length over it (the connection is
    closed, so the client does not upload the rest and the server sees nothing), and a cut at the
    limit for a body without a length (chunked: Caddy >= 2.7 answers 413, 2.6 may answer 502)."""
    size = limits.max_request_body_mib
    length = "{http.request.header.Content-Length}"
    return [
        f'\t@body_too_large expression `{length} != "" && int({length}) > {size * MIB}`',
        f'\trespond @body_too_large "request body too large: the limit is {size} MiB" 413 {{',
        "\t\tclose",
        "\t}",
        "\trequest_body {",
        f"\t\tmax_size {size}MiB",
        "\t}",
    ]


def caddyfile(
    sites: Mapping[str, str],
    *,
    tls: TlsMode,
    http_port: int = 80,
    https_port: int = 443,
    acme_email: str | None = None,
    cert_path: str = CERT_PATH,
    key_path: str = KEY_PATH,
    admin_socket: str | None = ADMIN_SOCKET,
    limits: ProxyLimits | None = None,
) -> str:
    """Render a Caddyfile. ``sites`` maps a public host name to its upstream ``host:port``.
    ``admin_socket``: where the admin API listens (a unix socket, for the healthcheck); None: off.
    ``limits``: the stack's ``docker.proxy`` (None: its defaults)."""
    if tls == "acme" and not acme_email:
        raise ValueError("ACME needs an email address")
    limits = limits or ProxyLimits()
    admin = f"admin unix/{admin_socket}" if admin_socket else "admin off"
    glob = [f"\thttp_port {http_port}", f"\thttps_port {https_port}", f"\t{admin}"]
    if tls == "acme":
        glob.append(f"\temail {acme_email}")
    if tls == "internal":
        # Never touch the host's trust store; clients trust the exported root instead.
        glob.append("\tskip_install_trust")
    glob += _server_options(limits)
    # Caddy's own log (errors included) with the session key scrubbed.
    glob += ["\tlog default {", *_log_filter("console", "\t\t"), "\t}"]
    out = ["# Rendered by openhands-deploy from the stack config. Edits are overwritten.", "{", *glob, "}", ""]
    public_port = "" if https_port == 443 else f":{https_port}"
    for host, upstream in sites.items():
        # An explicit redirect: Caddy's automatic one drops a non-default HTTPS port.
        # ACME HTTP-01 challenges are still answered on this listener first.
        out += [f"http://{host} {{", f"\tredir https://{host}{public_port}{{uri}} 308", "}", ""]
        out.append(f"https://{host} {{")
        if tls == "internal":
            out.append("\ttls internal")
        elif tls == "selfsigned":
            out.append(f"\ttls {cert_path} {key_path}")
        # Access log (JSON, to the container's log) without the session key.
        out += ["\tlog {", *_log_filter("json", "\t\t"), "\t}"]
        out += _body_limit(limits)
        out += [
            # No flush_interval: Caddy already flushes every write of a stream (text/event-stream, or no
            # Content-Length); "-1" would also flush the headers of every plain response on their own, a
            # TLS record and a write more per call (about a quarter of Caddy's CPU under load, bench/).
            f"\treverse_proxy {upstream} {{",
            # A config reload (a tenant added or removed) keeps open WebSockets for this long instead of
            # closing them at once (Caddy >= 2.7).
            f"\t\tstream_close_delay {STREAM_CLOSE_DELAY}",
        ]
        if limits.max_conns_per_tenant:
            # Each site has its own transport, so the cap is this tenant's alone: requests over it
            # wait in Caddy, and the other tenants' connections are not counted.
            out += ["\t\ttransport http {", f"\t\t\tmax_conns_per_host {limits.max_conns_per_tenant}", "\t\t}"]
        out += ["\t}", "}", ""]
    return "\n".join(out)
