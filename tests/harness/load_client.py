"""A bounded load generator for agent servers, through the proxy or straight to a server.

Used by tests/real/docker/test_faults_docker.py (a few seconds) and bench/docker_load_bench.py (a minute).
Each client of a target holds one keep-alive HTTP/1.1 connection and sends authenticated REST
calls in a loop bounded twice (a deadline and ``max_requests``), with ``think`` seconds between
calls; with ``websockets`` it also holds one authenticated WebSocket (first-frame auth) for the
whole run and checks at the end that it is still open (a ping is answered).

Only asyncio and ``websockets`` (a dependency of the project): a minimal HTTP/1.1 client
(Content-Length and chunked bodies) keeps the client's own cost small and equal both ways.
Connections go to the address a ``Target`` names (loopback for the proxy, a container's IP on
its Docker network for a server); the Host header and TLS SNI name the tenant's host. A ``stop``
event ends a run early, once another thread has seen what it waited for (the deadline still bounds it).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from components import contract

MAX_ERRORS_KEPT = 20


@dataclass(frozen=True)
class Target:
    tenant: str
    address: str  # what to connect to
    port: int
    host: str  # Host header and TLS server name
    key: str  # the tenant's session key
    tls: ssl.SSLContext | None = None
    conversation: str | None = None  # a conversation the REST calls read

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host_header}{path}"


def rest_paths(target: Target) -> list[str]:
    """The authenticated calls each client cycles through: all reads, so a minute of load leaves
    the tenant's state as it was (the conversation's events need its lease: a live conversation)."""
    paths = [contract.AUTH_CHECK_PATH, "/api/conversations/search?limit=10", "/api/settings/secrets"]
    if target.conversation:
        paths += [f"/api/conversations/{target.conversation}",
                  f"/api/conversations/{target.conversation}/events/search?limit=5"]
    return paths


class ConnectionLost(Exception):
    pass


class HttpConnection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, target: Target):
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.served = 0  # responses read on the current connection
        self.retried = 0

    async def open(self) -> None:
        t = self.target
        self.reader, self.writer = await asyncio.open_connection(
            t.address, t.port, ssl=t.tls, server_hostname=t.host if t.tls else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.served = 0

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One call. Like browsers and Go's http.Transport (RFC 9112, 9.3.1), a GET sent on a reused
        keep-alive connection that the server closed before answering (it closes idle connections when
        its config reloads) is sent once more on a new connection; ``retried`` counts those."""
        reused = self.writer is not None and self.served > 0
        try:
            return await self._request(method, path, body)
        except (ConnectionLost, ConnectionResetError, BrokenPipeError) as exc:
            if not (reused and method == "GET" and getattr(exc, "before_response", True)):
                raise
            self.close()
            self.retried += 1
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.target.host_header}",
                f"{contract.AUTH_HEADER}: {self.target.key}", "Accept: application/json"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionLost("connection closed before a response")
        status = int(status_line.split()[1])
        try:
            return status, await self._rest_of_response()
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            lost = ConnectionLost(f"connection lost during the response: {exc}")
            lost.before_response = False  # type: ignore[attr-defined]  # never resent
            raise lost from exc

    async def _rest_of_response(self) -> bytes:
        assert self.reader is not None
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.served += 1
        return data


@dataclass
class TargetStats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_times: list[float] = field(default_factory=list)  # time.monotonic() of every failed call
    ws_opened: int = 0
    ws_failed: int = 0  # did not open, or was closed before the end
    retried: int = 0  # GETs resent once on a new connection (the server closed the idle one)

    def error(self, what: str) -> None:
        self.errors += 1
        self.error_times.append(time.monotonic())
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(what)


