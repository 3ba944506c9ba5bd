"""The preflight (openhands_cli/preflight.py, `openhands doctor`): each check's failing and passing case.

Real where we have the real thing: the Docker engine (tests/harness/real_docker.py), the throwaway Kubernetes
API server (tests/harness/real_kube.py; a restricted user is a ServiceAccount token), ssh-keygen and
ssh-agent, the real Pulumi CLI for `up`/`preview` ending before the engine starts
(tests/harness/real_engine.py). Mocked: AWS (botocore's Stubber) and the network answer of get.pulumi.com.
Outside CI a missing engine or cluster is one clear skip; under CI=true it fails (tests/harness/ci.py).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import config
from openhands_cli import main as operator
from openhands_cli import preflight, workspace
from openhands_cli.render import load_stack_config, render, set_config_path
from tests.harness import ci
from tests.harness.agent_server import free_port

pytest_plugins = ["tests.harness.real_engine", "tests.harness.real_kube"]

ROOT = Path(__file__).resolve().parents[2]


def cfg_of(stack: str, overrides: dict[str, Any] | None = None, secret: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The stack's parsed config, with dotted overrides (None removes a key), as load_inputs parses it."""
    raw = load_stack_config(stack)
    for key, value in (overrides or {}).items():
        set_config_path(raw, key, value)
    plain = {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("openhands:")}
    return config.parse(plain, set(secret), stack)


def by_name(results: list[preflight.Result]) -> dict[str, preflight.Result]:
    return {r.name: r for r in results}


def one(results: list[preflight.Result], prefix: str) -> preflight.Result:
    """The one result named ``prefix``, or else the one whose name starts with it."""
    found = [r for r in results if r.name == prefix] or [r for r in results if r.name.startswith(prefix)]
    assert len(found) == 1, (prefix, [r.line() for r in results])
    return found[0]


# --------------------------------------------------------------------------- output and exit codes


def test_one_line_per_check_with_the_fix_only_when_it_fails() -> None:
    ok = preflight.Result("Docker engine", True, "unix:///var/run/docker.sock: Docker 20.10", "never shown")
    bad = preflight.Result("StorageClass gp3", False, "not in the cluster\n(it has: standard)", "set storageClass")
    unknown = preflight.Result("AWS credentials", None, "not verified: offline", "check the network")
    assert ok.line() == "ok    Docker engine: unix:///var/run/docker.sock: Docker 20.10"
    assert bad.line() == "FAIL  StorageClass gp3: not in the cluster (it has: standard) -> fix: set storageClass"
    assert unknown.line() == "warn  AWS credentials: not verified: offline -> fix: check the network"
    report = preflight.Report("x", [ok, bad, unknown])
    assert report.blocking() == [bad]
    assert report.blocking(strict=True) == [bad, unknown]
    assert report.text().count("\n") == 2


def test_python_check_against_the_pin(tmp_path: Path) -> None:
    (tmp_path / ".python-version").write_text("3.12.1\n")
    assert preflight.check_python(tmp_path, (3, 12, 1)).ok is True
    other = preflight.check_python(tmp_path, (3, 13, 0))
    assert other.ok is None and "the tested version is 3.12.1" in other.found
    (tmp_path / ".python-version").write_text("3.13\n")
    assert preflight.check_python(tmp_path, (3, 13, 0)).ok is True
    pinned = (ROOT / ".python-version").read_text().strip()
    assert preflight.check_python(ROOT, tuple(int(p) for p in pinned.split("."))).ok is True


def test_pulumi_cli_missing_old_and_recent(tmp_path: Path) -> None:
    missing, exe = preflight.check_cli(lambda _: None)
    assert (missing.ok, exe) == (False, None)
    assert missing.fix == workspace.INSTALL_HINT and "no `pulumi` on PATH" in missing.found
    fake = tmp_path / "pulumi"
    for version, ok in (("v3.100.0", False), ("v3.276.0", True)):
        fake.write_text(f"#!/bin/sh\necho {version}\n")
        fake.chmod(0o755)
        result, exe = preflight.check_cli(lambda _: str(fake))
        assert result.ok is ok, result.line()
        assert version in result.found
        assert (exe is not None) is ok


def test_doctor_without_the_cli_names_the_install_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "OPENHANDS_PROJECT_DIR": str(ROOT), "DOCKER_HOST": "unix:///nonexistent"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "openhands_cli.main", "doctor", "-s", "local"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60
    lines = proc.stdout.splitlines()
    assert lines[0] == "preflight of stack 'local':"
    assert f"FAIL  Pulumi CLI (>= 3.259.0): no `pulumi` on PATH -> fix: {workspace.INSTALL_HINT}" in lines
    assert "warn  plugin docker 5.2.0: not checked: no usable Pulumi CLI" in lines
    assert any(ln.startswith("FAIL  Docker engine: unix:///nonexistent did not answer") for ln in lines)
    assert proc.stderr.startswith("error: preflight: 2 check(s) failed (Pulumi CLI (>= 3.259.0), Docker engine)")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_up_preview_rotate_and_doctor_flags() -> None:
    p = operator.parser()
    assert p.parse_args(["doctor", "-s", "k8s", "--strict"]).strict
    for command in ("up", "preview", "rotate"):
        args = p.parse_args([command, "--strict", "--skip-preflight"])
        assert args.strict and args.skip_preflight
    with pytest.raises(SystemExit):
        p.parse_args(["status", "--strict"])


def test_invalid_config_is_the_operators_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "p"
    (project / "stacks").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: openhands\nruntime: python\n")
    (project / ".python-version").write_text("3.12.1\n")
    (project / "stacks" / "Pulumi.bad.yaml").write_text("config:\n  openhands:model: docker\n  openhands:tenants: []\n")
    with pytest.raises(operator.OperatorError) as err:
        operator.run_preflight(project, "bad", sys.stdout, strict=False)
    assert err.value.code == 2
    assert str(err.value).startswith("error: invalid configuration for stack 'bad':\n  - openhands:tenants:")


# --------------------------------------------------------------------------- provider plugins


def _kinds(rendered: Any) -> set[str]:
    return {t.split(":")[2] if t.startswith("pulumi:providers:") else t.split(":")[0]
            for t in (r.type for r in rendered.resources)} - {"openhands", "pulumi-python", "pulumi"}


