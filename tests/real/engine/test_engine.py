"""The real Pulumi engine (the CLI from ``scripts/engine``) running our program and the operator CLI.

What runs for real here: the ``pulumi`` CLI 3.259.0, its file backend, the passphrase secrets
provider, config handling against ``Pulumi.yaml``, stack state, StackReference reads, and our program
as an inline Automation API program (the SDK serves the language runtime in-process).
What cannot run here: any resource of a provider plugin (random, tls, command, kubernetes, docker,
aws): the Go module proxy refuses the plugins' modules, so an ``up`` of a real stack ends at the
first provider resource. Tests that need outputs seed them with an inline program that only exports
values (``python -m tests.harness.real_engine seed``) and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components import contract
from tests.harness.docs_commands import run_as_written, section_commands

pytest_plugins = ["tests.harness.real_engine"]

ROOT = Path(__file__).resolve().parents[3]
STACKS = contract.stack_names()
BAD_TENANT = "Bad_Name"
BAD_MESSAGE = f"openhands:tenants[0]: '{BAD_TENANT}' is not a valid tenant name"


def break_config(project, stack: str) -> None:
    """Give the stack copy a tenant name the config rejects (the tracked files stay as they are)."""
    path = project.stack_file(stack)
    data = yaml.safe_load(path.read_text())
    data["config"]["openhands:tenants"] = [BAD_TENANT]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def assert_one_clear_message(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_stacks_are_all_found() -> None:
    assert {"local", "k8s", "dev", "prod"} <= set(STACKS)


# --------------------------------------------------------------------------- issue 11 #1: bad config


@pytest.mark.parametrize("stack", STACKS)
def test_bad_config_fails_the_engine_preview_with_our_message_and_no_state(engine_project, stack: str) -> None:
    """The real program under `pulumi preview` (no operator pre-check): non-zero, our message, zero resources."""
    break_config(engine_project, stack)
    proc = engine_project.helper("program-preview", stack)
    assert proc.returncode != 0
    assert_one_clear_message(proc, f"invalid configuration for stack '{stack}':", BAD_MESSAGE)
    assert engine_project.resources(stack) == []


@pytest.mark.parametrize("stack", STACKS)
def test_bad_config_stops_operator_preview_and_up_before_the_engine(engine_project, stack: str) -> None:
    break_config(engine_project, stack)
    before = engine_project.stack_file(stack).read_bytes()
    for command in ("preview", "up"):
        proc = engine_project.openhands(command, "-s", stack)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"error: invalid configuration for stack '{stack}':\n  - {BAD_MESSAGE}")
        assert proc.stderr.count(BAD_MESSAGE) == 1, proc.stderr
        assert_one_clear_message(proc)
    # `up` of a bad config records nothing, not even the root Stack resource.
    assert engine_project.resources(stack) == []
    assert engine_project.stack_file(stack).read_bytes() == before


# --------------------------------------------------------------------------- operator CLI, real engine


def test_first_run_creates_the_stack_backend_and_passphrase_without_editing_the_stack_file(engine_project) -> None:
    tracked = engine_project.stack_file("k8s").read_bytes()
    proc = engine_project.openhands("preview", "-s", "k8s")
    # The program runs under the engine up to the first Kubernetes resource: no plugin here.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "created stack 'k8s'" in proc.stdout
    assert "would create       openhands:keys:TenantKeys" in proc.stdout  # streamed progress
    assert_one_clear_message(
        proc, "error: preview of stack 'k8s' failed:",
        "no resource plugin 'pulumi-resource-", "pulumi plugin install resource ",
    )
    local = engine_project.dir / ".openhands-deploy"
    passphrase = local / "passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    secret = passphrase.read_text()
    stacks = json.loads(engine_project.pulumi("stack", "ls", "--json").stdout)
    assert [s["name"] for s in stacks] == ["k8s"]
    # `pulumi stack init` would have appended `encryptionsalt:`; the tracked file is byte-identical.
    assert engine_project.stack_file("k8s").read_bytes() == tracked
    assert "encryptionsalt" in (local / "config" / "Pulumi.k8s.yaml").read_text()

    again = engine_project.openhands("preview", "-s", "k8s")
    assert again.returncode == 1 and "created stack" not in again.stdout
    assert passphrase.read_text() == secret
    assert engine_project.stack_file("k8s").read_bytes() == tracked


def test_users_passphrase_env_is_used_and_a_wrong_one_is_one_message(engine_project) -> None:
    engine_project.env["PULUMI_CONFIG_PASSPHRASE"] = "first"
    seeded = engine_project.helper("seed", "local", json.dumps({"url": {"default": "https://default.localhost:8443"},
                                                               "apiKey": {"default": "k" * 48}}))
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    assert not (engine_project.dir / ".openhands-deploy" / "passphrase").exists()
    engine_project.env["PULUMI_CONFIG_PASSPHRASE"] = "second"
    proc = engine_project.openhands("connect", "-s", "local", "--show-secrets")
    assert proc.returncode == 1
    assert_one_clear_message(proc, "incorrect passphrase", "set PULUMI_CONFIG_PASSPHRASE(_FILE)")


def test_commands_other_than_up_and_preview_never_create_a_stack(engine_project) -> None:
    for command in (["connect"], ["status"], ["down"], ["rotate"]):
        proc = engine_project.openhands(*command)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: stack 'local' does not exist in file://"), proc.stderr
        assert proc.stderr.endswith(": deploy it first (`uv run openhands up -s local`)\n")
    assert json.loads(engine_project.pulumi("stack", "ls", "--json").stdout) == []


SEEDED = {
    "model": "docker",
    "url": {"default": "https://default.localhost:8443", "bob": "https://bob.localhost:8443"},
    "apiKey": {"default": "d" * 48, "bob": "b" * 48},
    "secretKeys": {"default": ["s" * 48], "bob": ["t" * 48]},
    "localCaRoot": "Caddy's internal root CA, to trust once: docker cp "
                   "openhands-local-proxy:/data/caddy/pki/authorities/local/root.crt .",
}


def seed(project, stack: str, outputs: dict) -> None:
    """Stack outputs from an inline program that only exports them (no provider plugin needed)."""
    proc = project.helper("seed", stack, json.dumps(outputs))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_connect_prints_canvas_values_from_the_stack_outputs(engine_project) -> None:
    seed(engine_project, "local", SEEDED)
    # The keys are secret outputs: the state holds them only encrypted with the generated passphrase.
    state = engine_project.pulumi("stack", "export", "--stack", "local").stdout
    assert "d" * 48 not in state and "b" * 48 not in state and '"ciphertext"' in state
    hidden = engine_project.openhands("connect")
    assert hidden.returncode == 0, hidden.stderr
    assert "Host:    https://bob.localhost:8443" in hidden.stdout
    assert "d" * 48 not in hidden.stdout and "(hidden: add --show-secrets)" in hidden.stdout
    assert "docker cp openhands-local-proxy:/data/caddy/pki/authorities/local/root.crt" in hidden.stdout
    assert "127.0.0.1 bob.localhost default.localhost" in hidden.stdout
    shown = engine_project.openhands("connect", "default", "--show-secrets")
    assert f"API Key: {'d' * 48}" in shown.stdout and "b" * 48 not in shown.stdout
    assert "encryptionsalt" not in engine_project.stack_file("local").read_text()
    missing = engine_project.openhands("connect", "carol")
    assert missing.returncode == 2
    assert missing.stderr == "error: no tenant 'carol' in stack 'local'; its tenants: bob, default\n"


def test_status_runs_the_smoke_check_against_the_real_agent_server(engine_project, start_agent_server) -> None:
    key = "status-key-0123456789abcdef0123456789"
    keys = contract.KeyValues(session_keys=(key,), secret_key="status-secret-0123456789abcdef")
    server = start_agent_server({**contract.container_env(), **contract.secret_env(keys)}, contract.args())
    seed(engine_project, "local", {"url": {"default": server.url, "wrong": server.url},
                                   "apiKey": {"default": key, "wrong": "not-the-key-0123456789"}})
    proc = engine_project.openhands("status", "--timeout", "30")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[PASS] tenant default" in proc.stdout
    assert "FAILED: 1 of 2 tenant(s): wrong (api-key, websocket)" in proc.stdout


def test_status_of_a_local_stack_trusts_caddys_root_copied_from_its_container(engine_project, tmp_path) -> None:
    """The root CA is copied out of the (real, created but not started) proxy container named in the
    `localCaRoot` output; the tenant itself is unreachable here, so the check then fails on /ready."""
    from tests.harness.real_engine import unavailable  # registered as a plugin above; imported here, once loaded

    docker = shutil.which("docker")
    if docker is None:
        unavailable("no docker CLI")
    key, pem = tmp_path / "k.pem", tmp_path / "root.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=status test root", "-days", "1", "-keyout", str(key), "-out", str(pem)],
                   check=True, capture_output=True)
    name = f"openhands-status-test-{tmp_path.name[-12:]}".lower()
    image = "caddy:2.10.2"
    if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode != 0:
        unavailable(f"no local {image} image (scripts/docker-images builds it)")
    subprocess.run([docker, "create", "--name", name, image], check=True, capture_output=True)
    try:
        subprocess.run([docker, "cp", str(pem), f"{name}:/data/root.crt"], check=True, capture_output=True)
        seed(engine_project, "local", {
            "url": {"default": "https://127.0.0.1:9"}, "apiKey": {"default": "x" * 48},
            "localCaRoot": f"Caddy's internal root CA, to trust once: docker cp {name}:/data/root.crt ."})
        proc = engine_project.openhands("status", "--timeout", "1")
    finally:
        # -v: the image declares anonymous volumes (/config, /data), which would outlive the container
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True)
    copied = engine_project.dir / ".openhands-deploy" / "local" / "caddy-root.crt"
    assert f"trusting Caddy's root CA from container {name} (copied to {copied})" in proc.stdout, proc.stderr
    assert copied.read_bytes() == pem.read_bytes()
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "ready" in proc.stdout


def test_down_keeps_data_saves_the_keys_and_empties_the_state(engine_project) -> None:
    tracked = engine_project.stack_file("local").read_bytes()
    seed(engine_project, "local", SEEDED)
    assert engine_project.resources("local") != []
    proc = engine_project.openhands("down")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = engine_project.dir / ".openhands-deploy" / "local" / "secret-keys.json"
    assert f"its data volumes are kept, and the keys that decrypt them are saved in {saved} (mode 0600)" in proc.stdout
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == SEEDED["secretKeys"]
    assert engine_project.resources("local") == []
    # Secret outputs were read and the stack destroyed; the tracked stack file never got a salt.
    assert engine_project.stack_file("local").read_bytes() == tracked


def test_down_delete_data_of_a_stack_with_nothing_deployed_deploys_nothing(engine_project) -> None:
    """`--delete-data` is an up without the retain flags, then a destroy: on a stack with only outputs (or
    after a `down`) that up would deploy every tenant first. It says so and changes nothing instead.
    (The confirmation of a real deletion: tests/real/engine/test_kube_up.py.)"""
    seed(engine_project, "local", SEEDED)
    tracked = engine_project.stack_file("local").read_bytes()
    proc = engine_project.openhands("down", "--delete-data", input="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stack 'local' has nothing deployed, so nothing was deleted." in proc.stdout
    assert "`uv run openhands up -s local` re-attaches them" in proc.stdout
    assert engine_project.stack_file("local").read_bytes() == tracked
    assert "up of stack" not in proc.stdout


def test_down_refuses_a_stack_whose_config_deletes_data(engine_project) -> None:
    seed(engine_project, "dev", {"url": {"alpha": "https://alpha.dev.agents.example.com"}})
    proc = engine_project.openhands("down", "-s", "dev")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: stack 'dev' sets retainData: false, so `down` would delete its data")
    assert engine_project.resources("dev") != []


# --------------------------------------------------------------------------- issue 11 #4 (the part that runs)


def test_modal_dynamic_provider_runs_in_the_engines_provider_process(engine_project) -> None:
    """Our Modal provider, pickled by reference to components.modal.deploy, is loaded by the engine's
    `pulumi-resource-pulumi-python` (from scripts/engine) in its own process, from a project copy at
    another path. Only the app resource runs: the modal stack's keys need the random plugin."""
    preview = engine_project.helper("modal-app", "modal", "preview")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "+  pulumi-python:dynamic/modal:App default-modal-app create" in preview.stdout
    t0 = time.monotonic()
    up = engine_project.helper("modal-app", "modal", "up")  # no Modal token, no network
    took = time.monotonic() - t0
    assert up.returncode == 1 and took < 60, (took, up.stdout)
    assert "Token missing. Could not authenticate client." in up.stdout
    kinds = [r["type"] for r in engine_project.resources("modal")]
    assert "pulumi-python:dynamic/modal:App" not in kinds  # nothing half-created


