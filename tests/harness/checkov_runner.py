"""Run checkov on rendered Kubernetes manifests, from its own virtualenv.

checkov pins packages that conflict with Pulumi's (packaging, botocore), so it lives in
``.venv-checkov`` at the repo root (or ``$OH_CHECKOV_VENV``), built with uv on first use
the same way tests/harness/agent_server.py builds the agent-server venv. It runs fully offline
(``--skip-download``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.agent_server import ensure_tool_venv

ROOT = Path(__file__).resolve().parents[2]
CHECKOV_SPEC = "checkov==3.3.30"
SKIPS_FILE = ROOT / "tests" / "harness" / "checkov_skips.yaml"


def venv_dir() -> Path:
    return Path(os.environ.get("OH_CHECKOV_VENV", ROOT / ".venv-checkov"))


def ensure_checkov() -> Path:
    """Path to the ``checkov`` script, building its venv if needed."""
    return ensure_tool_venv(venv_dir(), CHECKOV_SPEC, "checkov")


def skips() -> dict[str, str]:
    """The documented skip list: check id -> one-line reason."""
    entries = yaml.safe_load(SKIPS_FILE.read_text()) or []
    return {e["id"]: e["reason"] for e in entries}


def write_manifests(manifests: Iterable[Mapping[str, Any]], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in enumerate(manifests):
        path = directory / f"{i:03d}-{m['kind'].lower()}-{m['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(dict(m), sort_keys=False))
        paths.append(path)
    return paths


def run(directory: Path) -> dict[str, Any]:
    """checkov's JSON report for every manifest in ``directory`` (no skips applied)."""
    exe = ensure_checkov()
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run(
        [str(exe), "-d", str(directory), "--framework", "kubernetes", "--skip-download", "--quiet", "--compact",
         "-o", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    if proc.returncode not in (0, 1):  # 1 = findings
        raise RuntimeError(f"checkov failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (k8s,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    return k8s
