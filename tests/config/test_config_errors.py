"""Issue 13, config part: every kind of bad input ends in one clear message, with nothing registered.

Through the render harness (the program under Pulumi's mocks: ``r.registered_before(exc)`` holds what
was registered) and through ``openhands check`` (exit 2, one message, no traceback).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pydantic import BaseModel, ValidationError

from components import config as c
from components import contract
from components.config import ConfigError
from openhands_cli import check
from openhands_cli import render as r

ROOT = Path(__file__).resolve().parents[2]
STRONG = "k" * 32
OTHER = "s" * 40
# Text that only a regex would put in a message.
REGEX_BITS = ("^", "$", "[a-z", "[0-9", "\\d", "\\s", "{0,", "{1,", "(?", ".+", "]+", ")?")


def fails(stack: str = "local", **kw: Any) -> str:
    """The ConfigError message of rendering ``stack``; asserts nothing was registered."""
    with pytest.raises(ConfigError) as info:
        r.render(stack, **kw)
    registered = r.registered_before(info.value)
    assert registered == [], f"registered before the config error: {[x.name for x in registered]}"
    assert isinstance(info.value, pulumi.RunError)  # Pulumi prints a RunError's message alone
    return str(info.value)


def one_problem(msg: str) -> str:
    """The single problem line of a config error (a file-level error is one line already)."""
    lines = [ln for ln in msg.splitlines() if ln.startswith("  - ")]
    assert len(lines) <= 1, f"expected one problem, got:\n{msg}"
    return lines[0] if lines else msg


def no_regex(msg: str) -> None:
    assert "should match pattern" not in msg, msg
    bits = [b for b in REGEX_BITS if b in msg.replace("e.g.", "")]
    assert not bits, f"regex syntax {bits} in: {msg}"


def vm_stack(**vm: Any) -> dict[str, Any]:
    """Overrides replacing the vm stack's ``docker.vm`` object by itself plus ``vm``."""
    return {"docker.vm": {**r.load_stack_config("vm")["openhands:docker"]["vm"], **vm}}


# --------------------------------------------------------------------------- 1. weak keys


@pytest.mark.parametrize("field", ["sessionApiKey", "secretKey", "previousSessionApiKey", "previousSecretKeys"])
def test_supplied_keys_shorter_than_32_characters_are_refused(field: str) -> None:
    keys: dict[str, Any] = {"sessionApiKey": STRONG, "secretKey": OTHER}
    weak = "hunter2-hunter2"
    keys[field] = [weak] if field == "previousSecretKeys" else weak
    msg = fails(secrets={"tenantKeys": {"default": keys}})
    line = one_problem(msg)
    assert f"openhands:tenantKeys.default.{field}" in line
    assert "is 15 characters; a supplied key needs at least 32" in line and "brute-forced" in line
    assert weak not in msg  # never echo a key


def test_a_32_character_key_is_accepted() -> None:
    rendered = r.render("local", secrets={"tenantKeys": {"default": {"sessionApiKey": STRONG, "secretKey": OTHER}}})
    assert rendered.resources


# --------------------------------------------------------------------------- 2. checks before resources


def test_unreadable_ssh_private_key_registers_nothing(tmp_path: Path) -> None:
    # Before: three resources (the tenant's keys) were registered, then vm.py raised.
    msg = fails("vm", overrides=vm_stack(sshPrivateKeyPath=str(tmp_path / "missing")))
    line = one_problem(msg)
    assert "openhands:docker.vm.sshPrivateKeyPath: cannot read" in line and "No such file" in line