@pytest.mark.parametrize(("stack", "overrides"), [
    ("local", {}), ("vm", {}), ("vm", {"docker.domain": None, "docker.acmeEmail": None}), ("ecs", {}),
    ("k8s", {}), ("modal", {}),
])
def test_plugins_are_the_providers_each_stack_registers(stack: str, overrides: dict[str, Any]) -> None:
    assert _kinds(render(stack, overrides=overrides)) == set(preflight.plugins_for(cfg_of(stack, overrides)))


def test_plugin_version_is_the_sdks() -> None:
    import importlib.metadata

    for name in ("docker", "random", "kubernetes", "aws", "tls", "command"):
        assert preflight.plugin_version(name) == importlib.metadata.version(f"pulumi-{name}")


def test_plugin_found_on_path_installed_downloadable_or_not(tmp_path: Path) -> None:
    random_v, docker_v = preflight.plugin_version("random"), preflight.plugin_version("docker")
    ambient = tmp_path / "pulumi-resource-random"
    ambient.write_text("#!/bin/sh\n")
    ambient.chmod(0o755)
    which = {"pulumi-resource-random": str(ambient)}.get
    offline = {"PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}

    def refuse(url: str) -> int:
        raise AssertionError(f"no download check expected: {url}")

    on_path, missing = preflight.check_plugins(["random", "docker"], set(), which=which, environ=offline, fetch=refuse)
    assert on_path.ok is True and str(ambient) in on_path.found
    assert missing.ok is False
    assert f"pulumi plugin install resource docker {docker_v}" in missing.fix and "--file" in missing.fix
    older = preflight.check_plugins(["docker"], {("docker", "4.0.0")}, which=lambda _: None, environ=offline,
                                    fetch=refuse)[0]
    assert older.ok is False and f"installed: 4.0.0; the engine needs exactly {docker_v}" in older.found
    installed = preflight.check_plugins(["random"], {("random", random_v)}, which=lambda _: None, environ=offline,
                                        fetch=refuse)[0]
    assert installed.line() == f"ok    plugin random {random_v}: installed"

    urls: list[str] = []

    def answers(status: int):
        def fetch(url: str) -> int:
            urls.append(url)
            return status
        return fetch

    down = preflight.check_plugins(["docker"], set(), which=lambda _: None, environ={}, fetch=answers(200))[0]
    assert down.ok is True and "downloadable" in down.found
    assert urls[0].startswith(f"https://get.pulumi.com/releases/plugins/pulumi-resource-docker-v{docker_v}-")
    gone = preflight.check_plugins(["docker"], set(), which=lambda _: None, environ={}, fetch=answers(404))[0]
    assert gone.ok is None and "HTTP 404" in gone.found

    def no_network(url: str) -> int:
        raise OSError("Name or service not known")

    cannot = preflight.check_plugins(["docker"], set(), which=lambda _: None, environ={}, fetch=no_network)[0]
    assert cannot.ok is None and "get.pulumi.com did not answer here" in cannot.found
    unknown = preflight.check_plugins(["docker"], None, which=lambda _: None, why_unknown="no usable Pulumi CLI")[0]
    assert unknown.line() == f"warn  plugin docker {docker_v}: not checked: no usable Pulumi CLI"


def test_plugin_cache_listing_with_the_real_cli(pulumi_bin: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PULUMI_HOME": str(tmp_path / "home"), "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env, **kw)

    assert preflight.installed_plugins(str(pulumi_bin / "pulumi"), run=run) == set()


# --------------------------------------------------------------------------- config with secrets


def test_secret_config_of_a_stack_that_does_not_exist_is_not_guessed(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "stacks").mkdir(parents=True)
    text = (ROOT / "stacks" / "Pulumi.k8s.yaml").read_text().replace(
        "    createNamespace: true\n", "    createNamespace: true\n    kubeconfig:\n      secure: v1:abc\n")
    (project / "stacks" / "Pulumi.k8s.yaml").write_text(text)
    inputs = preflight.load_inputs(project, "k8s", exe=None, environ={})
    assert inputs.unreadable == {"kubernetes"}
    assert inputs.cfg.kubernetes.kubeconfig is None  # not mistaken for the ambient kubeconfig below
    results = preflight.kube_checks(inputs.cfg, "k8s", unreadable=inputs.unreadable)
    assert results and all(r.ok is None for r in results)
    assert "kubernetes.kubeconfig is a secret this run cannot decrypt" in results[0].found
    aws = preflight.load_inputs(ROOT, "ecs", exe=None, environ={}).aws
    assert aws == {"aws:region": "us-east-1"}


# --------------------------------------------------------------------------- Docker (local)


@pytest.fixture(scope="module")
def docker_client():
    from tests.harness.real_docker import engine

    return engine()


def local_cfg(https: int, http: int, **extra: Any) -> Any:
    return cfg_of("local", {"docker.httpsPort": https, "docker.httpPort": http, **extra})


def test_docker_engine_api_ports_and_disk_pass_on_the_real_engine(docker_client) -> None:
    results = preflight.docker_checks(local_cfg(free_port(), free_port()), "local", environ={})
    assert results[-1].name == "Docker live-restore"  # a warning when off: test_live_restore_* below
    results = results[:-1]
    assert [r.ok for r in results] == [True] * 5, [r.line() for r in results]
    names = [r.name for r in results]
    assert names[:2] == ["Docker engine", "Docker API version (>= 1.41)"]
    assert "GiB free at" in results[-1].found


def test_a_port_taken_by_a_process_fails_in_seconds(docker_client) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        results = preflight.docker_checks(local_cfg(port, free_port()), "local", environ={})
        assert time.monotonic() - t0 < 30
    bad = one(results, f"host port 127.0.0.1:{port}")
    assert bad.line() == (f"FAIL  host port 127.0.0.1:{port}: in use by another process on this machine -> fix: "
                          "stop what holds it, or set docker.httpsPort to a free port (`ss -ltnp` names it)")


def test_a_port_published_by_another_container_fails_and_by_this_stacks_proxy_passes(docker_client) -> None:
    from tests.harness.real_docker import images

    port, stack = free_port(), f"doc{uuid.uuid4().hex[:6]}"
    caddy = images()["caddy"] if "caddy" in images() else next(v for k, v in images().items() if "caddy" in v)
    created = []
    try:
        for name, label in ((f"openhands-{stack}-other", "someone/else"), (f"openhands-{stack}-proxy", None)):
            labels = {"dev.openhands.stack": label or f"openhands/{stack}"}
            container = docker_client.containers.run(caddy, detach=True, name=name, labels=labels,
                                                     ports={"80/tcp": ("127.0.0.1", port)})
            created.append(container)
            result = one(preflight.docker_checks(local_cfg(port, free_port()), stack, environ={}),
                         f"host port 127.0.0.1:{port}")
            if label:
                assert result.ok is False and result.found == f"published by container {name}", result.line()
                container.remove(v=True, force=True)  # and its anonymous /config, /data
            else:
                assert result.line() == f"ok    host port 127.0.0.1:{port}: published by this stack's proxy ({name})"
    finally:
        for container in created:
            try:
                container.remove(v=True, force=True)
            except Exception:  # noqa: BLE001 - already removed
                pass


def test_not_enough_disk_fails(docker_client) -> None:
    cfg = local_cfg(free_port(), free_port(), image="ghcr.io/openhands/agent-server:0.0.0-not-pulled")
    result = one(preflight.docker_checks(cfg, "local", environ={}, free_bytes=lambda _: 2 * preflight.GIB),
                 "disk space")
    assert result.ok is False
    assert "2.0 GiB free at" in result.found and "3 GiB to pull ghcr.io/openhands/agent-server:0.0.0-not-pulled" \
        in result.found and result.fix.startswith("free space under")


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:{port}", "unix:///tmp/openhands-no-docker-{port}.sock"])
def test_an_unreachable_engine_fails_in_seconds(host: str) -> None:
    host = host.format(port=free_port())
    t0 = time.monotonic()
    results = preflight.docker_checks(local_cfg(free_port(), free_port()), "local", environ={"DOCKER_HOST": host})
    assert time.monotonic() - t0 < 30
    assert results[0].ok is False and results[0].found.startswith(f"{host} did not answer")
    assert "start the Docker engine" in results[0].fix and "DOCKER_HOST" in results[0].fix
    assert [r.ok for r in results[1:]] == [None, None, None]  # API version, host ports, disk space


def test_an_engine_below_the_minimum_api_fails() -> None:
    class Old:
        def version(self) -> dict[str, str]:
            return {"Version": "19.03.15", "ApiVersion": "1.40"}

        def publishers(self, port: int) -> list:
            return []

        def root_dir(self) -> str:
            return ""

    results = preflight.docker_checks(local_cfg(free_port(), free_port()), "local", environ={},
                                      engine_factory=lambda host: Old())
    api = by_name(results)["Docker API version (>= 1.41)"]
    assert api.line() == ("FAIL  Docker API version (>= 1.41): 1.40 (Docker 19.03.15) -> fix: upgrade the engine to "
                          "Docker >= 20.10 (e.g. Debian 12's docker.io)")


def test_the_docker_cli_fallback_talks_to_the_same_engine(docker_client) -> None:
    import shutil

    exe = shutil.which("docker")
    if exe is None:
        ci.unavailable("no docker CLI (Debian's docker.io installs it)")
    cli = preflight._DockerCli(None, exe)
    assert cli.version()["ApiVersion"] == docker_client.api.version()["ApiVersion"]
    assert cli.root_dir() == docker_client.api.info()["DockerRootDir"]
    assert cli.publishers(free_port()) == []
    assert cli.has_image("ghcr.io/openhands/agent-server:0.0.0-not-pulled") is False


def test_live_restore_off_on_the_real_engine_is_a_warning_with_the_one_line_fix(docker_client) -> None:
    """scripts/test starts the CI engine without live-restore, so there the warning shows; on an engine that
    has it on, the check passes. Either way it never blocks `up` (only --strict makes a warning block)."""
    import shutil

    enabled = docker_client.api.info()["LiveRestoreEnabled"]
    if ci.in_ci():
        assert enabled is False, "scripts/test starts dockerd without live-restore"
    results = preflight.docker_checks(local_cfg(free_port(), free_port()), "local", environ={})
    result = one(results, "Docker live-restore")
    report = preflight.Report("local", results)
    if enabled:
        assert result.line() == ("ok    Docker live-restore: on: containers keep running while dockerd restarts "
                                 "or crashes")
    else:
        assert result.ok is None and result.line().startswith(
            "warn  Docker live-restore: off: if dockerd crashes, every tenant stays down")
        assert result.fix.startswith('add "live-restore": true to /etc/docker/daemon.json (merged')
        assert "`sudo systemctl reload docker`" in result.fix
        assert report.blocking(strict=True)[-1:] == [result]
    assert result not in report.blocking()
    exe = shutil.which("docker")
    if exe is not None:  # the CLI fallback reads the same value
        assert preflight._DockerCli(None, exe).live_restore() is enabled


def test_live_restore_on_passes_and_an_engine_that_does_not_say_is_not_checked() -> None:
    class Engine(preflight._DockerSdk):  # the SDK's reading of a fake `docker info`
        def __init__(self, info: dict[str, Any]) -> None:
            self.api = type("Api", (), {"info": lambda _: info})()

    on = preflight.check_live_restore(Engine({"LiveRestoreEnabled": True}))
    assert on.line() == "ok    Docker live-restore: on: containers keep running while dockerd restarts or crashes"
    off = preflight.check_live_restore(Engine({"LiveRestoreEnabled": False}), local=False)
    assert off.ok is None and "/etc/docker/daemon.json of the engine's host" in off.fix
    unknown = preflight.check_live_restore(Engine({}))
    assert unknown.line() == "warn  Docker live-restore: not checked: the engine does not report LiveRestoreEnabled"

    class Old:  # no live_restore at all: not checked, and the other checks still run
        def live_restore(self) -> bool:
            raise OSError("docker info failed")

    assert preflight.check_live_restore(Old()).found == "not checked: the engine did not report it (docker info failed)"


# --------------------------------------------------------------------------- Docker on a VM


def _keypair(path: Path) -> str:
    import shutil

    if not all(shutil.which(t) for t in ("ssh", "ssh-keygen", "ssh-agent", "ssh-add")):
        ci.unavailable("OpenSSH's client tools are not installed (Debian: openssh-client)")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text().strip()


def test_vm_deploy_key_file_must_match_the_public_key(tmp_path: Path) -> None:
    pub = _keypair(tmp_path / "key")
    other = _keypair(tmp_path / "other")
    ok = preflight.check_vm_ssh(cfg_of("vm", {"docker.vm.sshPublicKey": pub,
                                              "docker.vm.sshPrivateKeyPath": str(tmp_path / "key")}), environ={})
    assert ok.ok is True and ok.found == f"{tmp_path / 'key'} matches sshPublicKey"
    bad = preflight.check_vm_ssh(cfg_of("vm", {"docker.vm.sshPublicKey": other,
                                               "docker.vm.sshPrivateKeyPath": str(tmp_path / "key")}), environ={})
    assert bad.ok is False and "is not the private half of sshPublicKey" in bad.found
    none = preflight.check_vm_ssh(cfg_of("vm", {"docker.vm.sshPublicKey": pub}), environ={})
    assert none.ok is False and "no SSH agent (SSH_AUTH_SOCK is unset)" in none.found
    no_ssh = preflight.check_vm_ssh(cfg_of("vm"), which=lambda _: None, environ={})
    assert no_ssh.ok is False and "no `ssh` client" in no_ssh.found


def test_vm_deploy_key_in_the_ssh_agent(tmp_path: Path) -> None:
    pub = _keypair(tmp_path / "key")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.1)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        cfg = cfg_of("vm", {"docker.vm.sshPublicKey": pub})
        empty = preflight.check_vm_ssh(cfg, environ=env)
        assert empty.ok is False and "does not hold" in empty.found
        subprocess.run(["ssh-add", "-q", str(tmp_path / "key")], env=env, check=True, capture_output=True)
        assert preflight.check_vm_ssh(cfg, environ=env).line() == \
            "ok    SSH deploy key (vm.sshPublicKey): the SSH agent holds it"
    finally:
        agent.terminate()
        agent.wait(10)
    gone = preflight.check_vm_ssh(cfg_of("vm", {"docker.vm.sshPublicKey": pub}),
                                  environ={**os.environ, "SSH_AUTH_SOCK": str(sock)})
    assert gone.ok is False and "does not answer" in gone.found


