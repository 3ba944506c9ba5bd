"""Caddyfile for the TLS proxy in front of the Docker agent servers.

Caddy terminates TLS for one site per tenant, redirects plain HTTP to HTTPS, and
proxies to the tenant's container; its reverse_proxy passes WebSocket upgrades
(``/sockets/*``) through with no extra setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

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
) -> str:
    """Render a Caddyfile. ``sites`` maps a public host name to its upstream ``host:port``.
    ``admin_socket``: where the admin API listens (a unix socket, for the healthcheck); None: off."""
    if tls == "acme" and not acme_email:
        raise ValueError("ACME needs an email address")
    admin = f"admin unix/{admin_socket}" if admin_socket else "admin off"
    glob = [f"\thttp_port {http_port}", f"\thttps_port {https_port}", f"\t{admin}"]
    if tls == "acme":
        glob.append(f"\temail {acme_email}")
    if tls == "internal":
        # Never touch the host's trust store; clients trust the exported root instead.
        glob.append("\tskip_install_trust")
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
        out += [
            f"\treverse_proxy {upstream} {{",
            # Stream responses and events as they come instead of buffering them.
            "\t\tflush_interval -1",
            "\t}",
            "}",
            "",
        ]
    return "\n".join(out)