# --------------------------------------------------------------------------- issue 11 #3 (the parts that run)


def test_prod_reads_dev_through_a_real_stack_reference(engine_project) -> None:
    """A stand-in dev (exports only image and contractVersion), prod's preview reads it for real."""
    image = "ghcr.io/openhands/agent-server:1.58.0-python"
    seed(engine_project, "dev", {"image": image, "contractVersion": "999"})
    mismatch = engine_project.openhands("preview", "-s", "prod")
    assert mismatch.returncode == 1
    assert_one_clear_message(mismatch, "runtime contract mismatch: 'organization/openhands/dev' ran contract "
                                       "version 999")
    assert engine_project.resources("prod") == []

    seed(engine_project, "dev", {"image": image, "contractVersion": contract.CONTRACT_VERSION})
    read = engine_project.openhands("preview", "-s", "prod")
    # The promotion passes; prod's preview then needs the Kubernetes plugin, which cannot be built here.
    assert read.returncode == 1
    assert "would read         pulumi:pulumi:StackReference organization/openhands/dev" in read.stdout
    assert "mismatch" not in read.stderr
    assert_one_clear_message(read, "pulumi-resource-kubernetes")


def test_prod_emergency_override_is_announced_through_the_engine(engine_project) -> None:
    """The override waives dev's contract mismatch with a warning; recording it in prod's outputs needs
    an `up` of prod, i.e. the Kubernetes plugin: not here."""
    seed(engine_project, "dev", {"image": "ghcr.io/openhands/agent-server:1.58.0-python", "contractVersion": "999"})
    engine_project.pulumi("stack", "select", "--create", "prod")  # as a user would, then the README's command:
    engine_project.pulumi("config", "set", "--stack", "prod", "--path", "promotion.emergencyOverride.reason",
                          "INC-123: CVE fix, dev cluster down")
    proc = engine_project.openhands("preview", "-s", "prod")
    assert "warning: EMERGENCY OVERRIDE of promotion from organization/openhands/dev: deploying " \
           "ghcr.io/openhands/agent-server:1.58.0-python (dev runs ghcr.io/openhands/agent-server:1.58.0-python, " \
           "contract 999); reason: INC-123: CVE fix, dev cluster down" in proc.stdout, proc.stdout
    assert proc.returncode == 1
    assert "mismatch" not in proc.stderr
    # Then the preview stops on the first plugin this project lacks: kubernetes or random, whichever resource
    # the engine reaches first (the order varies from run to run), with the one-line way to install it.
    assert_one_clear_message(proc)
    assert re.search(r"pulumi-resource-(kubernetes|random)", proc.stdout + proc.stderr), proc.stdout + proc.stderr


