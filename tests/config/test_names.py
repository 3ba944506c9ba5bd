"""Account-global names (ECS cluster, task family, log groups, secrets, the VM's key pair and
its snapshot policy's target tag) carry project and stack: two stacks, or two projects,
rendered side by side share none of them."""

from __future__ import annotations

import re

import pytest

from components import contract
from openhands_cli.render import Rendered, load_stack_config, render

# Inputs that name an AWS object in a namespace wider than the stack.
NAME_KEYS = ("name", "namePrefix", "family", "keyName", "keyNamePrefix")
# Not global: a service's name is scoped to its cluster (which is); record names are the
# user's own domain, set in config.
SCOPED = {"aws:ecs/service:Service", "aws:route53/record:Record"}


def global_names(rendered: Rendered) -> dict[str, str]:
    """name -> where it was found."""
    out: dict[str, str] = {}
    for res in rendered.resources:
        if not res.custom or not res.type.startswith("aws:") or res.type in SCOPED:
            continue
        for key in NAME_KEYS:
            if key in res.inputs:
                out[str(res.inputs[key])] = f"{res.type} {res.name}.{key}"
        # What a Data Lifecycle Manager policy snapshots is chosen by tag: a shared tag
        # means one stack's policy snapshots (and expires) another stack's disks.
        for tag, value in ((res.inputs.get("policyDetails") or {}).get("targetTags") or {}).items():
            out[f"tag {tag}={value}"] = f"{res.type} {res.name} targetTags"
        if res.type == "aws:ebs/volume:Volume":
            for tag, value in (res.inputs.get("tags") or {}).items():
                if tag == "openhands:snapshots":
                    out[f"tag {tag}={value}"] = f"{res.type} {res.name} tags"
    return out


@pytest.mark.parametrize("model", ["ecs", "vm"])
def test_two_stacks_share_no_global_name(model: str):
    config = load_stack_config(model)
    first = global_names(render(model, config=config))
    other_stack = global_names(render(f"{model}-b", config=config))
    other_project = global_names(render(model, config=config, project="acme-agents"))
    assert first, f"{model}: no global names found"
    assert len(first) == len(other_stack) == len(other_project)
    assert not set(first) & set(other_stack), f"shared between stacks: {set(first) & set(other_stack)}"
    assert not set(first) & set(other_project), f"shared between projects: {set(first) & set(other_project)}"
    if model == "vm":
        # The snapshot policy targets exactly the tag its own data volume carries.
        rendered = render(model, config=config)
        volume = rendered.one("aws:ebs/volume:Volume").inputs["tags"]
        target = rendered.one("aws:dlm/lifecyclePolicy:LifecyclePolicy").inputs["policyDetails"]["targetTags"]
        assert target == {"openhands:snapshots": volume["openhands:snapshots"]}
        assert volume["openhands:snapshots"] == "openhands-vm"


def test_ecs_names_keep_to_aws_limits():
    stack = "team.prod-" + "x" * 300  # Pulumi allows '.', ECS names do not
    rendered = render(stack, config=load_stack_config("ecs"))
    cluster = rendered.one("aws:ecs/cluster:Cluster").inputs["name"]
    family = rendered.one("aws:ecs/taskDefinition:TaskDefinition").inputs["family"]
    log_group = rendered.one("aws:cloudwatch/logGroup:LogGroup").inputs["name"]
    prefix = rendered.one("aws:secretsmanager/secret:Secret").inputs["namePrefix"]
    for name in (cluster, family):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name), name
    assert len(log_group) <= 512 and re.fullmatch(r"[A-Za-z0-9_./#-]+", log_group)
    assert len(prefix) + 32 <= 512  # AWS appends a random suffix to the prefix
    # Cut names stay unique: the hash of the whole name is kept.
    other = render(stack[:-1] + "y", config=load_stack_config("ecs"))
    assert other.one("aws:ecs/cluster:Cluster").inputs["name"] != cluster


def test_default_project_keeps_todays_names():
    """With the project `openhands`, names are what they were (no replacement on upgrade)."""
    rendered = render("ecs")
    assert rendered.one("aws:ecs/cluster:Cluster").inputs["name"] == "openhands-ecs"
    assert rendered.one("aws:cloudwatch/logGroup:LogGroup").inputs["name"] == "/openhands/ecs/default"
    assert rendered.one("aws:ecs/taskDefinition:TaskDefinition").inputs["family"] == "openhands-ecs-default"


def test_global_name_shape():
    assert contract.global_name("p", "s", "t") == "p-s-t"
    assert contract.global_name("p", "a.b") == "p-a-b"
    long = contract.global_name("p", "s" * 300, max_length=40)
    assert len(long) == 40 and long != contract.global_name("p", "s" * 299, max_length=40)


def modal_names(rendered: Rendered) -> set[str]:
    """The Modal app, Secret and Volume names: global to a Modal environment."""
    out: set[str] = set()
    for res in rendered.resources:
        if res.custom and res.type.startswith("pulumi-python:dynamic"):
            out |= {str(res.inputs[k]) for k in ("appName", "secretName", "volumeName") if k in res.inputs}
    return out


def test_two_modal_stacks_share_no_app_secret_or_volume():
    config = load_stack_config("modal")
    first = modal_names(render("modal", config=config))
    other_stack = modal_names(render("modal-b", config=config))
    other_project = modal_names(render("modal", config=config, project="acme-agents"))
    assert len(first) == 3, first
    assert not first & other_stack and not first & other_project
    assert first == {"openhands-modal-default", "openhands-modal-default-keys", "openhands-modal-state-default"}


def test_modal_names_keep_to_modals_limit():
    from components.config import MODAL_NAME_MAX

    config = load_stack_config("modal")
    config["openhands:tenants"] = ["t" * 20]
    names = modal_names(render("s" * 80, config=config))
    assert names and all(len(n) <= MODAL_NAME_MAX for n in names), names
