"""``openhands check``: every shipped stack passes; a violating program fails, with a useful report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from components.contract import stack_names
from openhands_cli import check
from tests.harness.ci import unavailable
from tests.harness.policy_fixtures import bad_program

ROOT = Path(__file__).resolve().parents[2]


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = check.main(list(argv))
    return rc, capsys.readouterr().out


def no_validator_skipped(validators: dict[str, str]) -> None:
    """A validator that applied but is not installed leaves a "skipped" note: fail in CI, skip elsewhere
    (after everything else was checked)."""
    skipped = {name: note for name, note in validators.items() if "skipped" in note}
    if skipped:
        unavailable(f"validators not installed: {skipped}")


@pytest.mark.parametrize("stack", stack_names())
def test_every_shipped_stack_passes_the_mandatory_policies(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_check(capsys, "-s", stack, "--json")
    report = json.loads(out)
    mandatory = [v["message"] for sec in [*report["tenants"].values(), report["shared"]] for v in sec["violations"]
                 if v["level"] == "mandatory"]
    errors = [f"{v['validator']} {v['resource']}: {v['message']}" for sec in [*report["tenants"].values(),
              report["shared"]] for v in sec["validators"] if not v["ok"]]
    assert mandatory == [] and errors == []
    assert rc == 0 and report["ok"]
    assert report["summary"]["resources"] > 3
    for tenant, sec in report["tenants"].items():
        assert sec["url"] and sec["url"].startswith("https://"), (tenant, sec["url"])
        assert sec["resources"], f"no resources attributed to tenant {tenant}"
    assert len(report["policies"]) == len(policy.POLICIES)
    # Every validator that applies to the stack ran on something.
    ran = {v["validator"] for sec in [*report["tenants"].values(), report["shared"]] for v in sec["validators"]}
    assert {n for n, note in report["validators"].items() if "skipped" not in note} <= ran
    no_validator_skipped(report["validators"])


def test_failing_program_fails_with_a_report() -> None:
    """A program of hand-written violations (check_stack's program argument: no test hook in the CLI)."""
    report = check.check_stack("local", program=bad_program.run)
    assert not report.ok
    data = json.loads(json.dumps(report.to_json(), default=str))
    violations = [v for sec in [*data["tenants"].values(), data["shared"]] for v in sec["violations"]]
    by_policy = {(v["policy"], v["resource"]) for v in violations if v["level"] == "mandatory"}
    assert {("no-plain-secrets", "default-agent"), ("docker-publish-only-tls-proxy", "default-agent"),
            ("ingress-tls", "default-ingress"), ("no-world-open-ports", "ssh")} <= by_policy
    # The default-agent resources belong to tenant "default"; the rest is shared.
    assert {v["resource"] for v in data["tenants"]["default"]["violations"]} >= {"default-agent",
                                                                                 "default-ingress"}
    assert any(v["policy"] == "image-pinned" and v["level"] == "advisory" for v in violations)  # advisory by default
    text = check.format_text(report)
    assert "result: FAIL" in text
    assert "MANDATORY no-plain-secrets: Container 'default-agent'" in text
    assert "Fix:" in text

    no_validator_skipped(data["validators"])
    validators = {(v["validator"], v["resource"]): v for sec in [*data["tenants"].values(), data["shared"]]
                  for v in sec["validators"]}
    bad = validators[("kubernetes-validate", "default-ingress")]
    assert not bad["ok"] and "ingresClassName" in bad["message"]
    proxy = validators[("caddy", "proxy")]
    assert not proxy["ok"] and proxy["message"].startswith("caddy adapt:"), proxy
    assert data["summary"]["validatorErrors"] >= 2


def test_the_cli_has_no_program_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        check.main(["-s", "local", "--program", "tests.harness.policy_fixtures.bad_program:run"])
    assert exit_.value.code == 2 and "unrecognized arguments: --program" in capsys.readouterr().err


def test_prod_config_makes_image_pinning_mandatory(capsys: pytest.CaptureFixture[str]) -> None:
    latest = "image=ghcr.io/openhands/agent-server:latest"
    rc, out = run_check(capsys, "-s", "local", "--set", latest, "--json")
    report = json.loads(out)
    assert rc == 0 and report["summary"]["advisoryViolations"] >= 1
    rc, out = run_check(capsys, "-s", "local", "--set", latest, "--json",
                        "--policy-config", str(ROOT / "policy" / "config.prod.json"))
    report = json.loads(out)
    assert rc == 1
    # data-protected is mandatory there too: the analyzer protocol carries `protect` but no retainOnDelete,
    # so the local model's volumes (retained by retainOnDelete only) fail it under the engine, and so here.
    mandatory = {(v["policy"], v["resource"]) for sec in [*report["tenants"].values(), report["shared"]]
                 for v in sec["violations"] if v["level"] == "mandatory"}
    assert {p for p, _ in mandatory} == {"image-pinned", "data-protected"}
    assert {r for p, r in mandatory if p == "data-protected"} == {"default-state", "docker-proxy-data"}


def test_set_overrides_tenants(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_check(capsys, "-s", "local", "--set", "tenants=[a, b, c]", "--json", "--no-validators")
    report = json.loads(out)
    assert rc == 0 and sorted(report["tenants"]) == ["a", "b", "c"]
    assert all(sec["resources"].get("docker Container") == 1 for sec in report["tenants"].values())


def test_config_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = check.main(["-s", "local", "--set", "docker.engine=bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and "openhands:docker.engine" in err
    rc = check.main(["-s", "nope"])
    assert rc == 2 and "no stack file" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [["openhands"], ["-m", "openhands_cli"], ["-m", "components"]],
                         ids=["console script", "module", "one-release shim"])
def test_cli_entry_point(entry: list[str]) -> None:
    argv = [str(Path(sys.executable).parent / entry[0])] if entry == ["openhands"] else [sys.executable, *entry]
    proc = subprocess.run([*argv, "check", "-s", "local"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tenant default  https://default.localhost:8443" in proc.stdout
    assert "result: PASS" in proc.stdout
    # The old spelling says what replaces it; the new ones print no such note.
    assert ("is now `openhands check`" in proc.stderr) == (entry == ["-m", "components"])