# --------------------------------------------------------------------------- AWS (mocked)


ACCOUNT = "123456789012"
ARN = f"arn:aws:acm:us-east-1:{ACCOUNT}:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"


class Aws:
    """botocore clients with Stubber answers, per service; what the checks call is asserted."""

    def __init__(self) -> None:
        import botocore.session

        self.session = botocore.session.get_session()
        self.session.set_credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        self.stubs: dict[str, Any] = {}

    def stub(self, service: str):
        from botocore.stub import Stubber

        if service not in self.stubs:
            client = self.session.create_client(service, region_name="us-east-1")
            self.stubs[service] = Stubber(client)
            self.stubs[service].activate()
        return self.stubs[service]

    def client(self, service: str, region: str | None) -> Any:
        return self.stub(service).client

    def identity(self) -> None:
        self.stub("sts").add_response("get_caller_identity", {
            "Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/ops", "UserId": "AIDAEXAMPLE"})

    def zone(self, name: str = "agents.example.com.", private: bool = False) -> None:
        self.stub("route53").add_response("get_hosted_zone", {
            "HostedZone": {"Id": "/hostedzone/Z0123456789ABCDEFGHIJ", "Name": name, "CallerReference": "x",
                           "Config": {"PrivateZone": private}},
            "DelegationSet": {"NameServers": ["ns-1.awsdns-01.org"]}}, {"Id": "Z0123456789ABCDEFGHIJ"})

    def certificate(self, status: str = "ISSUED", names: tuple[str, ...] = ("*.agents.example.com",)) -> None:
        self.stub("acm").add_response("describe_certificate", {"Certificate": {
            "CertificateArn": ARN, "DomainName": names[0], "SubjectAlternativeNames": list(names), "Status": status}},
            {"CertificateArn": ARN})

    def checks(self, cfg: Any, aws: dict[str, str] | None = None) -> dict[str, preflight.Result]:
        results = preflight.aws_checks(cfg, {"aws:region": "us-east-1"} if aws is None else aws, environ={},
                                       session=self.session, client=self.client)
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()
        return {r.name.split(" Z0")[0]: r for r in results}


