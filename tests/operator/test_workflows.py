"""The GitHub Actions templates: valid against the workflow schema (offline) and wired as documented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.contract import stack_names

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"


def validate(*paths: Path) -> subprocess.CompletedProcess:
    # The schema ships inside check-jsonschema ("vendor."): no network.
    return subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(job: dict) -> list[dict]:
    return job["steps"]


def pulumi_steps(job: dict) -> list[dict]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith("pulumi/actions@")]


def runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_every_template_validates_against_the_github_workflow_schema():
    assert {f.name for f in FILES} == {"pulumi-pr.yml", "pulumi-dev.yml", "pulumi-promote.yml", "pulumi-drift.yml"}
    result = validate(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = yaml.safe_load((WORKFLOWS / "pulumi-dev.yml").read_text())
    broken["jobs"]["deploy-dev"]["runs-on"] = None
    broken["jobs"]["deploy-dev"]["stepz"] = broken["jobs"]["deploy-dev"].pop("steps")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert validate(path).returncode != 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_common_setup_secrets_and_pinned_actions(path):
    wf = load(path.name)
    assert wf["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert wf["env"]["PULUMI_BACKEND_URL"] == "${{ secrets.PULUMI_BACKEND_URL }}"  # a DIY backend of your choice
    for name, job in wf["jobs"].items():
        uses = [s["uses"] for s in steps(job) if "uses" in s]
        assert any(u.startswith("astral-sh/setup-uv@") for u in uses), name
        assert any(s.get("run") == "uv sync --frozen" for s in steps(job)), name
        assert all(u.split("@")[1] for u in uses), "every action pinned to a version"
        assert all(u == "pulumi/actions@v6" for u in uses if u.startswith("pulumi/actions")), name
        for s in pulumi_steps(job):
            if "command" in s.get("with", {}):
                assert s["with"]["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
                assert s["with"].get("suppress-outputs") is True, "outputs hold tenant keys"
    # secrets travel through env, never echoed; revealed outputs go only into the smoke command
    text = path.read_text()
    assert "echo ${{ secrets" not in text and "echo \"${{ secrets" not in text
    joined = " ".join(" ".join(runs(job) for job in wf["jobs"].values()).replace("\\\n", " ").split())
    assert joined.count("--show-secrets") == joined.count("--show-secrets | uv run --frozen openhands smoke")


def test_pull_request_checks_every_stack_then_previews_dev_and_prod_with_policies_and_comment():
    wf = load("pulumi-pr.yml")
    assert list(wf["on"]) == ["pull_request"]
    check, preview = wf["jobs"]["check"], wf["jobs"]["preview"]
    assert "for file in stacks/Pulumi.*.yaml" in runs(check)
    assert 'openhands check -s "$stack"' in runs(check)
    assert {"dev", "prod"} <= set(stack_names())  # what the loop will find
    assert preview["needs"] == "check"
    assert [i["stack"] for i in preview["strategy"]["matrix"]["include"]] == ["dev", "prod"]
    (step,) = pulumi_steps(preview)
    assert step["with"]["command"] == "preview"
    assert step["with"]["policyPacks"] == "policy"
    assert step["with"]["comment-on-pr"] is True
    assert wf["permissions"]["pull-requests"] == "write"


def test_merge_to_main_updates_dev_then_smoke_tests_it():
    wf = load("pulumi-dev.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    job = wf["jobs"]["deploy-dev"]
    names = [s.get("name", s.get("uses", s.get("run"))) for s in steps(job)]
    (up,) = pulumi_steps(job)
    assert up["with"]["command"] == "up" and up["with"]["stack-name"] == "${{ env.STACK }}"
    assert wf["env"]["STACK"].endswith("/openhands/dev")
    assert names.index("Smoke test dev") > names.index("pulumi up -s dev")
    assert "openhands smoke -s dev" in runs(job)
    assert wf["concurrency"]["cancel-in-progress"] is False  # never cancel a running up


def test_promotion_is_manual_approved_and_previews_before_up_then_smokes():
    wf = load("pulumi-promote.yml")
    assert list(wf["on"]) == ["workflow_dispatch"]
    job = wf["jobs"]["promote"]
    assert job["environment"]["name"] == "production"
    assert job["needs"] == "preview"
    commands = [s["with"]["command"] for s in pulumi_steps(job) if "command" in s.get("with", {})]
    assert commands == ["preview", "up"]
    assert all(s["with"]["stack-name"] == "${{ env.PROD_STACK }}" for s in pulumi_steps(job) if "with" in s)
    assert all(s["with"]["policyPacks"] == "policy" for s in pulumi_steps(job) if "with" in s)
    names = [s.get("name", "") for s in steps(job)]
    assert names.index("Smoke test prod") > names.index("pulumi up -s prod")
    # prod's kubeconfig is an environment secret: only the approved job can read it
    assert "secrets.KUBECONFIG_PROD }}" in yaml.safe_dump(job)
    assert "KUBECONFIG_PROD }}" not in yaml.safe_dump(wf["jobs"]["preview"])
    # the stack prod promotes from is the one the workflow inspects
    prod = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]
    assert wf["env"]["DEV_STACK"] == prod["openhands:promotion"]["fromStack"]


def test_drift_detection_is_a_scheduled_refresh_preview_that_fails_on_changes():
    wf = load("pulumi-drift.yml")
    assert wf["on"]["schedule"][0]["cron"]
    job = wf["jobs"]["drift"]
    assert "pulumi refresh --stack \"$PROD_STACK\" --preview-only --expect-no-changes" in runs(job)
    assert wf["env"]["PROD_STACK"].endswith("/openhands/prod")
    assert wf["concurrency"]["group"] == load("pulumi-promote.yml")["concurrency"]["group"]
