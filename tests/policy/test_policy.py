"""The CrossGuard pack: every policy passes and fails on fixtures, the engine path agrees, the pack builds."""

from __future__ import annotations

import json
import runpy
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy
from pulumi_policy.policy import _PolicyAnalyzerServicer

import policy
from components import contract
from openhands_cli import render
from openhands_cli.render import Resource, assumed_stack_outputs
from policy import offline
from tests.harness.policy_fixtures import Fixture, all_fixtures

POLICY_DIR = offline.PACK_DIR
FIXTURES = all_fixtures()


def fixture_resource(f: Fixture, typ: str = "", name: str = "", props: dict | None = None) -> Resource:
    """A fixture as a rendered resource, so it reaches the policies through check's engine-shaped request."""
    typ, name = typ or f.type, name or f.name
    props = f.props if props is None else props
    return Resource(
        type=typ,
        name=name,
        urn=f"urn:pulumi:test::openhands::{typ}::{name}",
        custom=True,
        inputs=props,
        raw_inputs=props,
        secret_paths=[],
        parent="",
        protect=f.protect,
        additional_secret_outputs=list(f.additional_secret_outputs),
    )


def run_fixture(f: Fixture) -> list[str]:
    """Run the fixture's policy through the offline analyzer (what the engine's analyzer would hand it, with the
    fixture's config); return the violation messages."""
    if f.stack is None:
        resources = [fixture_resource(f)]
    else:
        resources = [fixture_resource(f, t, n, p) for t, n, p in f.stack]
    violations, _ = offline.run_policies(
        resources, {f.policy: (None, dict(f.config or {}))}, policies=[policy.BY_NAME[f.policy]]
    )
    return [v.message for v in violations]


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f"{f.policy}:{f.id}" for f in FIXTURES])
def test_fixture(fixture: Fixture) -> None:
    messages = run_fixture(fixture)
    if not fixture.violates:
        assert messages == [], f"{fixture.policy} should pass {fixture.id}, reported: {messages}"
        return
    assert messages, f"{fixture.policy} should report {fixture.id}"
    for m in messages:
        assert "Fix: " in m, f"message does not say how to fix it: {m}"
        named = fixture.name if fixture.stack is None else None
        assert named is None or f"'{named}'" in m, f"message does not name the resource: {m}"
    if fixture.expect:
        assert any(fixture.expect in m for m in messages), f"{fixture.expect!r} not in {messages}"


def test_every_policy_has_a_passing_and_a_failing_fixture() -> None:
    seen: dict[str, set[bool]] = defaultdict(set)
    for f in FIXTURES:
        seen[f.policy].add(f.violates)
    names = [p.name for p in policy.POLICIES]
    assert {n for n in names if seen[n] != {True, False}} == set()
    assert set(seen) <= set(names), f"fixtures for unknown policies: {set(seen) - set(names)}"


def test_mandatory_and_configurable_split() -> None:
    levels = {p.name: p.enforcement_level.value for p in policy.POLICIES}
    assert {n for n, lvl in levels.items() if lvl == "advisory"} == {"image-pinned", "data-protected"}
    assert all(lvl == "mandatory" for n, lvl in levels.items() if n not in policy.CONFIGURABLE)
    names = list(levels)
    dev = offline.read_policy_config(POLICY_DIR / "config.dev.json", names)
    prod = offline.read_policy_config(POLICY_DIR / "config.prod.json", names)
    for name in policy.CONFIGURABLE:
        assert offline.effective_level(policy.BY_NAME[name], dev) == "advisory"
        assert offline.effective_level(policy.BY_NAME[name], prod) == "mandatory"
    for name in set(names) - set(policy.CONFIGURABLE):
        assert offline.effective_level(policy.BY_NAME[name], dev) == "mandatory"


def test_policy_config_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"image-pined": "mandatory"}))
    with pytest.raises(ValueError, match="unknown policy 'image-pined'"):
        offline.read_policy_config(bad, [p.name for p in policy.POLICIES])
    bad.write_text(json.dumps({"image-pinned": "disallowed"}))
    with pytest.raises(ValueError, match="allowed: advisory, mandatory"):
        offline.read_policy_config(bad, [p.name for p in policy.POLICIES])


def _analyze(servicer: _PolicyAnalyzerServicer, f: Fixture) -> list[analyzer_pb2.AnalyzeDiagnostic]:
    return list(servicer.Analyze(offline.analyze_request(fixture_resource(f), {}), None).diagnostics)


def test_the_real_analyzer_reports_what_the_fixtures_expect() -> None:
    """pulumi-policy's own gRPC servicer (what `pulumi preview --policy-pack` talks to), without serving."""
    servicer = _PolicyAnalyzerServicer(policy.PACK_NAME, "0.1.0", policy.POLICIES, EnforcementLevel.MANDATORY)
    engine_visible = [f for f in FIXTURES if f.stack is None and not f.config]
    assert len(engine_visible) > 40
    assert any(f.additional_secret_outputs for f in engine_visible) and any(f.protect for f in engine_visible)
    for f in engine_visible:
        diags = [d for d in _analyze(servicer, f) if d.policyName == f.policy]
        assert bool(diags) == f.violates, (f.policy, f.id, [d.message for d in diags])
    # Per-environment enforcement arrives through Configure, as --policy-pack-config sends it.
    latest = next(f for f in FIXTURES if f.policy == "image-pinned" and f.violates and f.stack is None)
    [diag] = [d for d in _analyze(servicer, latest) if d.policyName == "image-pinned"]
    assert diag.enforcementLevel == analyzer_pb2.ADVISORY
    prod = json.loads((POLICY_DIR / "config.prod.json").read_text())
    servicer.Configure(
        analyzer_pb2.ConfigureAnalyzerRequest(
            policyConfig={name: analyzer_pb2.PolicyConfig(enforcementLevel=analyzer_pb2.MANDATORY) for name in prod}
        ),
        None,
    )
    [diag] = [d for d in _analyze(servicer, latest) if d.policyName == "image-pinned"]
    assert diag.enforcementLevel == analyzer_pb2.MANDATORY