def ecs_cfg(**overrides: Any) -> Any:
    return cfg_of("ecs", overrides)


def test_aws_credentials_region_zone_and_certificate_pass() -> None:
    aws = Aws()
    aws.identity()
    aws.zone()
    aws.certificate()
    got = aws.checks(ecs_cfg(**{"ecs.certificateArn": ARN}))
    assert [r.ok for r in got.values()] == [True] * 4, [r.line() for r in got.values()]
    assert got["AWS credentials"].found == f"from explicit: account {ACCOUNT} (arn:aws:iam::{ACCOUNT}:user/ops)"
    assert got["AWS region"].found == "us-east-1 (aws:region in the stack config)"
    assert got["Route 53 hosted zone"].found == "agents.example.com (public)"
    assert got["ACM certificate"].found == "ISSUED for *.agents.example.com"


def test_aws_refused_credentials_and_missing_region_fail() -> None:
    aws = Aws()
    aws.stub("sts").add_client_error("get_caller_identity", "InvalidClientTokenId", "The security token is invalid")
    got = aws.checks(ecs_cfg(), aws={})
    assert got["AWS region"].ok is False and "aws:region" in got["AWS region"].fix
    assert got["AWS credentials"].ok is False
    assert "refused by AWS (InvalidClientTokenId: The security token is invalid)" in got["AWS credentials"].found


def test_aws_without_credentials_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import botocore.session

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    results = preflight.aws_checks(ecs_cfg(), {"aws:region": "us-east-1"}, environ={},
                                   session=botocore.session.Session(), client=lambda s, r: pytest.fail("no call"))
    got = by_name(results)
    assert got["AWS credentials"].ok is False and "aws configure" in got["AWS credentials"].fix
    assert got["Route 53 hosted zone Z0123456789ABCDEFGHIJ"].ok is None