# --------------------------------------------------------------------------- issue 14: the README's quickstart


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quickstart has a bash block"
    return [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines() if ln.split("#", 1)[0].strip()]


def test_quickstart_is_the_two_commands() -> None:
    """The second one, `scripts/test`, is what runs this suite (`.ci/run` calls it); run from inside the
    suite it would recurse, so here it is only checked to be there and executable."""
    assert quickstart_commands() == ["uv run openhands up", "scripts/test"]
    script = ROOT / "scripts" / "test"
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR
    assert "uv run pytest" in script.read_text()
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_quickstart_main_command_runs_as_written_up_to_the_missing_docker_plugin(engine_project) -> None:
    """`uv run openhands up` as written: here it runs the real engine up to the Docker provider plugin,
    which cannot be built offline (a user's `pulumi` downloads it), so the test expects exactly that stop."""
    command = quickstart_commands()[0]
    uv = shutil.which("uv")
    assert uv, "uv is a prerequisite"
    proc = subprocess.run(command, shell=True, cwd=ROOT, env=engine_project.env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "created stack 'local'" in proc.stdout
    assert_one_clear_message(proc, "error: up of stack 'local' failed:",
                             "no resource plugin 'pulumi-resource-docker' found")


# --------------------------------------------------------------------------- the docs' operator commands
# (docs/rotation.md runs to the end on the k8s stack: tests/real/engine/test_kube_up.py)


def test_teardown_commands_run_as_written(engine_project) -> None:
    commands = section_commands("Teardown")
    assert commands[:2] == ["uv run openhands down -s <stack>", "uv run openhands down -s <stack> --delete-data"]
    seed(engine_project, "local", SEEDED)
    down = run_as_written(engine_project, commands[0])
    assert down.returncode == 0, down.stdout + down.stderr
    assert "its data volumes are kept" in down.stdout
    assert engine_project.resources("local") == []
    delete = run_as_written(engine_project, commands[1])  # the stack is down already: nothing to delete
    assert delete.returncode == 0, delete.stdout + delete.stderr
    assert "stack 'local' has nothing deployed, so nothing was deleted." in delete.stdout


# --------------------------------------------------------------------------- scripts/engine, offline paths


def run_engine_script(tmp_path: Path, go_version: str | None, *args: str) -> subprocess.CompletedProcess:
    """scripts/engine with a stand-in `go` that only reports its version (nothing is downloaded)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if go_version is not None:
        fake = bin_dir / "go"
        fake.write_text(f'#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo {go_version} && exit 0\nexit 3\n')
        fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "OPENHANDS_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(ROOT / "scripts" / "engine"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_engine_script_needs_go(tmp_path: Path) -> None:
    proc = run_engine_script(tmp_path, None)
    assert proc.returncode == 1
    assert proc.stderr.startswith("scripts/engine: Go is not installed (needs go >= 1.25")


def test_engine_script_refuses_an_old_go(tmp_path: Path) -> None:
    proc = run_engine_script(tmp_path, "go1.19.8")
    assert proc.returncode == 1
    assert proc.stderr == "scripts/engine: Go go1.19.8 is too old: the Pulumi CLI 3.276.0 needs go >= 1.25\n"


def test_engine_script_check_builds_nothing(tmp_path: Path) -> None:
    proc = run_engine_script(tmp_path, "go1.26.8", "--check")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no cached build in " in proc.stderr
    assert re.search(r"/engine/pulumi-3\.276\.0_shims-\d+\.\d+\.\d+_kubernetes-4\.25\.0_go1\.26\.8/bin",
                     proc.stderr), proc.stderr
    assert not (tmp_path / "cache" / "go").exists()  # no module or build cache started
