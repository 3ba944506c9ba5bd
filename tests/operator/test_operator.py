"""The operator CLI (openhands_cli/main.py) without an engine: arguments, settings and every message."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components import contract
from openhands_cli import main as operator
from openhands_cli import workspace

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openhands_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- arguments


def test_defaults_and_flags() -> None:
    p = operator.parser()
    assert p.parse_args(["up"]).stack == "local"
    assert p.parse_args(["up", "-s", "k8s", "--show-secrets"]).show_secrets
    down = p.parse_args(["down", "--delete-data", "--yes"])
    assert (down.stack, down.delete_data, down.yes) == ("local", True, True)
    assert not p.parse_args(["down"]).delete_data
    assert p.parse_args(["connect", "alice", "-s", "dev"]).tenant == "alice"
    assert p.parse_args(["connect"]).tenant is None
    assert p.parse_args(["status", "--ca-file", "x.pem"]).ca_file == "x.pem"


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        ([], 2, "the following arguments are required: COMMAND"),
        (["deploy"], 2, "invalid choice: 'deploy'"),
        (["down", "--force"], 2, "unrecognized arguments: --force"),
        (["--help"], 0, "rotate"),
    ],
)
def test_usage_errors(argv: list[str], code: int, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert operator.main(argv) == code
    captured = capsys.readouterr()
    assert text in captured.out + captured.err


def test_unknown_stack_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert operator.main(["preview", "-s", "staging"]) == 2
    err = capsys.readouterr().err
    shipped = ", ".join(contract.stack_names())
    assert err == f"error: no stacks/Pulumi.staging.yaml; the shipped stacks: {shipped}\n"
    assert "local" in shipped and "prod" in shipped
    assert operator.main(["preview", "-s", "../etc"]) == 2
    assert "a stack name is letters" in capsys.readouterr().err


def test_console_script_is_declared() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["openhands"] == "openhands_cli.main:main"


# --------------------------------------------------------------------------- prerequisites


def test_missing_pulumi_cli_is_one_message_with_the_install_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "OPENHANDS_PROJECT_DIR": str(ROOT)}
    proc = run_cli("up", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the Pulumi CLI is not installed (no `pulumi` on PATH). Install it with:\n")
    assert "curl -fsSL https://get.pulumi.com | sh" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_old_pulumi_cli_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "pulumi"
    fake.write_text("#!/bin/sh\necho v3.100.0\n")
    fake.chmod(0o755)
    with pytest.raises(operator.OperatorError, match=r"is v3\.100\.0; this needs >= 3\.259\.0"):
        operator.pulumi_cli(lambda _: str(fake))


def test_project_is_found_from_a_subdirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENHANDS_PROJECT_DIR", raising=False)
    assert operator.find_project(ROOT / "components") == ROOT
    monkeypatch.setenv("OPENHANDS_PROJECT_DIR", str(tmp_path))
    with pytest.raises(operator.OperatorError, match="no Pulumi.yaml of project 'openhands' in "):
        operator.find_project()


# --------------------------------------------------------------------------- backend and passphrase


def test_passphrase_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = workspace.ensure_passphrase(tmp_path / "d" / "passphrase")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert len(first.strip()) >= 40
    assert workspace.ensure_passphrase(path).read_text() == first
    path.chmod(0o644)
    with pytest.raises(operator.OperatorError, match=r"readable by others \(mode 0644\).*chmod 600"):
        workspace.ensure_passphrase(path)


def test_settings_use_the_project_backend_and_passphrase_file(tmp_path: Path) -> None:
    s = operator.settings(tmp_path, environ={"PULUMI_HOME": str(tmp_path / "home")})
    assert s.env["PULUMI_BACKEND_URL"] == (tmp_path / ".openhands-deploy" / "state").as_uri()
    assert s.env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(tmp_path / ".openhands-deploy" / "passphrase")
    assert (tmp_path / ".openhands-deploy" / "state").is_dir()
    assert s.env["PULUMI_PYTHON_CMD"] == sys.executable  # dynamic providers run with this interpreter


def test_settings_respect_the_users_backend_and_passphrase(tmp_path: Path) -> None:
    env = {"PULUMI_BACKEND_URL": "s3://bucket/x", "PULUMI_CONFIG_PASSPHRASE": "pw", "PULUMI_HOME": str(tmp_path)}
    s = operator.settings(tmp_path, environ={**env, "PULUMI_PYTHON_CMD": "/usr/bin/python3"})
    assert s.env == {}
    assert "backend: s3://bucket/x (PULUMI_BACKEND_URL)" in s.notes
    assert not (tmp_path / ".openhands-deploy" / "passphrase").exists()
    (tmp_path / "credentials.json").write_text(json.dumps({"current": "https://api.pulumi.com"}))
    s = operator.settings(tmp_path, environ={"PULUMI_HOME": str(tmp_path), "PULUMI_CONFIG_PASSPHRASE_FILE": "/x"})
    assert "PULUMI_BACKEND_URL" not in s.env
    assert "backend: https://api.pulumi.com (pulumi login)" in s.notes


def test_gitignore_covers_the_local_dir() -> None:
    assert f"{workspace.LOCAL_DIR}/" in (ROOT / ".gitignore").read_text().splitlines()


# --------------------------------------------------------------------------- Canvas values

LOCAL_OUTPUTS = {
    "url": {"default": "https://default.localhost:8443", "bob": "https://bob.localhost:8443"},
    "apiKey": {"default": "k" * 48, "bob": "b" * 48},
    "localCaRoot": "Caddy's internal root CA, to trust once: docker cp "
                   "openhands-local-proxy:/data/caddy/pki/authorities/local/root.crt .",
}


def test_connect_hides_keys_unless_asked() -> None:
    text = operator.connect_text("local", LOCAL_OUTPUTS, platform="linux")
    assert "Host:    https://default.localhost:8443" in text
    assert "k" * 48 not in text and "API Key: (hidden: add --show-secrets)" in text
    shown = operator.connect_text("local", LOCAL_OUTPUTS, show_secrets=True, platform="linux")
    assert f"API Key: {'k' * 48}" in shown and f"API Key: {'b' * 48}" in shown
    assert "X-Session-API-Key" in shown


def test_connect_says_where_the_local_ca_is_and_how_to_reach_localhost() -> None:
    text = operator.connect_text("local", LOCAL_OUTPUTS, tenant="bob", platform="linux")
    assert "default.localhost" not in text.split("Reaching")[0]  # one tenant only
    assert "/data/caddy/pki/authorities/local/root.crt in container openhands-local-proxy" in text
    assert ("docker cp openhands-local-proxy:/data/caddy/pki/authorities/local/root.crt openhands-local-root.crt && "
            "sudo install -m 644 openhands-local-root.crt /usr/local/share/ca-certificates/openhands.crt "
            "&& sudo update-ca-certificates") in text
    assert "127.0.0.1 bob.localhost default.localhost" in text
    assert "--resolve bob.localhost:8443:127.0.0.1" in text
    mac = operator.connect_text("local", LOCAL_OUTPUTS, platform="darwin")
    assert "security add-trusted-cert -d -r trustRoot" in mac


def test_connect_errors() -> None:
    with pytest.raises(operator.OperatorError, match=r"no tenant 'carol' in stack 'local'; its tenants: bob, default"):
        operator.connect_text("local", LOCAL_OUTPUTS, tenant="carol")
    with pytest.raises(operator.OperatorError, match=r"has no `url` output: deploy it first \(`uv run openhands up"):
        operator.connect_text("local", {})


def test_connect_for_a_public_stack_has_no_trust_or_hosts_lines() -> None:
    text = operator.connect_text("k8s", {"url": {"a": "https://a.agents.example.com"}, "apiKey": {"a": "x"}})
    assert "TLS:" not in text and "/etc/hosts" not in text
    vm = operator.connect_text("vm", {"url": {"a": "https://a.1-2-3-4.sslip.io"}, "caCertificate": "PEM"})
    assert "uv run openhands connect -s vm --ca-out openhands-vm-ca.crt && sudo install" in vm


# --------------------------------------------------------------------------- engine messages


def test_engine_message_keeps_the_error_lines_and_adds_hints() -> None:
    text = ("\n code: 255\n stdout: \n stderr: error: constructing secrets manager of type \"passphrase\": "
            "incorrect passphrase\n")
    message = operator.engine_message(text)
    assert message.startswith('error: constructing secrets manager of type "passphrase": incorrect passphrase')
    assert "set PULUMI_CONFIG_PASSPHRASE(_FILE)" in message
    locked = operator.engine_message("\n code: 255\n stdout: \n stderr: error: the stack is currently locked by 1 lock")
    assert "`pulumi cancel`" in locked


def test_missing_plugin_hint() -> None:
    msg = "docker-engine: no resource plugin 'pulumi-resource-docker' found in the workspace at version v5.2.0 or on"
    hinted = operator._plugin_hint(msg)
    assert "pulumi plugin install resource docker 5.2.0 --file <path to pulumi-resource-docker>" in hinted
    assert operator._plugin_hint("other") == "other"


def _event(**kw):
    base = dict(resource_pre_event=None, res_outputs_event=None, res_op_failed_event=None, diagnostic_event=None,
                summary_event=None)
    return SimpleNamespace(**{**base, **kw})


def test_progress_reports_a_program_error_once(capsys: pytest.CaptureFixture[str]) -> None:
    progress = operator.Progress(sys.stdout, preview=True)
    urn = "urn:pulumi:local::openhands::pulumi:pulumi:Stack::openhands-local"
    for text in ("invalid configuration for stack 'local':\n  - x\n",
                 "an unhandled error occurred: invalid configuration for stack 'local':\n  - x\n"):
        progress(_event(diagnostic_event=SimpleNamespace(message=text, severity="error", urn=urn, ephemeral=None)))
    progress(_event(diagnostic_event=SimpleNamespace(message="careful\n", severity="warning", urn=urn,
                                                     ephemeral=None)))
    assert progress.error_text() == "invalid configuration for stack 'local':\n  - x"
    assert capsys.readouterr().out == "warning: careful\n"


@pytest.mark.parametrize(("op", "said"), [("create", "created"), ("replace", "replaced"),
                                          ("create-replacement", "created replacement"),
                                          ("delete-replaced", "deleted replaced"), ("read", "read")])
def test_progress_says_what_finished_in_words(capsys: pytest.CaptureFixture[str], op: str, said: str) -> None:
    progress = operator.Progress(sys.stdout, preview=False)
    urn = "urn:pulumi:k8s::openhands::kubernetes:core/v1:Secret::alpha-keys"
    meta = SimpleNamespace(op=SimpleNamespace(value=op), urn=urn, type="kubernetes:core/v1:Secret")
    progress(_event(resource_pre_event=SimpleNamespace(metadata=meta)))
    progress(_event(res_outputs_event=SimpleNamespace(metadata=meta)))
    done = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(rf"    {said} +kubernetes:core/v1:Secret alpha-keys \(\d+\.\d s\)", done), done


def test_deployed_generation_reads_the_key_resources() -> None:
    res = [{"urn": "urn:pulumi:s::openhands::random:index/randomPassword:RandomPassword::a-session-key-g2"},
           {"urn": "urn:pulumi:s::openhands::random:index/randomPassword:RandomPassword::a-session-key-g3"},
           {"urn": "urn:pulumi:s::openhands::random:index/randomPassword:RandomPassword::a-secret-key-g7"}]
    assert operator.deployed_generation({"resources": res}) == 3
    assert operator.deployed_generation({}) is None


def test_a_program_bug_is_reported_without_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENHANDS_DEBUG", raising=False)
    text = ("python inline source runtime error: boom\nTraceback (most recent call last):\n"
            '  File "/x/components/program.py", line 3, in run\n    raise KeyError("boom")\nKeyError: \'boom\'\n')
    assert operator._no_traceback(text) == (
        "python inline source runtime error: boom\nKeyError: 'boom'\n"
        "(a bug in the program: OPENHANDS_DEBUG=1 shows the traceback)")
    monkeypatch.setenv("OPENHANDS_DEBUG", "1")
    assert operator._no_traceback(text) == text


def test_empty_passphrase_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(operator.OperatorError, match="is empty; delete it only if no stack uses it yet"):
        workspace.ensure_passphrase(path)


def test_unreadable_stack_file_is_one_message(tmp_path: Path) -> None:
    bad = tmp_path / "Pulumi.x.yaml"
    bad.write_text("config: [unclosed\n")
    with pytest.raises(operator.OperatorError, match=r"Pulumi\.x\.yaml is not valid YAML"):
        operator._read_yaml(bad)
    assert operator._read_yaml(tmp_path / "missing.yaml") == {}


def test_connect_with_secrets_but_no_key_for_a_tenant() -> None:
    text = operator.connect_text("k8s", {"url": {"a": "https://a.example.com"}, "apiKey": {}}, show_secrets=True)
    assert "API Key: (not in the apiKey output)" in text

