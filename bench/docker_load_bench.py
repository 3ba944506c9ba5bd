"""Load on the `local` model on a real engine: the proxy's overhead, errors and memory, in one run.

    nice -n 10 uv run python bench/docker_load_bench.py [--tenants 3] [--clients 20] [--duration 60]
                                                         [--think 0.25] [--slices 6] [--json out.json]

Needs a Docker engine and the images of scripts/docker-images. One stack is applied as in
tests/real/docker/test_docker_real.py (tests/harness/docker_apply.py, loopback ports), each tenant gets a stored
secret and a conversation, then the same load runs both ways, straight to the servers and through
Caddy, for ``--duration`` seconds each (issue 21, case 1), in ``--slices`` alternating slices
(direct, proxy, proxy, direct, ...) so that whatever else the machine does weighs on both alike:

- per tenant ``--clients`` clients, each on one keep-alive connection sending authenticated
  REST reads in a loop bounded by the deadline and a request cap, ``--think`` seconds apart
  (tests/harness/load_client.py), and each holding one authenticated WebSocket for the whole run (the
  sockets of both ways are held throughout: each server holds 2 x ``--clients`` of them);
- "direct": plain HTTP to each server's address on its Docker network (the host reaches the
  bridge; nothing is published); "proxy-bridge": HTTPS to Caddy's address on its own network, with SNI
  and Host the tenant's host and Caddy's own root trusted: what a remote client reaches through the
  engine's DNAT, and the goal's figure; "proxy" (``--ways direct proxy``): the same to the published port
  on loopback, which Docker relays through its userland ``docker-proxy`` (an extra hop remote clients do
  not take). Only loopback and the stack's own containers.

Printed: errors (failed or non-200 calls, WebSockets that did not stay open), p50/p99 each way
and their ratio (goal: p99 proxy-bridge/direct <= 1.1), and the memory (usage minus inactive file
cache, as ``docker stats``) of Caddy and of the servers: idle, and the peak sampled every 2 s
under load. A short warm-up each way comes first and is not counted. Exit 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import contract  # noqa: E402
from tests.harness import real_docker  # noqa: E402
from tests.harness.load_client import load, load_interleaved, percentile  # noqa: E402

# "proxy-bridge" is the figure of the goal: Caddy's own address, as remote clients reach it through the
# engine's DNAT. "proxy" (the published port on loopback) adds Docker's userland relay, docker-proxy. Not
# all three at once by default: each server takes at most 50 bash-event WebSockets (the agent server's
# PubSub cap; the 51st is closed with 1013), and every way holds --clients of them.
WAYS = ("direct", "proxy-bridge", "proxy")
TENANT_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def cpu_seconds(client, name: str) -> float:
    """CPU time the container has used so far (its cgroup's total)."""
    return client.api.stats(name, stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def memory_mib(client, name: str) -> float:
    stats = client.api.stats(name, stream=False, one_shot=True)
    mem = stats["memory_stats"]
    detail = mem.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return (mem["usage"] - cache) / 2**20


class MemorySampler(threading.Thread):
    """Peak memory of each named container, sampled every ``every`` seconds."""

    def __init__(self, client, names: list[str], every: float = 2.0):
        super().__init__(daemon=True)
        self.client, self.names, self.every = client, names, every
        self.peak: dict[str, float] = dict.fromkeys(names, 0.0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for n in self.names:
                try:
                    self.peak[n] = max(self.peak[n], memory_mib(self.client, n))
                except Exception:  # noqa: BLE001 - a missed sample is not a figure
                    pass
            self.stop.wait(self.every)


def store_state(dep: real_docker.Deployment) -> dict[str, str]:
    conversations = {}
    for t in dep.tenants:
        status, body = dep.https(t, "/api/settings/secrets", dep.key(t), method="PUT",
                                 body={"name": "GITHUB_TOKEN", "value": f"ghp_bench_{t}"})
        assert status == 200, body
        status, body = dep.https(t, "/api/conversations", dep.key(t), method="POST", body={
            "agent": {"llm": {"model": "openai/gpt-4o", "api_key": "dummy"}, "tools": []},
            "workspace": {"working_dir": f"{contract.DATA_DIR}/project"}})
        assert status == 201, body[:300]
        conversations[t] = json.loads(body)["id"]
    return conversations


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients per tenant")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load each way")
    parser.add_argument("--think", type=float, default=0.25, help="seconds between a client's calls")
    parser.add_argument("--timeout", type=float, default=30, help="seconds before a call counts as failed")
    parser.add_argument("--slices", type=int, default=6, help="alternating slices each way")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of uncounted load each way first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=["direct", "proxy-bridge"],
                        help="direct (to each server), proxy-bridge (to Caddy's address on its network, as "
                             "remote clients through DNAT; the goal's figure), proxy (the published port on "
                             "loopback, through docker-proxy)")
    args = parser.parse_args()
    if "direct" not in args.ways or len(args.ways) < 2:
        parser.error("--ways needs direct (the reference) and at least one way through Caddy")
    try:
        client = real_docker.engine()
        refs = real_docker.images()
    except BaseException as exc:  # noqa: BLE001 - pytest's skip/fail outside pytest
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    info = client.version()
    cpus = Path("/proc/cpuinfo").read_text().count("processor")
    print(f"{datetime.now().isoformat(timespec='minutes')}; {platform.node()}, {cpus} CPUs, "
          f"{platform.machine()}; engine {info['Version']} (API {client.api.api_version}); images {refs}")
    print(f"{args.tenants} tenants x {args.clients} clients, {args.duration:g} s each way, "
          f"{args.think:g} s between a client's calls, one WebSocket held per client")
    dep = real_docker.new_deployment(client, "load", TENANT_NAMES[:args.tenants], retainData=False)
    figures: dict[str, Any] = {"args": vars(args) | {"json": None}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dep.up()
            dep.fetch_ca(Path(tmp) / "root.crt")
            for t in dep.tenants:
                dep.wait_ready(t)
            conversations = store_state(dep)
            time.sleep(5)
            names = {"proxy": dep.proxy, **{t: f"{dep.prefix}-{t}" for t in dep.tenants}}
            idle = {k: memory_mib(client, n) for k, n in names.items()}
            if args.warmup:
                for via in args.ways:
                    load(real_docker.load_targets(dep, dep.tenants, via, conversations), clients=args.clients,
                         duration=args.warmup, think=args.think, timeout=args.timeout, websockets=False)
            modes = {via: real_docker.load_targets(dep, dep.tenants, via, conversations) for via in args.ways}
            sampler = MemorySampler(client, list(names.values()))
            cpu0 = {k: cpu_seconds(client, n) for k, n in names.items()}
            load0 = os.getloadavg()[0]
            own0 = time.process_time()
            sampler.start()
            try:
                results = load_interleaved(modes, clients=args.clients, duration=args.duration,
                                           slices=args.slices, think=args.think, timeout=args.timeout)
            finally:
                sampler.stop.set()
                sampler.join()
            cpu = {k: cpu_seconds(client, n) - cpu0[k] for k, n in names.items()}
            load1 = os.getloadavg()[0]
            own = time.process_time() - own0
            peak = {k: sampler.peak[n] for k, n in names.items()}
            for via, result in results.items():
                print(f"  {via:12}: {result.summary()}")
                for sample in result.error_samples[:5]:
                    print(f"          error: {sample}")
            # Nothing lost: every tenant still serves what was stored.
            for t in dep.tenants:
                assert dep.https(t, "/api/settings/secrets/GITHUB_TOKEN", dep.key(t)) == (200, f"ghp_bench_{t}")
                assert dep.https(t, f"/api/conversations/{conversations[t]}/events/search", dep.key(t))[0] == 200
    finally:
        if dep.applier is not None:
            try:
                dep.applier.destroy()
            except Exception:  # noqa: BLE001
                pass
        real_docker.remove_stack(client, dep.prefix)

    d = results["direct"]
    errors = {via: r.errors for via, r in results.items()}
    print(f"\nerrors: {errors} (goal 0)")
    for via, r in results.items():
        if via == "direct":
            continue
        goal = " (goal <= 1.1)" if via == "proxy-bridge" else " (docker-proxy's relay included)"
        print(f"{via}: p50 {ms(r.percentile(50))} against direct {ms(d.percentile(50))}, ratio "
              f"{r.percentile(50) / d.percentile(50):.2f}; p99 {ms(r.percentile(99))} against direct "
              f"{ms(d.percentile(99))}, ratio {r.percentile(99) / d.percentile(99):.2f}{goal}")
    for t in dep.tenants:
        print(f"  {t}: p99 " + ", ".join(f"{via} {ms(percentile(r.per_target[t].latencies, 99))}"
                                         for via, r in results.items()))
    servers = [k for k in names if k != "proxy"]
    print(f"memory under load (peak): Caddy {peak['proxy']:.0f} MiB, servers "
          f"{min(peak[t] for t in servers):.0f}-{max(peak[t] for t in servers):.0f} MiB")
    print(f"memory idle: Caddy {idle['proxy']:.0f} MiB, servers {min(idle[t] for t in servers):.0f}-"
          f"{max(idle[t] for t in servers):.0f} MiB")
    server_cpu = sum(cpu[t] for t in servers)
    through = sum(r.requests for via, r in results.items() if via != "direct")
    print(f"CPU over the run: Caddy {cpu['proxy']:.1f} s ({cpu['proxy'] / through * 1000:.2f} ms per call "
          f"through it), servers {server_cpu:.1f} s ({server_cpu / (through + d.requests) * 1000:.2f} ms per "
          f"call), this client {own:.1f} s; host load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs")
    figures |= {
        **{via: {"requests": r.requests, "errors": r.errors, "p50": r.percentile(50), "p99": r.percentile(99),
                 "ratio_p50": r.percentile(50) / d.percentile(50), "ratio_p99": r.percentile(99) / d.percentile(99)}
           for via, r in results.items()},
        "memory_idle_mib": idle, "cpu_seconds": cpu | {"client": own},
        "load_average": [load0, load1],
        "memory_peak_mib": peak,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if not any(errors.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