@pytest.mark.parametrize(("answer", "found"), [
    ("missing", "does not exist in this account"),
    ("private", "agents.example.com is a private zone"),
    ("other", "is example.org, which does not hold agents.example.com"),
])
def test_aws_hosted_zone_failures(answer: str, found: str) -> None:
    aws = Aws()
    aws.identity()
    if answer == "missing":
        aws.stub("route53").add_client_error("get_hosted_zone", "NoSuchHostedZone", "No hosted zone found")
    else:
        aws.zone(name="example.org." if answer == "other" else "agents.example.com.", private=answer == "private")
    zone = aws.checks(ecs_cfg())["Route 53 hosted zone"]
    assert zone.ok is False and found in zone.found, zone.line()


@pytest.mark.parametrize(("arn", "answer", "found"), [
    (ARN.replace("us-east-1", "eu-west-1"), None, "is in eu-west-1; the load balancer is in us-east-1"),
    (ARN, "missing", "does not exist"),
    (ARN, "PENDING_VALIDATION", "is PENDING_VALIDATION"),
    (ARN, "narrow", "does not cover default.agents.example.com"),
])
def test_aws_certificate_failures(arn: str, answer: str | None, found: str) -> None:
    aws = Aws()
    aws.identity()
    aws.zone()
    if answer == "missing":
        aws.stub("acm").add_client_error("describe_certificate", "ResourceNotFoundException", "not found")
    elif answer == "narrow":
        aws.certificate(names=("www.agents.example.com",))
    elif answer:
        aws.certificate(status=answer)
    cert = aws.checks(ecs_cfg(**{"ecs.certificateArn": arn}))["ACM certificate"]
    assert cert.ok is False and found in cert.found, cert.line()


def test_aws_offline_is_a_warning_not_a_failure() -> None:
    from botocore.exceptions import EndpointConnectionError

    aws = Aws()

    def offline(service: str, region: str | None) -> Any:
        class Client:
            def __getattr__(self, name: str) -> Any:
                def call(**kw: Any) -> Any:
                    raise EndpointConnectionError(endpoint_url=f"https://{service}.amazonaws.com")
                return call
        return Client()

    results = preflight.aws_checks(ecs_cfg(), {"aws:region": "us-east-1"}, environ={}, session=aws.session,
                                   client=offline)
    got = by_name(results)
    assert got["AWS credentials"].ok is None and "not verified: STS did not answer" in got["AWS credentials"].found
    assert got["Route 53 hosted zone Z0123456789ABCDEFGHIJ"].ok is None
    assert preflight.Report("ecs", results).blocking() == []
    assert len(preflight.Report("ecs", results).blocking(strict=True)) == 2


def test_vm_checks_its_hosted_zone_too() -> None:
    aws = Aws()
    aws.identity()
    aws.zone()
    got = aws.checks(cfg_of("vm", {"docker.vm.hostedZoneId": "Z0123456789ABCDEFGHIJ"}))
    assert got["Route 53 hosted zone"].ok is True


# --------------------------------------------------------------------------- Modal


def test_modal_token_from_env_config_or_profile(tmp_path: Path) -> None:
    cfg = cfg_of("modal")
    home = {"HOME": str(tmp_path)}
    missing = preflight.check_modal(cfg, environ=home)
    assert missing.ok is False and missing.found.endswith(f"no {tmp_path / '.modal.toml'}")
    assert "modal token new" in missing.fix
    assert preflight.check_modal(cfg, environ={**home, "MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"}).ok
    (tmp_path / ".modal.toml").write_text('[work]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\nactive = true\n'
                                          '[other]\ntoken_id = "ak-2"\n')
    assert preflight.check_modal(cfg, environ=home).found == f"profile 'work' of {tmp_path / '.modal.toml'}"
    other = preflight.check_modal(cfg, environ={**home, "MODAL_PROFILE": "other"})
    assert other.ok is False and "has no token_id/token_secret" in other.found
    configured = cfg_of("modal", {"modal.tokenId": "ak-1", "modal.tokenSecret": "as-1"}, secret={"modal"})
    assert preflight.check_modal(configured, environ=home).ok is True


# --------------------------------------------------------------------------- Kubernetes (real API server)


def _kubeconfig_for(base: str, user: str, token: str, path: Path, server: str | None = None) -> Path:
    doc = yaml.safe_load(Path(base).read_text())
    doc["users"] = [{"name": user, "user": {"token": token}}]
    doc["contexts"] = [{"name": "throwaway", "context": {"cluster": doc["clusters"][0]["name"], "user": user}}]
    if server:
        doc["clusters"][0]["cluster"]["server"] = server
    path.write_text(yaml.safe_dump(doc))
    return path


