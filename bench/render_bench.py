"""Render benchmark: each stack, and ECS / Kubernetes with 1, 10 and 50 tenants, against the floor.

    .venv/bin/python bench/render_bench.py [--runs 5] [--json bench/out/latest.json]

Every measurement is a fresh subprocess (interpreter start, imports, render: what a user
waits for at ``pulumi preview`` minus the engine), timed from the parent; the median of
``--runs`` is reported. The *floor* for a model is a bare program that imports pulumi and the
same provider SDK(s) and registers one resource under the same mock runtime: the cost no model
can avoid. Ratios are stack/floor measured in this one run. Goals (issue 7): each stack within
1.5x its floor, cost linear in tenants, 50 tenants under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What each model may import (openhands_cli.render.PROVIDER_SDKS names); anything else is waste.
NEEDED = {
    "docker": {"pulumi_docker"},
    "vm": {"pulumi_aws", "pulumi_docker", "pulumi_command", "pulumi_tls"},
    "ecs": {"pulumi_aws"},
    "kubernetes": {"pulumi_kubernetes"},
    "modal": {"modal"},
}

# The floor programs: import pulumi + the model's SDK(s), register one resource under set_mocks.
FLOOR_RESOURCE = {  # model: (module-level code, the one registration)
    "docker": ("import pulumi_docker as sdk", "sdk.Network('n', name='n')"),
    "vm": ("import pulumi_aws\nimport pulumi_docker as sdk", "sdk.Network('n', name='n')"),
    "ecs": ("import pulumi_aws as sdk", "sdk.cloudwatch.LogGroup('g', name='g', retention_in_days=30)"),
    "kubernetes": ("import pulumi_kubernetes as sdk", "sdk.core.v1.ConfigMap('c', data={'a': 'b'})"),
    "modal": (
        "import modal\nimport pulumi.dynamic as dyn\n"
        "class P(dyn.ResourceProvider):\n"
        "    def create(self, props):\n"
        "        return dyn.CreateResult('x', props)\n"
        "class App(dyn.Resource, module='modal', name='App'):\n"
        "    pass",
        "App(P(), 'app', {'a': 1})",
    ),
}

FLOOR = """
import pulumi
{resource_import}

class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return args.name + "-id", dict(args.inputs)
    def call(self, args):
        return {{}}

pulumi.runtime.set_mocks(Mocks(), project="openhands", stack="floor", preview=False)

@pulumi.runtime.test
def run():
{body}
    return pulumi.Output.from_input(1)

run()
"""

CHILD = """
import json, sys, time
t = time.perf_counter()
from openhands_cli.render import render, imported_sdks
r = render({stack!r}, overrides={overrides!r}, stack_outputs={outputs!r})
print(json.dumps({{"render_s": time.perf_counter() - t, "resources": len(r.resources), "sdks": imported_sdks()}}))
"""


def floor_program(model: str) -> str:
    setup, body = FLOOR_RESOURCE[model]
    return FLOOR.format(resource_import=setup, body="    " + body)


def model_of(stack: str) -> str:
    from openhands_cli.render import load_stack_config

    cfg = load_stack_config(stack)
    model = str(cfg.get("openhands:model"))
    if model == "docker":
        docker = cfg.get("openhands:docker") or {}
        if isinstance(docker, str):
            docker = json.loads(docker)
        return "vm" if docker.get("engine") == "vm" else "docker"
    return model


def time_once(code: str) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return wall, (json.loads(lines[-1]) if lines else {})


def measure(code: str, runs: int) -> dict[str, Any]:
    walls, info = [], {}
    for _ in range(runs):
        wall, info = time_once(code)
        walls.append(wall)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls), **info}


def tenants(n: int) -> list[str]:
    return [f"t{i:02d}" for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "latest.json")
    parser.add_argument("--stacks", nargs="*", help="default: every stack in stacks/")
    opts = parser.parse_args(argv)

    from components.contract import stack_names

    try:
        from openhands_cli.render import assumed_stack_outputs
    except ImportError:  # no promotion module: no stack references to mock
        def assumed_stack_outputs(stack: str) -> dict[str, Any]:
            return {}

    stacks = opts.stacks or stack_names()
    models = {s: model_of(s) for s in stacks}
    cores = os.cpu_count()
    print(f"render benchmark: {opts.runs} runs per measurement (median, fresh process each), {cores} cores, "
          f"python {sys.version.split()[0]}")

    floors = {m: measure(floor_program(m), opts.runs) for m in sorted(set(models.values()))}
    results: dict[str, Any] = {"cores": cores, "runs": opts.runs, "floors": floors, "stacks": {}, "tenants": {}}

    print(f"\n{'stack':<8}{'model':<12}{'resources':>10}{'median s':>10}{'floor s':>9}{'ratio':>7}  goal <=1.5x")
    waste: list[str] = []
    for s in stacks:
        m = models[s]
        r = measure(CHILD.format(stack=s, overrides={}, outputs=assumed_stack_outputs(s)), opts.runs)
        r["ratio"] = r["median_s"] / floors[m]["median_s"]
        results["stacks"][s] = {"model": m, **r}
        extra = sorted(set(r["sdks"]) - NEEDED[m])
        if extra:
            waste.append(f"{s} ({m}) imported {', '.join(extra)}")
        print(f"{s:<8}{m:<12}{r['resources']:>10}{r['median_s']:>10.2f}{floors[m]['median_s']:>9.2f}"
              f"{r['ratio']:>6.2f}x  {'ok' if r['ratio'] <= 1.5 else 'MISSED'}")

    print(f"\n{'stack':<8}{'tenants':>8}{'resources':>10}{'median s':>10}{'s/tenant':>10}{'ratio':>7}")
    for s in ("ecs", "k8s"):
        if s not in models:
            print(f"{s:<8} (no stacks/Pulumi.{s}.yaml; skipped)")
            continue
        rows = {}
        for n in (1, 10, 50):
            rows[n] = measure(CHILD.format(stack=s, overrides={"tenants": tenants(n)}, outputs={}), opts.runs)
        base = floors[models[s]]["median_s"]
        for n, r in rows.items():
            per = (r["median_s"] - base) / n
            print(f"{s:<8}{n:>8}{r['resources']:>10}{r['median_s']:>10.2f}{per:>10.3f}{r['median_s'] / base:>6.2f}x")
        slope_small = (rows[10]["median_s"] - rows[1]["median_s"]) / 9
        slope_large = (rows[50]["median_s"] - rows[10]["median_s"]) / 40
        growth = slope_large / slope_small if slope_small > 0 else float("inf")
        linear = 0.67 <= growth <= 1.5
        under = rows[50]["median_s"] < 10
        results["tenants"][s] = {"rows": rows, "slope_1_10": slope_small, "slope_10_50": slope_large,
                                 "linear": linear, "fifty_under_10s": under}
        print(f"{s:<8} marginal cost {slope_small:.3f} s/tenant (1->10), {slope_large:.3f} s/tenant (10->50): "
              f"{'linear' if linear else 'NOT linear'} (x{growth:.2f}); 50 tenants "
              f"{rows[50]['median_s']:.2f} s {'< 10 s ok' if under else '>= 10 s MISSED'}")

    print("\nunneeded SDK imports: " + ("; ".join(waste) if waste else "none (every stack imported only the "
                                                                         "provider SDKs its model needs)"))
    results["unneeded_sdks"] = waste
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
