"""The one CI guard (tests/harness/ci.py): CI=true in any case fails a test whose real tool is missing;
elsewhere it is one skip with the reason. And `.ci/run` puts the suite in CI mode itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import ci

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["true", "True", "TRUE", " true "])
def test_ci_true_in_any_case_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert ci.in_ci()
    with pytest.raises(pytest.fail.Exception, match=r"^no widget \(CI=true"):
        ci.unavailable("no widget")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_elsewhere_it_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not ci.in_ci()
    with pytest.raises(pytest.skip.Exception, match="^no widget$"):
        ci.unavailable("no widget")


def test_ci_run_exports_ci_true_before_it_runs_the_suite(tmp_path: Path) -> None:
    """Run .ci/run's own lines with `scripts/test` replaced by a probe that prints CI, from an env without CI."""
    text = (ROOT / ".ci" / "run").read_text()
    assert text.count("exec bash scripts/test") == 1
    probe = tmp_path / "repo"
    (probe / ".ci").mkdir(parents=True)
    (probe / "scripts").mkdir()
    (probe / ".ci" / "run").write_text(text)
    (probe / "scripts" / "test").write_text('echo "CI=${CI-unset}"\n')
    out = subprocess.run(["bash", str(probe / ".ci" / "run")], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "CI": "false"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CI=true"