def test_main_only_builds_the_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi_policy

    built = {}

    def fake_pack(**kwargs):  # the real one serves gRPC forever
        built.update(kwargs)

    monkeypatch.setattr(pulumi_policy, "PolicyPack", fake_pack)
    monkeypatch.syspath_prepend(str(POLICY_DIR))  # as `python __main__.py` in policy/ has it: its folder first
    runpy.run_path(str(POLICY_DIR / "__main__.py"), run_name="__main__")
    assert built["name"] == "openhands-guardrails"
    assert [p.name for p in built["policies"]] == [p.name for p in policy.POLICIES]
    assert len({p.name for p in policy.POLICIES}) == len(policy.POLICIES)
    meta = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert meta["runtime"]["name"] == "python" and meta["main"] == "__main__.py"
    assert meta["version"].count(".") == 2
    requirements = (POLICY_DIR / "requirements.txt").read_text()
    assert "pulumi-policy==1.21.0" in requirements


def test_policies_import_without_the_repo_on_path(tmp_path: Path) -> None:
    """`pulumi preview --policy-pack policy` runs the pack with policy/ as its directory: the package comes
    from the project's (editable) install, no sys.path edit and no PYTHONPATH."""
    import subprocess

    code = "import policy, policy.offline; print(len(policy.POLICIES))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=POLICY_DIR,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(policy.POLICIES)


@pytest.mark.parametrize("stack", contract.stack_names())
def test_rendered_stacks_pass_the_real_analyzer(stack: str) -> None:
    """What `pulumi preview --policy-pack policy` would say: send each rendered resource, as the engine's
    AnalyzeRequest (offline.analyze_request: secret envelopes, additionalSecretOutputs, protect, parent,
    provider), to pulumi-policy's servicer configured like the stack's environment; and the offline analyzer
    (`check` reports through it) gives exactly the resource-policy diagnostics the servicer gives."""
    rendered = render.render(stack, stack_outputs=assumed_stack_outputs(stack))
    servicer = _PolicyAnalyzerServicer(policy.PACK_NAME, "0.1.0", policy.POLICIES, EnforcementLevel.MANDATORY)
    config_path = offline.default_config_file(stack)
    if config_path is not None:
        levels = {"advisory": analyzer_pb2.ADVISORY, "mandatory": analyzer_pb2.MANDATORY}
        servicer.Configure(
            analyzer_pb2.ConfigureAnalyzerRequest(
                policyConfig={
                    name: analyzer_pb2.PolicyConfig(enforcementLevel=levels[level])
                    for name, level in json.loads(config_path.read_text()).items()
                }
            ),
            None,
        )
    by_urn = {r.urn: r for r in rendered.resources}
    names = {analyzer_pb2.ADVISORY: "advisory", analyzer_pb2.MANDATORY: "mandatory"}
    engine = []
    for r in rendered.resources:
        if r.type.startswith("pulumi:providers:"):
            continue
        # The servicer puts the policy's description before the message reported.
        engine += [
            (
                d.policyName,
                names[d.enforcementLevel],
                r.urn,
                d.message.removeprefix(policy.BY_NAME[d.policyName].description + "\n"),
            )
            for d in servicer.Analyze(offline.analyze_request(r, by_urn), None).diagnostics
        ]
    assert [e for e in engine if e[1] == "mandatory"] == []
    # The offline analyzer (what check runs) agrees with the real servicer, advisories included.
    config = offline.read_policy_config(config_path, [p.name for p in policy.POLICIES])
    violations, _ = offline.run_policies(rendered.resources, config)
    resource_policies = {p.name for p in policy.POLICIES if isinstance(p, ResourceValidationPolicy)}
    emulated = [(v.policy, v.level, v.urn, v.message) for v in violations if v.policy in resource_policies]
    assert sorted(emulated) == sorted(engine)


def test_pack_serves_over_grpc_like_pulumi_runs_it() -> None:
    """Start `python __main__.py` in policy/ as the CLI does, then speak the analyzer protocol to it."""
    import subprocess

    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime.proto import analyzer_pb2_grpc

    proc = subprocess.Popen(
        [sys.executable, "__main__.py"], cwd=POLICY_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == policy.PACK_NAME
            assert {p.name: p.enforcementLevel for p in info.policies}["image-pinned"] == analyzer_pb2.ADVISORY
            assert len(info.policies) == len(policy.POLICIES)
            hand = next(f for f in FIXTURES if f.id == "hand-written-ssh-world")
            props = struct_pb2.Struct()
            props.update(hand.props)
            response = stub.Analyze(
                analyzer_pb2.AnalyzeRequest(type=hand.type, properties=props, urn="urn:x::vm-sg", name="vm-sg"),
                timeout=30,
            )
            [diag] = response.diagnostics
            assert diag.policyName == "no-world-open-ports" and diag.enforcementLevel == analyzer_pb2.MANDATORY
            assert "port 22" in diag.message and "Fix:" in diag.message
    finally:
        proc.terminate()
        proc.wait(timeout=10)