@dataclass
class LoadResult:
    per_target: dict[str, TargetStats]
    seconds: float

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.per_target.values() for x in s.latencies]

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    @property
    def errors(self) -> int:
        return sum(s.errors + s.ws_failed for s in self.per_target.values())

    @property
    def error_samples(self) -> list[str]:
        return [f"{t}: {e}" for t, s in self.per_target.items() for e in s.error_samples]

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    def summary(self) -> str:
        ws = sum(s.ws_opened for s in self.per_target.values())
        retried = sum(s.retried for s in self.per_target.values())
        return (f"{self.requests} calls in {self.seconds:.1f} s ({self.requests / self.seconds:.0f}/s), "
                f"{self.errors} error(s), {retried} resent on a new connection, {ws} WebSocket(s) opened; "
                f"p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


async def _websocket(target: Target, stats: TargetStats, opened: asyncio.Event, done: asyncio.Event,
                     timeout: float) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(target.ws_url(contract.WS_CHECK_PATH), host=target.address, port=target.port,
                           ssl=target.tls, server_hostname=target.host if target.tls else None, proxy=None,
                           open_timeout=timeout, close_timeout=2, ping_interval=None) as ws:
            await ws.send(json.dumps(contract.ws_auth_frame(target.key)))
            stats.ws_opened += 1
            opened.set()
            await done.wait()
            # Still open and answering at the end of the run: a ping gets its pong.
            pong = await ws.ping()
            await asyncio.wait_for(pong, timeout)
    except Exception as exc:  # noqa: BLE001 - every failure is a failed socket, kept as a sample
        stats.ws_failed += 1
        stats.error(f"websocket: {type(exc).__name__}: {exc}")
    finally:
        opened.set()


async def _rest_client(target: Target, stats: TargetStats, start: asyncio.Event, deadline: float,
                       think: float, max_requests: int, timeout: float, offset: int,
                       stop: threading.Event | None = None) -> None:
    conn = HttpConnection(target)
    paths = rest_paths(target)
    try:
        await asyncio.wait_for(conn.open(), timeout)  # untimed: only calls are measured
    except Exception as exc:  # noqa: BLE001
        stats.error(f"connect: {type(exc).__name__}: {exc}")
        return
    await start.wait()
    loop = asyncio.get_running_loop()
    try:
        for i in range(max_requests):
            if loop.time() >= deadline or (stop is not None and stop.is_set()):
                break
            path = paths[(i + offset) % len(paths)]
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.request("GET", path), timeout)
            except Exception as exc:  # noqa: BLE001 - a failed call, never retried
                conn.close()
                stats.error(f"GET {path}: {type(exc).__name__}: {exc}")
            else:
                if status == 200:
                    stats.latencies.append(time.perf_counter() - t0)
                else:
                    stats.error(f"GET {path}: {status} {body[:200].decode(errors='replace')}")
            await asyncio.sleep(think)
    finally:
        stats.retried += conn.retried
        conn.close()


async def run_load(targets: Sequence[Target], clients: int, duration: float, think: float = 0.1,
                   max_requests: int | None = None, timeout: float = 30, websockets: bool = True,
                   stop: threading.Event | None = None) -> LoadResult:
    """``clients`` REST clients (and as many WebSockets) per target for ``duration`` seconds, or until
    ``stop`` is set."""
    results = await run_interleaved({"load": targets}, clients, duration, slices=1, think=think,
                                    max_requests=max_requests, timeout=timeout, websockets=websockets, stop=stop)
    return results["load"]


async def run_interleaved(modes: dict[str, Sequence[Target]], clients: int, duration: float, slices: int = 1,
                          think: float = 0.1, max_requests: int | None = None, timeout: float = 30,
                          websockets: bool = True, stop: threading.Event | None = None) -> dict[str, LoadResult]:
    """The same load on each mode's targets (e.g. through the proxy, and straight to the servers),
    ``duration`` seconds per mode in total, run in ``slices`` alternating slices so that whatever
    else the machine does weighs on every mode alike. The WebSockets of every mode are held for the
    whole run; the REST clients of one mode run at a time."""
    per_mode = {m: {t.tenant: TargetStats() for t in targets} for m, targets in modes.items()}
    seconds = dict.fromkeys(modes, 0.0)
    done = asyncio.Event()
    ws_tasks, opened = [], []
    if websockets:
        for m, targets in modes.items():
            for t in targets:
                for _ in range(clients):
                    ev = asyncio.Event()
                    opened.append(ev)
                    ws_tasks.append(asyncio.create_task(_websocket(t, per_mode[m][t.tenant], ev, done, timeout)))
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in opened)), timeout + 5)
    loop = asyncio.get_running_loop()
    slice_seconds = duration / slices
    cap = max_requests or int(slice_seconds / think * 2) + 10
    order = list(modes)
    for i in range(slices):
        for m in order if i % 2 == 0 else order[::-1]:
            start = asyncio.Event()
            t0 = loop.time()
            deadline = t0 + slice_seconds
            rest = [asyncio.create_task(_rest_client(t, per_mode[m][t.tenant], start, deadline, think, cap,
                                                     timeout, offset=k, stop=stop))
                    for t in modes[m] for k in range(clients)]
            start.set()
            await asyncio.gather(*rest)
            seconds[m] += loop.time() - t0
    done.set()
    await asyncio.gather(*ws_tasks)
    return {m: LoadResult(per_target=per_mode[m], seconds=seconds[m]) for m in modes}


def load(targets: Sequence[Target], clients: int, duration: float, **kw) -> LoadResult:
    return asyncio.run(run_load(targets, clients, duration, **kw))


def load_interleaved(modes: dict[str, Sequence[Target]], clients: int, duration: float, **kw) -> dict[str, LoadResult]:
    return asyncio.run(run_interleaved(modes, clients, duration, **kw))
