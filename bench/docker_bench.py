"""Docker model on a real engine: the two rollout ratios, idle memory, and (``--compose``) Compose.

    uv run python bench/docker_bench.py [--tenants 1 3] [--designs before after] [--compose] [--idle 5]

Needs a Docker engine and the images of scripts/docker-images (Compose only with ``--compose``). Our
stack is applied by tests/harness/docker_apply.py (pulumi-docker's behaviour, ``wait: true``, the
Pulumi engine's dependency order). For each tenant count and design, in one run:

- **apply -> all healthy / every server first answered /ready**: seconds of the first apply, against
  the moment the last server first answered ``/ready`` (asked straight at each server, every 0.1 s,
  from the moment its container exists). Goal (issue 21): <= 1.2.
- **rotation gap / solo boot**: each tenant's longest window without a 200 on ``/ready`` or on an
  authenticated call (polled through Caddy every 0.1 s) during a key rotation, against one server's
  boot with nothing else starting (its container restarted alone, StartedAt -> first 200; the median of
  3 restarts, while every tenant is polled as during the rotation). Goal: gap <= solo boot + 1 s at any
  tenant count. Also: each tenant's gap against its own new server's boot (the rollout's own cost:
  stop, remove, create, start), and the most tenants down at the same moment.
- idle memory per container.

``--designs before after``: ``before`` renders the previous rollout in the same run (the start-blind
15 s healthcheck and every tenant at once; see ``design``), ``after`` this checkout's model.
``--compose`` also times ``docker-compose up -d`` of a compose file generated from the SAME render,
waiting for the same healthchecks (Debian 12's Compose v1 has no ``--wait``: the script polls for
what ``docker compose up --wait`` waits for).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
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
from openhands_cli.render import Rendered  # noqa: E402
from tests.harness import real_docker  # noqa: E402
from tests.harness.docker_apply import CONTAINER, IMAGE, mock_image_id  # noqa: E402

TENANT_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


# ------------------------------------------------------------------ compose from the render


def compose_file(rendered: Rendered, workdir: Path) -> dict[str, Any]:
    """A compose file (format 2.4: healthcheck start_period, depends_on service_healthy,
    named volumes and networks) with the same containers, env, limits and networks."""
    refs = {mock_image_id(i.inputs["name"]): i.inputs["name"] for i in rendered.of_type(IMAGE)}
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    networks: dict[str, Any] = {}
    agent_services = []
    for c in rendered.of_type(CONTAINER):
        i = c.inputs
        svc: dict[str, Any] = {
            "container_name": i["name"],
            "image": refs[i["image"]],
            "restart": i.get("restart", "no"),
            "labels": {x["label"]: x["value"] for x in i.get("labels", [])},
            "logging": {"driver": i.get("logDriver", "json-file"), "options": i.get("logOpts", {})},
            "stop_grace_period": f"{int(i.get('destroyGraceSeconds', 10))}s",
        }
        if i.get("command"):
            svc["command"] = i["command"]
        if i.get("envs"):
            svc["environment"] = list(i["envs"])
        if i.get("user"):
            svc["user"] = i["user"]
        caps = i.get("capabilities") or {}
        if caps.get("drops"):
            svc["cap_drop"] = caps["drops"]
        if caps.get("adds"):
            svc["cap_add"] = caps["adds"]
        if i.get("securityOpts"):
            svc["security_opt"] = i["securityOpts"]
        if i.get("memory"):
            svc["mem_limit"] = f"{int(i['memory'])}m"
        if i.get("cpus"):
            svc["cpus"] = float(i["cpus"])
        if i.get("ports"):
            svc["ports"] = [f"{p.get('ip', '0.0.0.0')}:{int(p['external'])}:{int(p['internal'])}" for p in i["ports"]]
        mounts = []
        for v in i.get("volumes", []):
            key = v["volumeName"].replace(".", "_")
            volumes[key] = {"name": v["volumeName"]}
            mounts.append(f"{key}:{v['containerPath']}")
        for u in i.get("uploads", []):  # compose has no upload: a read-only bind of the same file
            local = workdir / "files" / u["file"].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(u["content"])
            mounts.append(f"{local}:{u['file']}:ro")
        if mounts:
            svc["volumes"] = mounts
        svc["networks"] = {}
        for n in i.get("networksAdvanced", []):
            networks[n["name"]] = {"name": n["name"]}
            svc["networks"][n["name"]] = {"aliases": n["aliases"]} if n.get("aliases") else {}
        hc = i.get("healthcheck")
        if hc:
            svc["healthcheck"] = {"test": hc["tests"], "interval": hc["interval"], "timeout": hc["timeout"],
                                  "retries": int(hc["retries"]), "start_period": hc["startPeriod"]}
        if c.name.endswith("-agent-server"):  # the proxy has a healthcheck too, and waits for these
            agent_services.append(c.name)
        services[c.name] = svc
    for name, svc in services.items():
        if name not in agent_services:
            svc["depends_on"] = {a: {"condition": "service_healthy"} for a in agent_services}
    return _escape({"version": "2.4", "services": services, "volumes": volumes, "networks": networks})


def _escape(value: Any) -> Any:
    """Compose interpolates ``$VAR`` in every string; ``$$`` is a literal dollar (the
    healthcheck's bash uses ``$status``)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def compose_command() -> tuple[list[str], bool]:
    """(argv prefix, has --wait)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"], True
    exe = shutil.which("docker-compose")
    if exe is None:
        raise SystemExit("no Compose: apt-get install docker-compose (v1) or install the compose v2 plugin")
    return [exe], False


def wait_all_healthy(client, names: list[str], healthchecked: set[str], budget: float = 300) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        ok = True
        for n in names:
            try:
                state = client.api.inspect_container(n)["State"]
            except Exception:  # noqa: BLE001 - not created yet
                ok = False
                break
            if not state["Running"] or (n in healthchecked and (state.get("Health") or {}).get("Status") != "healthy"):
                ok = False
                break
        if ok:
            return
        time.sleep(0.2)
    raise RuntimeError(f"not all healthy within {budget}s: {names}")


def time_compose(client, tenants: list[str], workdir: Path) -> float:
    dep = real_docker.new_deployment(client, "cmp", tenants, retainData=False)
    rendered = dep.render()
    spec = compose_file(rendered, workdir)
    path = workdir / "docker-compose.yml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    cmd, has_wait = compose_command()
    argv = [*cmd, "-p", dep.stack, "-f", str(path), "up", "-d"] + (["--wait"] if has_wait else [])
    names = [s["container_name"] for s in spec["services"].values()]
    healthchecked = {s["container_name"] for s in spec["services"].values() if "healthcheck" in s}
    try:
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        wait_all_healthy(client, names, healthchecked)
        return time.monotonic() - t0
    finally:
        subprocess.run([*cmd, "-p", dep.stack, "-f", str(path), "down", "-v", "-t", "10"], capture_output=True)
        real_docker.remove_stack(client, dep.prefix)


# ------------------------------------------------------------------ our apply, rotation, memory


class Poller(threading.Thread):
    """Polls one tenant through Caddy; records (t, ok_ready, ok_auth)."""

    def __init__(self, dep: real_docker.Deployment, tenant: str, key: str):
        super().__init__(daemon=True)
        self.dep, self.tenant, self.key = dep, tenant, key
        self.samples: list[tuple[float, bool, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            ok = []
            for path, key in ((contract.READINESS_PROBE.path, None), (contract.AUTH_CHECK_PATH, self.key)):
                try:
                    ok.append(self.dep.https(self.tenant, path, key, timeout=2)[0] == 200)
                except Exception:  # noqa: BLE001 - any failure is "no 200"
                    ok.append(False)
            self.samples.append((t, ok[0], ok[1]))
            time.sleep(0.1)

    def longest_gap(self, index: int) -> float:
        gap, start = 0.0, None
        for t, *ok in self.samples:
            if not ok[index]:
                start = t if start is None else start
            elif start is not None:
                gap, start = max(gap, t - start), None
        return gap

    def first_ok_after(self, t0: float) -> float | None:
        return next((t for t, r, a in self.samples if t >= t0 and r and a), None)


def idle_memory_mib(client, name: str) -> float:
    stats = client.api.stats(name, stream=False)
    mem = stats["memory_stats"]
    cache = (mem.get("stats") or {}).get("inactive_file", (mem.get("stats") or {}).get("cache", 0))
    return (mem["usage"] - cache) / 2**20


def _get_ready(ip: str, timeout: float = 1.0) -> bool:
    """One GET /ready straight to a server on its network (the host reaches the bridge)."""
    import http.client

    conn = http.client.HTTPConnection(ip, contract.PORT, timeout=timeout)
    try:
        conn.request("GET", contract.READINESS_PROBE.path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class ReadyWatcher(threading.Thread):
    """During an apply: the moment each tenant's server first answers /ready (time.monotonic()), asked
    straight at the server every 0.1 s from the moment its container exists."""

    def __init__(self, dep: real_docker.Deployment, tenants: list[str]):
        super().__init__(daemon=True)
        self.dep, self.tenants = dep, tenants
        self.first_ok: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        ips: dict[str, str] = {}
        while not self.stop.is_set() and len(self.first_ok) < len(self.tenants):
            for t in self.tenants:
                if t in self.first_ok:
                    continue
                if t not in ips:
                    try:
                        ip = self.dep.server_ip(t)
                    except Exception:  # noqa: BLE001 - not created or not connected yet
                        continue
                    if not ip:
                        continue
                    ips[t] = ip
                if _get_ready(ips[t], timeout=0.5):
                    self.first_ok[t] = time.monotonic()
            time.sleep(0.1)


def solo_boot(dep: real_docker.Deployment, tenant: str, samples: int = 3) -> tuple[float, list[float]]:
    """One server's boot with nothing else starting: restart its container (SIGTERM, as a rollout stops
    it), then seconds from the engine's StartedAt to the first 200 on /ready asked straight. Measured
    ``samples`` times while every tenant is polled through Caddy as during the rotation (the same load on
    the CPU); the median and the samples."""
    pollers = [Poller(dep, t, dep.key(t)) for t in dep.tenants]
    for p in pollers:
        p.start()
    boots = []
    try:
        for _ in range(samples):
            dep.client.api.restart(f"{dep.prefix}-{tenant}", timeout=contract.STOP_GRACE_SECONDS)
            started = _started_at(dep, tenant)
            ip = dep.server_ip(tenant)
            deadline = time.monotonic() + contract.STARTUP_BUDGET_SECONDS
            while True:
                if _get_ready(ip, timeout=0.5):
                    boots.append(time.time() - started)
                    dep.wait_healthy(tenant)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tenant}: no /ready after a restart")
                time.sleep(0.1)
            time.sleep(1)
    finally:
        for p in pollers:
            p.stop.set()
        for p in pollers:
            p.join()
    return statistics.median(boots), boots


def _started_at(dep: real_docker.Deployment, tenant: str) -> float:
    # Docker reports UTC with nanoseconds; time.time() is UTC-based too.
    text = dep.container(tenant)["State"]["StartedAt"]
    return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()


def down_windows(samples: list[tuple[float, bool, bool]]) -> list[tuple[float, float]]:
    """(start, end) of each run of samples with no 200 (on /ready or the authenticated call)."""
    out, start = [], None
    for t, r, a in samples:
        if not (r and a):
            start = t if start is None else start
        elif start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, samples[-1][0]))
    return out


def most_down_at_once(windows: dict[str, list[tuple[float, float]]]) -> int:
    events = sorted([(s, 1) for w in windows.values() for s, _ in w] + [(e, -1) for w in windows.values()
                                                                        for _, e in w])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def design(name: str):
    """The model under test: ``after`` (this checkout), or ``before``: the previous release's start-blind
    healthcheck (first probe one 15 s interval after start) and every tenant rolled out at once."""
    from components.docker import local

    saved = local.healthcheck
    if name == "before":
        local.healthcheck = lambda api=contract.DOCKER_MIN_API: local._healthcheck(  # noqa: SLF001
            contract.HEALTHCHECK_COMMAND, contract.STARTUP_BUDGET_SECONDS)

    class _Restore:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            local.healthcheck = saved

    return _Restore()


def run_ours(client, tenants: list[str], idle: float, ca_dir: Path, model: str) -> dict[str, Any]:
    # "before": every tenant rolled out at once (no chain).
    width = {"docker.rolloutWidth": len(tenants)} if model == "before" else {}
    dep = real_docker.new_deployment(client, "ours", tenants, retainData=False, **width)
    try:
        with design(model):
            watcher = ReadyWatcher(dep, tenants)
            watcher.start()
            t0 = time.monotonic()
            dep.up()
            apply_s = time.monotonic() - t0
            watcher.join(timeout=contract.STARTUP_BUDGET_SECONDS)
            watcher.stop.set()
            ready_all_s = max(watcher.first_ok.values()) - t0 if len(watcher.first_ok) == len(tenants) else None
            dep.fetch_ca(ca_dir / f"{dep.stack}.crt")
            for t in tenants:
                dep.wait_ready(t)
            time.sleep(idle)
            memory = {t: idle_memory_mib(client, f"{dep.prefix}-{t}") for t in tenants}
            proxy_mem = idle_memory_mib(client, dep.proxy)
            solo, solo_samples = solo_boot(dep, tenants[0])

            pollers = {t: Poller(dep, t, dep.key(t)) for t in tenants}
            for p in pollers.values():
                p.start()
            time.sleep(2)
            r0 = time.monotonic()
            dep.up(**{"keys.rotation": 1})
            rotate_s = time.monotonic() - r0
            time.sleep(2)
            for p in pollers.values():
                p.stop.set()
            for p in pollers.values():
                p.join()
        rotation = {}
        for t, p in pollers.items():
            first_ok = p.first_ok_after(_started_at(dep, t))
            rotation[t] = {"gap": max(p.longest_gap(0), p.longest_gap(1)),
                           "boot": (first_ok - _started_at(dep, t)) if first_ok else float("nan")}
        windows = {t: down_windows(p.samples) for t, p in pollers.items()}
        return {"apply_s": apply_s, "ready_all_s": ready_all_s, "solo_boot_s": solo, "solo_boot_samples": solo_samples,
                "rotate_apply_s": rotate_s,
                "memory_mib": memory, "proxy_mib": proxy_mem, "rotation": rotation,
                "most_down_at_once": most_down_at_once(windows)}
    finally:
        if dep.applier is not None:
            try:
                dep.applier.destroy()
            except Exception:  # noqa: BLE001
                pass
        real_docker.remove_stack(client, dep.prefix)


def report(n: int, model: str, ours: dict[str, Any], compose_s: float | None) -> None:
    rot = ours["rotation"]
    worst_t = max(rot, key=lambda t: rot[t]["gap"])
    worst, solo = rot[worst_t], ours["solo_boot_s"]
    ready = ours["ready_all_s"]
    print(f"\n{n} tenant(s), {model}")
    line = f"  apply -> all healthy {ours['apply_s']:.1f} s; every server first answered /ready at "
    if ready:
        line += f"{ready:.1f} s; ratio {ours['apply_s'] / ready:.2f} (goal <= 1.2)"
    else:
        line += "? (not seen)"
    if compose_s:
        line += f"; compose {compose_s:.1f} s (ours/compose {ours['apply_s'] / compose_s:.2f})"
    print(line)
    samples = "/".join(f"{x:.1f}" for x in ours["solo_boot_samples"])
    print(f"  rotation: apply {ours['rotate_apply_s']:.1f} s; solo boot {solo:.1f} s (median of {samples}); "
          f"worst tenant ({worst_t}) "
          f"unavailable {worst['gap']:.1f} s (its server booted in {worst['boot']:.1f} s): ratio "
          f"{worst['gap'] / solo:.2f}, gap - solo boot {worst['gap'] - solo:+.1f} s (goal <= +1 s); "
          f"at most {ours['most_down_at_once']} tenant(s) down at once")
    print("  per tenant, gap / own boot (s): " + ", ".join(f"{t} {r['gap']:.1f}/{r['boot']:.1f}"
                                                      for t, r in rot.items()))
    mem = list(ours["memory_mib"].values())
    print(f"  idle memory: agent server {min(mem):.0f}-{max(mem):.0f} MiB per tenant, "
          f"proxy {ours['proxy_mib']:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--designs", nargs="+", default=["before", "after"], choices=["before", "after"],
                        help="the previous rollout (15 s-gated healthcheck, all tenants at once) and/or this one")
    parser.add_argument("--compose", action="store_true", help="also time Compose on the same render")
    parser.add_argument("--idle", type=float, default=5, help="seconds idle before memory is read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        client = real_docker.engine()
        refs = real_docker.images()
    except BaseException as exc:  # noqa: BLE001 - pytest's skip/fail outside pytest
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    info = client.version()
    line = f"engine {info['Version']} (API {client.api.api_version}); images {refs}"
    if args.compose:
        cmd, has_wait = compose_command()
        compose_v = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True).stdout.strip()
        how = "up --wait" if has_wait else "up -d + waiting for healthy: v1 has no --wait"
        line += f"; compose {compose_v} ({how})"
    print(line)
    cpus = Path("/proc/cpuinfo").read_text().count("processor")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{datetime.now().isoformat(timespec='minutes')}, {cpus} CPUs, load average {' '.join(load)}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tenants:
            tenants = TENANT_NAMES[:n]
            for model in args.designs:
                ours = run_ours(client, tenants, args.idle, Path(tmp), model)
                compose_s = time_compose(client, tenants, Path(tmp) / f"compose{n}{model}") if args.compose else None
                results[f"{n}/{model}"] = {**ours, "compose_s": compose_s}
                report(n, model, ours, compose_s)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average at the end {' '.join(load)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