def test_ssh_private_key_must_be_a_key_file_only_its_owner_reads(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    line = one_problem(fails("vm", overrides=vm_stack(sshPrivateKeyPath=str(key))))
    assert "readable by others (mode 0644)" in line and f"chmod 600 {key}" in line
    not_key = tmp_path / "id_ed25519.pub"
    not_key.write_text("ssh-ed25519 AAAA me@host\n")
    line = one_problem(fails("vm", overrides=vm_stack(sshPrivateKeyPath=str(not_key))))
    assert "is not a PEM or OpenSSH private key" in line
    line = one_problem(fails("vm", overrides=vm_stack(sshPrivateKeyPath=str(tmp_path))))
    assert "is not a file" in line
    # The good case: mode 600 renders, and the key reaches the SSH connection as a secret.
    key.chmod(0o600)
    rendered = r.render("vm", overrides=vm_stack(sshPrivateKeyPath=str(key)))
    ready = rendered.one("command:remote:Command", "vm-cloud-init")
    assert ready.inputs["connection"]["privateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ready.is_secret("connection.privateKey") or ready.is_secret("connection")


def test_missing_docker_socket_registers_nothing(tmp_path: Path) -> None:
    line = one_problem(fails(overrides={"docker.host": f"unix://{tmp_path}/docker.sock"}))
    assert "openhands:docker.host" in line and "does not exist" in line


def test_missing_canvas_tool_registers_nothing(tmp_path: Path) -> None:
    line = one_problem(fails("modal", overrides={"modal.canvasUi": True, "modal.canvasUiDir": str(tmp_path)}))
    assert "openhands:modal.canvasUi" in line and "canvas_ui_tool.py" in line


def test_kubeconfig_path_must_be_readable_and_a_kubeconfig(tmp_path: Path) -> None:
    line = one_problem(fails("k8s", secrets={"kubernetes.kubeconfig": str(tmp_path / "nope")}))
    assert "openhands:kubernetes.kubeconfig: is neither a kubeconfig nor a readable kubeconfig file" in line
    bad = tmp_path / "config"
    bad.write_text("- just\n- a list\n")
    line = one_problem(fails("k8s", secrets={"kubernetes.kubeconfig": str(bad)}))
    assert "is not a kubeconfig" in line
    good = tmp_path / "good"
    good.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    provider = r.render("k8s", secrets={"kubernetes.kubeconfig": str(good)}).one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == str(good)


# --------------------------------------------------------------------------- 3 + 4. YAML and --set


YAML_CASES = {
    "syntax error": ("config:\n  openhands:model: [docker\n", "line 3, column 1: while parsing a flow sequence"),
    "not a mapping": ("- openhands:model\n- docker\n", "is a list, not a mapping"),
    "config not a mapping": ("config: docker\n", "`config` is a str, not a mapping"),
    "config a list": ("config:\n  - openhands:model: docker\n", "`config` is a list, not a mapping"),
    "top-level typo": ("confg:\n  openhands:model: docker\n", "unknown top-level key 'confg' (did you mean 'config'?)"),
    "same key with and without namespace": (
        "config:\n  openhands:model: docker\n  model: ecs\n",
        "line 3, column 3: 'model' is openhands:model again (first at line 2",
    ),
    "date": ("config:\n  openhands:tenants: [2026-01-01]\n", "is a date to Pulumi (YAML 1.1)"),
    "namespace typo": ("config:\n  openhand:model: docker\n",
                       "openhand:model: unknown namespace 'openhand' (did you mean openhands:model?)"),
    "duplicate key": (
        "config:\n  openhands:model: docker\n  openhands:tenants: [a]\n  openhands:model: ecs\n",
        "line 4, column 3: duplicate key 'openhands:model' (first at line 2)",
    ),
    "nested duplicate": (
        "config:\n  openhands:model: docker\n  openhands:docker:\n    httpsPort: 8443\n    httpsPort: 9443\n",
        "line 5, column 5: duplicate key 'httpsPort' (first at line 4)",
    ),
    "tab indentation": ("config:\n\topenhands:model: docker\n", "YAML does not allow tabs for indentation"),
    "yes boolean": ("config:\n  openhands:retainData: yes\n", "'yes' is read as true by Pulumi (YAML 1.1)"),
    "on boolean": ("config:\n  openhands:retainData: On\n", "'On' is read as true by Pulumi"),
    "norway": ("config:\n  openhands:model: docker\n  openhands:tenants: [no]\n", "'no' is read as false"),
    "octal-looking": (
        "config:\n  openhands:model: docker\n  openhands:docker:\n    httpsPort: 0443\n",
        "0443 looks octal: Pulumi (YAML 1.1) reads it as 291; write 443",
    ),
    "base 60": ("config:\n  openhands:resources:\n    cpu: 1:30\n", "base-60 number 90 to Pulumi"),
    "hex": ("config:\n  openhands:model: docker\n  openhands:keys:\n    rotation: 0x10\n", "0x10 is 16 to Pulumi"),
    "secure value": ("config:\n  openhands:model: docker\n  openhands:x:\n    secure: AAAB\n", "secure:"),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_bad_stack_files_give_one_message_naming_the_file(case: str, tmp_path: Path) -> None:
    text, expected = YAML_CASES[case]
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    with pytest.raises((ConfigError, ValueError)) as info:
        r.render("bad", stack_path=path)
    assert r.registered_before(info.value) == []
    msg = str(info.value)
    assert expected in msg
    if case != "secure value":
        assert str(path) in msg and "\n" not in msg.strip()


@pytest.mark.parametrize("case", YAML_CASES)
def test_bad_stack_files_exit_2_from_the_check_command(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = YAML_CASES[case]
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    assert check.main(["-s", "bad", "--stack-file", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("check: ") and expected in out.err


SET_CASES = {
    "unclosed list": (["tenants=[a, b"], "--set tenants=[a, b: line 1, column 6: while parsing a flow sequence"),
    "no equals": (["tenants"], "--set wants key=value"),
    "empty key": (["=docker"], "--set wants key=value"),
    "yes boolean": (["retainData=yes"], "--set retainData=yes: line 1, column 1: 'yes' is read as true"),
    "duplicate in a value": (["resources={cpu: 1, cpu: 2}"], "duplicate key 'cpu'"),
    "path through a value": (["docker=1", "docker.httpsPort=1"], "cannot set 'docker.httpsPort': openhands:docker is"),
    "empty path part": (["docker..httpsPort=1"], "cannot set 'docker..httpsPort'"),
    "bad value": (["docker.engine=bogus"], "openhands:docker.engine: Input should be 'local' or 'vm' (got 'bogus')"),
}


@pytest.mark.parametrize("case", SET_CASES)
def test_set_values_that_do_not_parse_exit_2(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    sets, expected = SET_CASES[case]
    argv = ["-s", "local"] + [a for s in sets for a in ("--set", s)]
    assert check.main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and expected in out.err, out.err


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openhands_cli", "check", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_cli_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    """The real entry point, in its own process: exit 2 and one message on stderr, for each kind."""
    files = {"syntax": "config:\n  openhands:model: [docker\n", "duplicate": YAML_CASES["duplicate key"][0],
             "octal": YAML_CASES["octal-looking"][0]}
    runs = []
    for name, text in files.items():
        path = tmp_path / f"Pulumi.{name}.yaml"
        path.write_text(text)
        runs.append(run_cli("-s", name, "--stack-file", str(path)))
    runs.append(run_cli("-s", "local", "--set", "tenants=[a"))
    runs.append(run_cli("-s", "local", "--set", "tenants=[Alice]"))
    runs.append(run_cli("-s", "vm", "--set", "docker.vm.sshPrivateKeyPath=/nonexistent/id_ed25519"))
    for proc in runs:
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert proc.stderr.startswith("check: ")


# --------------------------------------------------------------------------- 5. messages


def test_another_models_block_is_not_used_by_this_model() -> None:
    msg = fails(overrides={"ecs": {"domain": "example.com"}, "modal": {"minContainers": 7}})
    assert "  - openhands:ecs: not used by model 'docker'; remove it" in msg
    assert "  - openhands:modal: not used by model 'docker'; remove it" in msg
    assert "minContainers" not in msg and "domain" not in msg  # its contents are not validated
    assert msg.count("\n  - ") == 2


def test_blank_values_say_why_they_matter() -> None:
    line = one_problem(fails("k8s", secrets={"kubernetes.kubeconfig": "  "}))
    assert "openhands:kubernetes.kubeconfig: must not be empty" in line
    assert "ambient kubeconfig" in line and "session key" not in line
    line = one_problem(fails("modal", secrets={"modal.tokenId": " ", "modal.tokenSecret": "as-secret"}))
    assert "openhands:modal.tokenId: must not be empty" in line
    assert "MODAL_TOKEN_ID" in line and "session key" not in line
    line = one_problem(fails(secrets={"tenantKeys": {"default": {"sessionApiKey": "", "secretKey": OTHER}}}))
    assert "disables authentication" in line


def _patterns(annotation: Any) -> list[str]:
    """Every ``pattern=`` constraint inside an annotation (Annotated metadata, list items, unions)."""
    found = []
    for meta in getattr(annotation, "__metadata__", ()):
        found += [m.pattern for m in [meta, *getattr(meta, "metadata", [])] if getattr(m, "pattern", None)]
    for arg in typing.get_args(annotation):
        found += _patterns(arg)
    return found


def _models() -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [c.StackConfig]
    while todo:
        model = todo.pop()
        if model in out:
            continue
        out.append(model)
        for f in model.model_fields.values():
            found = c.nested_model(f.annotation, typing)
            if found is not None:
                todo.append(found)
    return out


def _pattern_fields() -> list[tuple[type[BaseModel], str, Any, str]]:
    fields = []
    for model in _models():
        for name, f in model.model_fields.items():
            pats = [m.pattern for m in f.metadata if getattr(m, "pattern", None)] + _patterns(f.annotation)
            for p in pats:
                fields.append((model, f.alias or name, f.annotation, p))
    return fields


def test_every_pattern_constrained_field_is_described_in_words() -> None:
    fields = _pattern_fields()
    assert len(fields) >= 15, fields  # instance type, ids, hosted zone, ARN, k8s names, quantities, ...
    missing = sorted({f"{m.__name__}.{k}" for m, k, _, p in fields if p not in c.PATTERN_WORDS})
    assert not missing, f"add these patterns to config.PATTERN_WORDS (via _pattern): {missing}"
    for model, key, annotation, _ in fields:
        bad: Any = "#not valid#"
        if typing.get_origin(annotation) is list:
            bad = [bad]
        with pytest.raises(ValidationError) as info:
            model.model_validate({key: bad})
        message = c.format_errors(info.value.errors(), "t")
        lines = [ln for ln in message.splitlines() if re.search(rf"[:.]{key}(\[0\])?: ", ln)]
        assert lines, message
        for line in lines:
            no_regex(line)
            assert "must be " in line and "e.g. " in line and "'#not valid#'" in line, line


# --------------------------------------------------------------------------- 6. image references


def test_unpinned_and_bare_images_are_warned_about_outside_prod(capsys: pytest.CaptureFixture[str]) -> None:
    rendered = r.render("local", overrides={"image": "ghcr.io/openhands/agent-server:latest",
                                            "docker.caddyImage": "caddy:2.10.2"})
    assert rendered.resources  # a warning, not an error
    joined = "\n".join(rendered.warnings)
    assert "openhands:image: 'ghcr.io/openhands/agent-server:latest' uses the moving tag 'latest'" in joined
    assert "openhands:docker.caddyImage: 'caddy:2.10.2' names no registry" in joined
    assert "docker.io/library/caddy" in joined
    notag = r.render("local", overrides={"image": "registry.example.com:5000/agent-server"})
    assert any("has no tag" in w for w in notag.warnings)
    assert not any("names no registry" in w for w in notag.warnings)  # host:port is a registry
    # The check command shows them, in text and JSON.
    assert check.main(["-s", "local", "--set", "image=ghcr.io/openhands/agent-server", "--no-validators"]) == 0
    out = capsys.readouterr().out
    assert "warning: openhands:image: 'ghcr.io/openhands/agent-server' has no tag" in out
    assert check.main(["-s", "local", "--set", "image=ghcr.io/openhands/agent-server", "--json",
                       "--no-validators"]) == 0
    assert any("has no tag" in w for w in json.loads(capsys.readouterr().out)["warnings"])


def test_pinned_references_are_not_warned_about() -> None:
    for ref in ("ghcr.io/openhands/agent-server:1.58.0-python",
                "ghcr.io/openhands/agent-server@sha256:" + "a" * 64,
                "localhost:5000/agent-server:1", "docker.io/library/caddy:2.10.2"):
        assert c.image_issues(ref) == (None, None), ref


def test_prod_refuses_unpinned_images() -> None:
    outputs = r.assumed_stack_outputs("prod")
    line = one_problem(fails("prod", stack_outputs=outputs, overrides={"promotion.emergencyOverride": {
        "image": "ghcr.io/openhands/agent-server:latest", "reason": "INC-1: testing the rule"}}))
    assert "openhands:promotion.emergencyOverride.image" in line and "prod stack deploys pinned images only" in line
    # A stack named prod without promotion is prod too.
    cfg = r.load_stack_config("local")
    line = one_problem(fails("prod", config={**cfg, "openhands:image": "ghcr.io/openhands/agent-server"}))
    assert "openhands:image: 'ghcr.io/openhands/agent-server' has no tag" in line


@pytest.mark.parametrize("stack", contract.stack_names())
def test_shipped_stacks_have_no_warnings(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["-s", stack, "--json", "--no-validators"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


# --------------------------------------------------------------------------- 7. VM volume and instance rules


@pytest.mark.parametrize(("vm", "key", "expected"), [
    ({"dataVolumeType": "st1", "dataVolumeSize": 124}, "dataVolumeType", "st1 needs dataVolumeSize 125-16384 GiB"),
    ({"dataVolumeType": "io2"}, "dataVolumeIops", "is required with dataVolumeType io2"),
    ({"dataVolumeType": "io2", "dataVolumeSize": 10, "dataVolumeIops": 20000}, "dataVolumeIops",
     "at most 1000 per GiB, so 100-10000 here"),
    ({"dataVolumeIops": 2000}, "dataVolumeIops", "AWS allows 3000-80000 IOPS"),
    ({"dataVolumeSize": 10, "dataVolumeIops": 6000}, "dataVolumeIops", "at most 500 per GiB, so 3000-5000 here"),
    ({"dataVolumeType": "io2", "dataVolumeSize": 2, "dataVolumeIops": 100}, "dataVolumeType", "4-65536 GiB"),
    ({"instanceType": "t3.lage"}, "instanceType", "t3 has no size 'lage'; its sizes are nano, micro"),
    ({"instanceType": "m7x.large"}, "instanceType", "unknown instance family 'm7x'; did you mean"),
    ({"instanceType": "mac2.metal"}, "instanceType", "Dedicated Host"),
])
def test_vm_rules_at_config_time(vm: dict[str, Any], key: str, expected: str, tmp_path: Path) -> None:
    line = one_problem(fails("vm", overrides=vm_stack(**vm)))
    assert f"openhands:docker.vm.{key}: " in line and expected in line


def test_vm_volumes_within_the_rules_render(tmp_path: Path) -> None:
    for vm in ({"dataVolumeType": "st1", "dataVolumeSize": 125}, {"dataVolumeType": "io2", "dataVolumeIops": 3000},
               {"dataVolumeSize": 16, "dataVolumeIops": 8000}, {"instanceType": "t4g.small"}):
        rendered = r.render("vm", overrides=vm_stack(**vm))
        volume = rendered.one("aws:ebs/volume:Volume")
        assert volume.inputs["type"] == vm.get("dataVolumeType", "gp3")


def _botocore_table() -> dict[str, list[str]]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    table: dict[str, list[str]] = {}
    for name in model.shape_for("InstanceType").enum:
        family, _, size = name.partition(".")
        table.setdefault(family, []).append(size)
    return table


def test_instance_type_table_matches_botocore() -> None:
    import botocore

    from components.config.ec2_types import BOTOCORE_VERSION, INSTANCE_TYPES

    ours = {f: set(sizes.split()) for f, sizes in INSTANCE_TYPES.items()}
    theirs = {f: set(sizes) for f, sizes in _botocore_table().items()}
    fresh = "\n".join(f'    "{f}": "{" ".join(sorted(s))}",' for f, s in sorted(theirs.items()))
    assert ours == theirs, (
        f"components/config/ec2_types.py (botocore {BOTOCORE_VERSION}) differs from botocore {botocore.__version__}; "
        f"new families: {sorted(set(theirs) - set(ours))}, gone: {sorted(set(ours) - set(theirs))}. "
        f"Replace INSTANCE_TYPES with (and order sizes small to large):\n{fresh}"
    )
    assert c.instance_type_problem("t3.large") is None and c.instance_type_problem("c7gn.16xlarge") is None


# --------------------------------------------------------------------------- 8. the reviewer's table

KEY = {"sessionApiKey": STRONG, "secretKey": OTHER}

# name: (stack, render kwargs, (expected key or file, expected words))
CASES: dict[str, tuple[str, dict[str, Any], tuple[str, str]]] = {
    # typos at every level
    "typo top-level key": ("local", {"overrides": {"tenant": ["a"]}}, ("openhands:tenant", "did you mean 'tenants'")),
    "typo nested key": ("local", {"overrides": {"docker.httpsprot": 1}},
                        ("openhands:docker.httpsprot", "did you mean 'httpsPort'")),
    "typo deep key": ("k8s", {"overrides": {"kubernetes.tls.clusterIsuer": "x"}},
                      ("openhands:kubernetes.tls.clusterIsuer", "did you mean 'clusterIssuer'")),
    "typo vm key": ("vm", {"overrides": {"docker.vm.instanceTyp": "t3.large"}},
                    ("openhands:docker.vm.instanceTyp", "did you mean 'instanceType'")),
    "typo in a value": ("local", {"overrides": {"model": "dokcer"}}, ("openhands:model", "(got 'dokcer')")),
    "typo in an enum": ("vm", {"overrides": {"docker.vm.os": "ubuntu-22.04"}}, ("openhands:docker.vm.os", "got")),
    # wrong types
    "list as string": ("local", {"overrides": {"tenants": "alice"}}, ("openhands:tenants", "valid list")),
    "text as number": ("local", {"overrides": {"resources.memory": "2 GiB"}},
                       ("openhands:resources.memory", "valid integer")),
    "boolean as number": ("local", {"overrides": {"docker.httpsPort": True}},
                          ("openhands:docker.httpsPort", "is true (a boolean); expected a number")),
    "number as boolean": ("local", {"overrides": {"retainData": 1}},
                          ("openhands:retainData", "expected true or false")),
    "word as boolean": ("ecs", {"overrides": {"ecs.createDnsRecords": "yes"}},
                        ("openhands:ecs.createDnsRecords", "expected true or false")),
    "object as string": ("local", {"overrides": {"image": {"name": "x"}}}, ("openhands:image", "valid string")),
    "string as object": ("local", {"overrides": {"docker": "vm"}}, ("openhands:docker", "valid dictionary")),
    # invalid names
    "uppercase tenant": ("local", {"overrides": {"tenants": ["Alice"]}}, ("openhands:tenants[0]", "tenant name")),
    "duplicate tenants": ("local", {"overrides": {"tenants": ["a", "a"]}}, ("openhands:tenants", "repeated: a")),
    "k8s namespace": ("k8s", {"overrides": {"kubernetes.namespace": "Open_Hands"}},
                      ("openhands:kubernetes.namespace", "RFC 1123 label")),
    "modal app name": ("modal", {"overrides": {"modal.appName": "my app"}}, ("openhands:modal.appName", "Modal name")),
    "vpc id": ("ecs", {"overrides": {"ecs.vpcId": "vpc-x", "ecs.publicSubnetIds": ["subnet-0123456789abcdef0"] * 2}},
               ("openhands:ecs.vpcId", "e.g. vpc-0123456789abcdef0")),
    "hosted zone": ("ecs", {"overrides": {"ecs.hostedZoneId": "/hostedzone/Z123"}},
                    ("openhands:ecs.hostedZoneId", "without '/hostedzone/'")),
    "certificate arn": ("ecs", {"overrides": {"ecs.certificateArn": "arn:aws:acm:cert"}},
                        ("openhands:ecs.certificateArn", "ACM certificate ARN")),
    "ssh key path as key": ("vm", {"overrides": {"docker.vm.sshPublicKey": "~/.ssh/id_ed25519.pub"}},
                            ("openhands:docker.vm.sshPublicKey", "not its path")),
    "acme email": ("vm", {"overrides": {"docker.acmeEmail": "ops"}}, ("openhands:docker.acmeEmail", "email address")),
    "docker host": ("local", {"overrides": {"docker.host": "/var/run/docker.sock"}},
                    ("openhands:docker.host", "unix://")),
    "modal environment": ("modal", {"overrides": {"modal.environment": "-main"}},
                          ("openhands:modal.environment", "Modal environment name")),
    "image reference": ("local", {"overrides": {"image": "Not An Image"}}, ("openhands:image", "image reference")),
    # bad sizes
    "k8s quantity": ("k8s", {"overrides": {"kubernetes.storageSize": "10GB"}},
                     ("openhands:kubernetes.storageSize", "e.g. 10Gi")),
    "k8s leading zero": ("k8s", {"overrides": {"kubernetes.scratchSize": "04Gi"}},
                         ("openhands:kubernetes.scratchSize", "without a leading zero")),
    "memory too small": ("local", {"overrides": {"resources.memory": 100}},
                         ("openhands:resources.memory", "greater than or equal to 512")),
    "zero cpu": ("local", {"overrides": {"resources.cpu": 0}}, ("openhands:resources.cpu", "greater than 0")),
    "fargate pair": ("ecs", {"overrides": {"resources": {"cpu": 1, "memory": 512}}},
                     ("openhands:resources", "does not fit 1 vCPU on Fargate")),
    "st1 too small": ("vm", {"overrides": {"docker.vm.dataVolumeType": "st1"}},
                      ("openhands:docker.vm.dataVolumeType", "125-16384 GiB")),
    "instance size": ("vm", {"overrides": {"docker.vm.instanceType": "t3.huge"}},
                      ("openhands:docker.vm.instanceType", "its sizes are")),
    # weak and blank keys
    "weak key": ("local", {"secrets": {"tenantKeys": {"default": {**KEY, "secretKey": "short"}}}},
                 ("openhands:tenantKeys.default.secretKey", "at least 32")),
    "blank key": ("local", {"secrets": {"tenantKeys": {"default": {**KEY, "sessionApiKey": " "}}}},
                  ("openhands:tenantKeys.default.sessionApiKey", "must not be empty")),
    "plain-text keys": ("local", {"overrides": {"tenantKeys": {"default": KEY}}}, ("openhands:tenantKeys", "--secret")),
    "keys for an unknown tenant": ("local", {"secrets": {"tenantKeys": {"bob": KEY}}},
                                   ("openhands", "tenantKeys names bob")),
    # contradictions and other models
    "other model's block": ("local", {"overrides": {"ecs": {"domain": "example.com"}}},
                            ("openhands:ecs", "not used by model 'docker'; remove it")),
    "vm block with a local engine": ("local", {"overrides": {"docker.vm": {
        "sshPublicKey": "ssh-ed25519 AAAA", "adminCidrs": ["203.0.113.7/32"]}}},
                                     ("openhands:docker", "engine is 'local'")),
    "ssh open to the world": ("vm", {"overrides": {"docker.vm.adminCidrs": ["0.0.0.0/0"]}},
                              ("openhands:docker.vm.adminCidrs", "whole internet")),
    # routing: gateway (the k8s stack file sets ingressClass and ingressNamespace, ingress-only keys)
    "ingress key with gateway routing": ("k8s", {"overrides": {
        "kubernetes.routing": "gateway", "kubernetes.ingressNamespace": None,
        "kubernetes.gateway": {"create": True, "namespace": "gateway-system", "className": "eg"}}},
        ("openhands:kubernetes.ingressClass", "is for routing: ingress")),
    "gateway routing without a gateway": ("k8s", {"overrides": {
        "kubernetes.routing": "gateway", "kubernetes.ingressClass": None, "kubernetes.ingressNamespace": None}},
        ("openhands:kubernetes.gateway", "is required with routing: gateway")),
    "unknown routing": ("k8s", {"overrides": {"kubernetes.routing": "gateway-api"}},
                        ("openhands:kubernetes.routing", "'ingress' or 'gateway'")),
}


@pytest.mark.parametrize("name", CASES)
def test_reviewers_bad_input_gives_one_clear_message(name: str) -> None:
    stack, kw, (key, words) = CASES[name]
    msg = fails(stack, **kw)
    assert msg.startswith(f"invalid configuration for stack {stack!r}:\n"), msg
    line = one_problem(msg)
    assert line.startswith(f"  - {key}"), msg
    assert words in line, msg
    no_regex(line)


@pytest.mark.parametrize("name", ["typo deep key", "boolean as number", "k8s quantity", "other model's block",
                                  "instance size", "uppercase tenant"])
def test_reviewers_bad_input_through_the_check_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    stack, kw, (key, words) = CASES[name]
    argv = ["-s", stack]
    for dotted, value in kw.get("overrides", {}).items():
        argv += ["--set", f"{dotted}={json.dumps(value)}"]
    assert check.main(argv) == 2
    err = capsys.readouterr().err
    assert f"  - {key}" in err and words in err and "Traceback" not in err


def test_prod_refuses_an_unpinned_image_promoted_from_dev() -> None:
    outputs = {src: {**out, "image": "ghcr.io/openhands/agent-server:latest"}
               for src, out in r.assumed_stack_outputs("prod").items()}
    pinned = "which uses the moving tag 'latest'; a promoting stack deploys pinned"
    with pytest.raises(pulumi.RunError, match=pinned) as info:
        r.render("prod", stack_outputs=outputs)
    assert not any(x.type.startswith("kubernetes:") for x in r.registered_before(info.value))  # only the StackReference


@pytest.mark.parametrize(("ref", "why"), [
    ("ghcr.io/openhands/agent-server", "has no tag"),
    ("ghcr.io/openhands/agent-server:latest", "moving tag 'latest'"),
    ("ghcr.io/openhands/agent-server:main", "names no version"),
])
def test_unpinned_means_what_the_policy_pack_means(ref: str, why: str) -> None:
    from policy.workload import image_pinned

    unpinned, _ = c.image_issues(ref)
    assert unpinned and why in unpinned
    assert not image_pinned(ref)


def test_what_the_strict_loader_still_accepts(tmp_path: Path) -> None:
    """Quoted words and dates, plain decimals, true/false, keys without a namespace, overriding a merged key."""
    path = tmp_path / "Pulumi.fine.yaml"
    path.write_text(
        "config:\n"
        "  aws:region: us-east-1\n"
        "  openhands:model: docker\n"
        "  openhands:retainData: false\n"
        "  openhands:tenants: ['no', yes-team]\n"
        "  openhands:resources: {cpu: 0.5, memory: 1024}\n"
        "  openhands:x-defaults: &ports {httpsPort: 8443, httpPort: 8080}\n"
        "  openhands:docker:\n"
        "    <<: *ports\n"
        "    httpsPort: 9443\n"
        "  openhands:note: '2026-01-01'\n"
        "  keys: {rotation: 1}\n"
    )
    cfg = r.load_stack_config("fine", path)
    assert cfg["openhands:tenants"] == ["no", "yes-team"] and cfg["openhands:retainData"] is False
    assert cfg["openhands:docker"] == {"httpsPort": 9443, "httpPort": 8080}
    assert cfg["openhands:note"] == "2026-01-01"
    assert cfg["openhands:keys"] == {"rotation": 1}  # Pulumi reads `keys:` as openhands:keys too


def test_ssh_public_key_read_from_a_file_keeps_working() -> None:
    key = r.load_stack_config("vm")["openhands:docker"]["vm"]["sshPublicKey"]
    rendered = r.render("vm", overrides={"docker.vm.sshPublicKey": key + "\n"})
    assert rendered.one("aws:ec2/keyPair:KeyPair").inputs["publicKey"] == key
    line = one_problem(fails("vm", overrides={"docker.vm.sshPublicKey": key + "\nssh-rsa AAAB other"}))
    assert "openhands:docker.vm.sshPublicKey: must be an OpenSSH public key line" in line


def test_a_misspelt_namespace_is_not_silently_ignored() -> None:
    with pytest.raises(ConfigError, match=r"OpenHands:tenants: unknown namespace 'OpenHands' \(did you mean") as info:
        r.render("local", overrides={"OpenHands:tenants": ["a"]})
    assert r.registered_before(info.value) == []
