"""Docker model on a real engine: apply -> healthy against Compose, the rotation gap, idle memory.

    uv run python bench/docker_bench.py [--tenants 1 5] [--idle 20]

Needs a Docker engine, the images of scripts/docker-images, and Compose. What is compared:
our stack applied by tests/harness/docker_apply.py (pulumi-docker's behaviour, ``wait: true``)
against ``docker-compose up -d`` of a compose file generated from the SAME render, followed
by waiting for the same healthchecks. Debian 12 ships Compose v1 (``docker-compose`` 1.29.2,
``apt-get install docker-compose``), which has no ``--wait``: the script polls the engine
for what ``docker compose up --wait`` (v2) waits for (every container running, every
healthcheck ``healthy``). With Compose v2 on PATH (``docker compose``) it uses ``--wait`` itself.

For each tenant count, in one run: seconds from apply to all healthy (ours, Compose, ratio);
the per-tenant unavailability during a key rotation (longest window without a 200 on
``/ready`` and on an authenticated call, polled through Caddy every 0.1 s) next to the
replacement's own boot time (container start -> first 200), and idle memory per container.
Goals (issue 12): at most 1.2x Compose to healthy; a rotation gap no longer than one server
start plus 2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def run_ours(client, tenants: list[str], idle: float, ca_dir: Path) -> dict[str, Any]:
    dep = real_docker.new_deployment(client, "ours", tenants, retainData=False)
    try:
        t0 = time.monotonic()
        dep.up()
        apply_s = time.monotonic() - t0
        dep.fetch_ca(ca_dir / f"{dep.stack}.crt")
        for t in tenants:
            dep.wait_ready(t)
        time.sleep(idle)
        memory = {t: idle_memory_mib(client, f"{dep.prefix}-{t}") for t in tenants}
        proxy_mem = idle_memory_mib(client, dep.proxy)

        pollers = {t: Poller(dep, t, dep.key(t)) for t in tenants}
        for p in pollers.values():
            p.start()
        time.sleep(2)
        t_rot = time.time()
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
            started = datetime.fromisoformat(dep.container(t)["State"]["StartedAt"][:26].rstrip("Z")).timestamp()
            # Docker reports UTC; time.time() is UTC-based too.
            first_ok = p.first_ok_after(started)
            boot = (first_ok - started) if first_ok else float("nan")
            rotation[t] = {"gap_ready": p.longest_gap(0), "gap_auth": p.longest_gap(1), "boot": boot,
                           "started_after_rotation_began": started - t_rot}
        return {"apply_s": apply_s, "rotate_apply_s": rotate_s, "memory_mib": memory, "proxy_mib": proxy_mem,
                "rotation": rotation}
    finally:
        if dep.applier is not None:
            try:
                dep.applier.destroy()
            except Exception:  # noqa: BLE001
                pass
        real_docker.remove_stack(client, dep.prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--idle", type=float, default=20, help="seconds idle before memory is read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        client = real_docker.engine()
        refs = real_docker.images()
    except BaseException as exc:  # noqa: BLE001 - pytest's skip/fail outside pytest
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    info = client.version()
    cmd, has_wait = compose_command()
    compose_v = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True).stdout.strip()
    print(f"engine {info['Version']} (API {client.api.api_version}); compose {compose_v} "
          f"({'up --wait' if has_wait else 'up -d + waiting for healthy: v1 has no --wait'}); images {refs}")
    cpus = Path("/proc/cpuinfo").read_text().count("processor")
    print(f"{datetime.now().isoformat(timespec='minutes')}, {cpus} CPUs")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tenants:
            tenants = TENANT_NAMES[:n]
            ours = run_ours(client, tenants, args.idle, Path(tmp))
            compose_s = time_compose(client, tenants, Path(tmp) / f"compose{n}")
            results[n] = {**ours, "compose_s": compose_s}
            rot = ours["rotation"]
            worst = max(rot.values(), key=lambda r: max(r["gap_ready"], r["gap_auth"]))
            print(f"\n{n} tenant(s)")
            print(f"  apply -> all healthy: ours {ours['apply_s']:.1f} s, compose {compose_s:.1f} s, "
                  f"ratio {ours['apply_s'] / compose_s:.2f} (goal <= 1.2)")
            print(f"  rotation: apply {ours['rotate_apply_s']:.1f} s; worst tenant: no 200 on /ready for "
                  f"{worst['gap_ready']:.1f} s, on the authenticated call for {worst['gap_auth']:.1f} s; "
                  f"its new server booted in {worst['boot']:.1f} s; gap - boot = "
                  f"{max(worst['gap_ready'], worst['gap_auth']) - worst['boot']:.1f} s (goal <= 2)")
            mem = list(ours["memory_mib"].values())
            print(f"  idle memory: agent server {min(mem):.0f}-{max(mem):.0f} MiB per tenant, "
                  f"proxy {ours['proxy_mib']:.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