class Cluster:
    """Objects this test made in the throwaway cluster, removed at the end."""

    def __init__(self, kube_cluster: Any) -> None:
        self.kubeconfig = kube_cluster.kubeconfig
        self.client = kube_cluster.client
        self.paths: list[str] = []

    def make(self, path: str, body: dict[str, Any], item: str | None = None) -> dict[str, Any]:
        created, _ = self.client.request("POST", path, json.dumps(body))
        self.paths.append(f"{path}/{body['metadata']['name']}")
        return created or {}

    def namespace(self, labels: dict[str, str] | None = None) -> str:
        name = f"t-doc-{uuid.uuid4().hex[:6]}"
        self.make("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}})
        return name

    def cleanup(self) -> None:
        for path in reversed(self.paths):
            self.client.request("DELETE", path, ok404=True)


@pytest.fixture
def cluster(kube_cluster: Any) -> Iterator[Cluster]:
    c = Cluster(kube_cluster)
    try:
        yield c
    finally:
        c.cleanup()


def kube_cfg(kubeconfig: str, **overrides: Any) -> Any:
    """The k8s stack against the throwaway cluster: its kubeconfig (a path, as the provider takes it)."""
    values = {"kubernetes.kubeconfig": kubeconfig, "kubernetes.storageClass": "openhands-test",
              "kubernetes.ingressClass": "openhands-doctor", "kubernetes.ingressNamespace": "kube-system",
              "kubernetes.tls": {"secretName": "wildcard-tls"}, **overrides}
    return cfg_of("k8s", values, secret={"kubernetes"})


def test_kube_unreachable_context_fails_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    t0 = time.monotonic()
    results = preflight.kube_checks(kube_cfg(str(path)), "k8s")
    assert time.monotonic() - t0 < 30
    assert results[0].ok is False and "did not answer" in results[0].found, results[0].line()
    assert all(r.ok is None for r in results[1:])
    missing = preflight.kube_checks(kube_cfg(str(path), **{"kubernetes.context": "nope"}), "k8s")[0]
    assert missing.ok is False and "no usable kubeconfig" in missing.found


def test_kube_cluster_version_and_storage_class(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from components import kubernetes as model

    got = preflight.kube_checks(kube_cfg(cluster.kubeconfig), "k8s")
    head = got[0]
    assert head.ok is True and head.name == "Kubernetes cluster (version 1.25-1.37)" and "v1.36" in head.found
    assert one(got, "StorageClass openhands-test").line() == "ok    StorageClass openhands-test: exists"
    bad = one(preflight.kube_checks(kube_cfg(cluster.kubeconfig, **{"kubernetes.storageClass": "gp3"}), "k8s"),
              "StorageClass gp3")
    assert bad.ok is False and "not in the cluster (it has: " in bad.found and "openhands-test" in bad.found
    monkeypatch.setattr(model, "SUPPORTED_K8S_VERSIONS", ("1.20.0", "1.24.0"))
    old = preflight.kube_checks(kube_cfg(cluster.kubeconfig), "k8s")[0]
    assert old.ok is False and old.fix == "use a cluster running Kubernetes 1.20-1.24"


def test_kube_default_storage_class(cluster: Cluster) -> None:
    cfg = kube_cfg(cluster.kubeconfig, **{"kubernetes.storageClass": None})
    default_key = "storageclass.kubernetes.io/is-default-class"
    classes = cluster.client.get("/apis/storage.k8s.io/v1/storageclasses")["items"]
    defaults = [c["metadata"]["name"] for c in classes
                if c["metadata"].get("annotations", {}).get(default_key) == "true"]
    if defaults:
        # The full cluster of `scripts/kube start` (CI's) makes local-path the default; the API-server-only
        # one (`--no-node`) has none, and shows the refusal below.
        assert one(preflight.kube_checks(cfg, "k8s"), "StorageClass").found == f"{defaults[0]} is the default"
        return
    none = one(preflight.kube_checks(cfg, "k8s"), "StorageClass")
    assert none.ok is False and "no class is the default" in none.found
    name = f"doctor-default-{uuid.uuid4().hex[:6]}"
    cluster.make("/apis/storage.k8s.io/v1/storageclasses", {
        "metadata": {"name": name, "annotations": {default_key: "true"}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"})
    assert one(preflight.kube_checks(cfg, "k8s"), "StorageClass").found == f"{name} is the default"


def test_kube_ingress_class_and_controller_namespace(cluster: Cluster) -> None:
    missing = preflight.kube_checks(kube_cfg(cluster.kubeconfig, **{"kubernetes.ingressNamespace": "ingress-nope"}),
                                    "k8s")
    cls = one(missing, "IngressClass openhands-doctor")
    assert cls.ok is False and "the provider waits 10 minutes" in cls.found
    assert one(missing, "ingress controller namespace").ok is False
    cluster.make("/apis/networking.k8s.io/v1/ingressclasses",
                 {"metadata": {"name": "openhands-doctor"}, "spec": {"controller": "example.com/doctor"}})
    found = preflight.kube_checks(kube_cfg(cluster.kubeconfig), "k8s")
    assert one(found, "IngressClass").line() == \
        "ok    IngressClass openhands-doctor: exists (controller example.com/doctor)"
    assert one(found, "ingress controller namespace kube-system").ok is True


CRD = "clusterissuers.cert-manager.io"


def _crd_gone(client: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}") is not None:
        assert time.monotonic() < deadline, f"{CRD} is not deleted"
        time.sleep(0.25)


def test_kube_cluster_issuer(cluster: Cluster) -> None:
    client = cluster.client
    client.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}", ok404=True)
    _crd_gone(client)
    cfg = kube_cfg(cluster.kubeconfig, **{"kubernetes.tls": {"clusterIssuer": "letsencrypt-doctor"}})
    absent = one(preflight.kube_checks(cfg, "k8s"), "cert-manager ClusterIssuer")
    assert absent.ok is False and absent.found == "cert-manager is not installed (no cert-manager.io/v1 issuers)"
    try:
        client.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json.dumps({
            "metadata": {"name": CRD},
            "spec": {"group": "cert-manager.io", "scope": "Cluster",
                     "names": {"plural": "clusterissuers", "singular": "clusterissuer", "kind": "ClusterIssuer",
                               "listKind": "ClusterIssuerList"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}))
        deadline = time.monotonic() + 60
        while True:
            live = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}") or {}
            if any(c["type"] == "Established" and c["status"] == "True"
                   for c in (live.get("status") or {}).get("conditions") or []):
                break
            assert time.monotonic() < deadline
            time.sleep(0.25)
        time.sleep(1)  # discovery catches up
        missing = one(preflight.kube_checks(cfg, "k8s"), "cert-manager ClusterIssuer")
        assert missing.ok is False and missing.found == "not found; no certificate would be issued"
        for name, status in (("letsencrypt-doctor", "True"), ("broken-doctor", "False")):
            client.request("POST", "/apis/cert-manager.io/v1/clusterissuers", json.dumps({
                "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": name},
                "spec": {"selfSigned": {}},
                "status": {"conditions": [{"type": "Ready", "status": status, "reason": "Test",
                                           "message": "ACME account not registered"}]}}))
        assert one(preflight.kube_checks(cfg, "k8s"), "cert-manager").line() == \
            "ok    cert-manager ClusterIssuer letsencrypt-doctor: Ready"
        broken = kube_cfg(cluster.kubeconfig, **{"kubernetes.tls": {"clusterIssuer": "broken-doctor"}})
        not_ready = one(preflight.kube_checks(broken, "k8s"), "cert-manager")
        assert not_ready.ok is False and not_ready.found == "not Ready (ACME account not registered)"
    finally:
        client.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}", ok404=True)


def _tls_secret(name: str, kind: str = "kubernetes.io/tls") -> dict[str, Any]:
    data = {"tls.crt": base64.b64encode(b"crt").decode(), "tls.key": base64.b64encode(b"key").decode()}
    return {"metadata": {"name": name}, "type": kind, "data": data}


def test_kube_tls_secret_and_namespace(cluster: Cluster) -> None:
    ns = cluster.namespace()
    reuse = kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": ns, "kubernetes.createNamespace": False})
    got = preflight.kube_checks(reuse, "k8s")
    assert one(got, f"namespace {ns}").line() == f"ok    namespace {ns}: exists (reused: createNamespace is false)"
    missing = one(got, "TLS Secret wildcard-tls")
    assert missing.ok is False and missing.found == f"not in namespace {ns}"
    assert missing.fix.startswith(f"kubectl -n {ns} create secret tls wildcard-tls")
    cluster.make(f"/api/v1/namespaces/{ns}/secrets", _tls_secret("opaque", "Opaque"))
    opaque = one(preflight.kube_checks(kube_cfg(cluster.kubeconfig, **{
        "kubernetes.namespace": ns, "kubernetes.createNamespace": False,
        "kubernetes.tls": {"secretName": "opaque"}}), "k8s"), "TLS Secret")
    assert opaque.ok is False and "is of type Opaque" in opaque.found
    cluster.make(f"/api/v1/namespaces/{ns}/secrets", _tls_secret("wildcard-tls"))
    assert one(preflight.kube_checks(reuse, "k8s"), "TLS Secret").line() == \
        f"ok    TLS Secret wildcard-tls: exists in {ns}"

    # createNamespace true: a namespace of someone else's is refused; a free name, or this project's, passes.
    created = kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": ns})
    foreign = one(preflight.kube_checks(created, "k8s"), f"namespace {ns}")
    assert foreign.ok is False and foreign.found.startswith("exists and is not this stack's")
    assert one(preflight.kube_checks(created, "k8s", owned_namespace=lambda n: n == ns), f"namespace {ns}").found == \
        "exists, created by stack k8s"
    labels = {"app.kubernetes.io/part-of": "openhands", "app.kubernetes.io/managed-by": "pulumi"}
    kept = cluster.namespace(labels)
    mine = kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": kept})
    assert one(preflight.kube_checks(mine, "k8s"), f"namespace {kept}").ok is True
    cluster.make(f"/apis/apps/v1/namespaces/{kept}/statefulsets", {
        "metadata": {"name": "openhands-other-default"},
        "spec": {"replicas": 0, "serviceName": "x", "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "example.com/x:1"}]}}}})
    other = one(preflight.kube_checks(mine, "k8s"), f"namespace {kept}")
    assert other.ok is False and other.found == "holds another stack's workloads (openhands-other-default)"
    free = f"t-doc-free-{uuid.uuid4().hex[:6]}"
    assert one(preflight.kube_checks(kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": free}), "k8s"),
               f"namespace {free}").line() == f"ok    namespace {free}: free (the stack creates it)"
    gone = kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": free, "kubernetes.createNamespace": False})
    assert one(preflight.kube_checks(gone, "k8s"), f"namespace {free}").ok is False


def test_kube_rbac_admin_passes_and_a_restricted_user_is_named(cluster: Cluster, tmp_path: Path) -> None:
    admin = one(preflight.kube_checks(kube_cfg(cluster.kubeconfig), "k8s"), "RBAC")
    assert admin.ok is True and admin.found.startswith("all ") and admin.found.endswith("verbs the stack uses are "
                                                                                        "allowed")
    ns = cluster.namespace()
    cluster.make(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "restricted"}})
    token, _ = cluster.client.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/restricted/token", json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}))
    kubeconfig = _kubeconfig_for(cluster.kubeconfig, "restricted", token["status"]["token"], tmp_path / "restricted")
    t0 = time.monotonic()
    got = preflight.kube_checks(kube_cfg(str(kubeconfig), **{"kubernetes.namespace": ns}), "k8s")
    assert time.monotonic() - t0 < 60
    assert got[0].ok is True  # /version is public to every authenticated user
    rbac = one(got, "RBAC")
    assert rbac.ok is False, rbac.line()
    assert rbac.found.startswith(f"denied in {ns}: secrets: get, list, watch, create, patch, delete;")
    assert "statefulsets.apps: get, list, watch, create, patch, delete" in rbac.found
    assert "namespaces: get, create, patch, delete" in rbac.found
    assert rbac.fix == f"ask the cluster admin for a Role in {ns} with these verbs (and a ClusterRole for namespaces)"
    storage = one(got, "StorageClass")
    assert storage.ok is None and "could not list StorageClasses (403" in storage.found


def test_kube_render_to_needs_no_cluster(tmp_path: Path) -> None:
    cfg = cfg_of("k8s", {"kubernetes.renderTo": str(tmp_path / "out")})
    assert [r.line() for r in preflight.kube_checks(cfg, "k8s")] == [
        f"ok    Kubernetes cluster: not contacted: renderTo writes manifests to {tmp_path / 'out'}"]


_KIND_PLURALS = {"Namespace": "namespaces", "Secret": "secrets", "ServiceAccount": "serviceaccounts",
                 "StatefulSet": "statefulsets", "Service": "services", "Ingress": "ingresses",
                 "NetworkPolicy": "networkpolicies", "HTTPRoute": "httproutes", "Gateway": "gateways"}


def _gateway(create: bool) -> dict[str, Any]:
    base = {"kubernetes.routing": "gateway", "kubernetes.ingressClass": None, "kubernetes.ingressNamespace": None}
    if create:
        return {**base, "kubernetes.gateway": {"create": True, "namespace": "gateway-system", "className": "eg"}}
    return {**base, "kubernetes.gateway": {"name": "shared", "namespace": "infra"}, "kubernetes.tls": None}


@pytest.mark.parametrize("overrides", [{}, _gateway(True), _gateway(False)], ids=["ingress", "gateway", "existing"])
def test_rbac_covers_every_kind_the_stack_renders(overrides: dict[str, Any]) -> None:
    try:
        cfg = cfg_of("k8s", overrides)
    except config.ConfigError as exc:
        pytest.skip(f"this checkout's config has no routing: gateway yet ({exc})")
    rendered = render("k8s", overrides=overrides)
    kinds = {r.type.rsplit(":", 1)[1] for r in rendered.resources if r.type.startswith("kubernetes:")
             and not r.type.startswith("kubernetes:helm") and r.custom and "providers" not in r.type}
    needs = {(verb, resource) for verb, _, resource, _ in preflight.rbac_needs(cfg.kubernetes, "ns")}
    for kind in kinds:
        for verb in ("get", "create", "patch", "delete"):
            assert (verb, _KIND_PLURALS[kind]) in needs, (kind, verb)


def test_kube_gateway_routing(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    try:
        request.getfixturevalue("gateway_api_crds")
    except pytest.FixtureLookupError:
        pytest.skip("tests/harness/real_kube.py has no gateway_api_crds fixture")
    client = cluster.client
    gw_ns, tenants_ns = cluster.namespace(), f"t-doc-{uuid.uuid4().hex[:6]}"
    klass = f"doctor-{uuid.uuid4().hex[:6]}"

    def cfg(gateway: dict[str, Any], tls: Any = None) -> Any:
        return kube_cfg(cluster.kubeconfig, **{"kubernetes.namespace": tenants_ns, "kubernetes.routing": "gateway",
                                               "kubernetes.ingressClass": None, "kubernetes.ingressNamespace": None,
                                               "kubernetes.gateway": gateway, "kubernetes.tls": tls})

    existing = cfg({"name": "shared", "namespace": gw_ns})
    absent = preflight.kube_checks(existing, "k8s")
    assert one(absent, f"Gateway {gw_ns}/shared").found == "not in the cluster; the routes would never be served"
    assert one(absent, "TLS").found == "from the existing Gateway's listeners"
    created = cfg({"create": True, "namespace": "gateway-nope", "className": klass}, {"secretName": "gw-tls"})
    got = preflight.kube_checks(created, "k8s")
    assert one(got, f"GatewayClass {klass}").ok is False
    assert one(got, "gateway namespace gateway-nope").ok is False

    api = "/apis/gateway.networking.k8s.io/v1"
    cluster.make(f"{api}/gatewayclasses", {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                                           "metadata": {"name": klass}, "spec": {"controllerName": "example.com/gw"}})
    cluster.make(f"{api}/namespaces/{gw_ns}/gateways", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "shared"},
        "spec": {"gatewayClassName": klass, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    pending = preflight.kube_checks(existing, "k8s")
    assert one(pending, f"Gateway {gw_ns}/shared").ok is False  # no controller accepted it
    listeners = one(pending, f"Gateway {gw_ns}/shared listeners")
    assert listeners.ok is False and "allowedRoutes from: Same" in listeners.found
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
                "lastTransitionTime": now, "observedGeneration": 1}
    client.request("PATCH", f"{api}/gatewayclasses/{klass}/status",
                   json.dumps({"status": {"conditions": [accepted]}}), content_type="application/merge-patch+json")
    client.request("PATCH", f"{api}/namespaces/{gw_ns}/gateways/shared/status",
                   json.dumps({"status": {"conditions": [accepted]}}), content_type="application/merge-patch+json")
    client.request("PATCH", f"{api}/namespaces/{gw_ns}/gateways/shared", json.dumps({"spec": {"listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
        content_type="application/merge-patch+json")
    ready = preflight.kube_checks(existing, "k8s")
    assert one(ready, f"Gateway {gw_ns}/shared").line() == f"ok    Gateway {gw_ns}/shared: Accepted"
    assert one(ready, f"GatewayClass {klass}").ok is True
    assert one(ready, f"Gateway {gw_ns}/shared listeners").ok is True
    section = preflight.kube_checks(cfg({"name": "shared", "namespace": gw_ns, "sectionName": "https"}), "k8s")
    assert one(section, f"Gateway {gw_ns}/shared listeners").found == "no listener named https"


# --------------------------------------------------------------------------- up/preview before the engine


def _without_skip(engine_project: Any) -> None:
    engine_project.env.pop(operator.SKIP_PREFLIGHT_ENV, None)


def test_up_with_a_taken_port_exits_2_before_the_engine_and_records_nothing(engine_project, docker_client) -> None:
    _without_skip(engine_project)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack_file = engine_project.stack_file("local")
        stack_file.write_text(stack_file.read_text().replace("httpsPort: 8443", f"httpsPort: {port}"))
        t0 = time.monotonic()
        proc = engine_project.openhands("up", "-s", "local")
        took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert took < 60, took
    assert f"FAIL  host port 127.0.0.1:{port}: in use by another process on this machine" in proc.stdout
    assert proc.stderr.startswith("error: preflight: ") and "nothing was changed" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "created stack" not in proc.stdout and " of stack 'local' ..." not in proc.stdout
    assert not (engine_project.dir / ".openhands-deploy" / "state").exists()  # no stack, no state at all


def test_preview_with_an_unreachable_cluster_exits_2_and_skip_preflight_reaches_the_engine(
        engine_project, tmp_path: Path) -> None:
    _without_skip(engine_project)
    kubeconfig = tmp_path / "gone"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    engine_project.env["KUBECONFIG"] = str(kubeconfig)
    t0 = time.monotonic()
    proc = engine_project.openhands("preview", "-s", "k8s")
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FAIL  Kubernetes cluster (version 1.25-1.37): context (current) of " in proc.stdout
    assert not (engine_project.dir / ".openhands-deploy" / "state").exists()
    skipped = engine_project.openhands("preview", "-s", "k8s", "--skip-preflight")
    assert "preflight" not in skipped.stdout and "created stack 'k8s'" in skipped.stdout


def test_a_secret_kubeconfig_is_read_through_the_engine_once_the_stack_exists(engine_project, tmp_path: Path) -> None:
    _without_skip(engine_project)
    gone = tmp_path / "gone"
    gone.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    created = engine_project.openhands("preview", "-s", "k8s", "--skip-preflight")
    assert "created stack 'k8s'" in created.stdout, created.stdout + created.stderr
    engine_project.pulumi("config", "set", "--secret", "--path", "openhands:kubernetes.kubeconfig", str(gone),
                          "--stack", "k8s")
    assert "secure:" in engine_project.stack_file("k8s").read_text()
    proc = engine_project.openhands("doctor", "-s", "k8s")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "Kubernetes cluster" in ln)
    assert line.startswith("FAIL  Kubernetes cluster (version 1.25-1.37): context (current) of kubernetes.kubeconfig "
                           "at https://127.0.0.1:"), line
