"""The keys' checksum: the rollout trigger every model stamps in plain sight (a Docker label,
a pod annotation, an ECS dockerLabel, the Modal app's state) must move with the keys and
must not reveal them."""

from __future__ import annotations

import hashlib
import json

import pytest

from components import contract
from components.keys import keys_checksum
from openhands_cli.render import Rendered, fake_secret, render

APP = "pulumi-python:dynamic/modal:App"
PASSWORD = "random:index/randomPassword:RandomPassword"
# A supplied key of the shortest accepted length: short enough to guess from a plain digest.
SHORT_SESSION = "k" * 32
SHORT_SECRET = "s" * 32


def checksum(rendered: Rendered, tenant: str = "default") -> str:
    return rendered.one(APP, f"{tenant}-modal-app").inputs["secretHash"]


def supplied(session: str = SHORT_SESSION, secret: str = SHORT_SECRET) -> Rendered:
    return render("modal", secrets={"tenantKeys": {"default": {"sessionApiKey": session, "secretKey": secret}}})


@pytest.fixture(scope="module")
def base() -> Rendered:
    return render("modal")


def test_stable_across_renders_with_the_same_inputs(base: Rendered):
    assert checksum(render("modal")) == checksum(base)
    assert checksum(supplied()) == checksum(supplied())


def test_a_rotation_changes_it(base: Rendered):
    first = render("modal", overrides={"keys.rotation": 1})
    second = render("modal", overrides={"keys.rotation": 2})
    assert len({checksum(base), checksum(first), checksum(second)}) == 3


def test_a_change_of_supplied_keys_changes_it():
    before = checksum(supplied())
    assert checksum(supplied(session="K" * 32)) != before
    assert checksum(supplied(secret="S" * 32)) != before


def test_tenants_have_their_own_salt():
    two = render("modal", overrides={"tenants": ["alice", "bob"]})
    salts = [r for r in two.of_type(PASSWORD) if r.name.endswith("-keys-salt")]
    assert sorted(r.name for r in salts) == ["alice-keys-salt", "bob-keys-salt"]
    # Same supplied keys for both tenants still give different checksums.
    keys = {"sessionApiKey": SHORT_SESSION, "secretKey": SHORT_SECRET}
    same = render("modal", overrides={"tenants": ["alice", "bob"]},
                  secrets={"tenantKeys": {"alice": keys, "bob": keys}})
    assert checksum(same, "alice") != checksum(same, "bob")


def test_not_a_digest_of_the_keys_alone():
    """Someone who reads the label and guesses the key cannot confirm the guess."""
    rendered = supplied()
    value = checksum(rendered)
    env = contract.secret_env(contract.KeyValues(session_keys=(SHORT_SESSION,), secret_key=SHORT_SECRET))
    unsalted = [
        hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest(),  # what it used to be
        hashlib.sha256(json.dumps(env).encode()).hexdigest(),
        hashlib.sha256(SHORT_SESSION.encode()).hexdigest(),
        hashlib.sha256((SHORT_SESSION + SHORT_SECRET).encode()).hexdigest(),
    ]
    assert value not in unsalted
    # It is the HMAC under the tenant's salt (the render harness's stand-in random value)...
    salt = fake_secret("default-keys-salt")
    assert value == keys_checksum(salt, env)
    # ...and any other salt gives another value.
    assert keys_checksum("another salt", env) != value


def test_the_salt_is_a_secret_in_the_state(base: Rendered):
    salt = base.one(PASSWORD, "default-keys-salt")
    assert "result" in salt.additional_secret_outputs  # pulumi-random keeps it secret in the state
    assert salt.inputs["length"] >= 32 and salt.inputs["special"] is False
    app = base.one(APP)
    assert app.inputs["secretHash"] and not app.is_secret("secretHash")  # the checksum itself is plain
    assert fake_secret("default-keys-salt") not in json.dumps([r.inputs for r in base.resources])


@pytest.mark.parametrize(
    ("stack", "typ", "label"),
    [
        ("local", "docker:index/container:Container", "dev.openhands.keys-checksum"),
        ("k8s", "kubernetes:apps/v1:StatefulSet", "openhands.dev/keys-checksum"),
        ("ecs", "aws:ecs/taskDefinition:TaskDefinition", "dev.openhands.keys-checksum"),
    ],
)
def test_every_model_stamps_the_salted_checksum(stack: str, typ: str, label: str):
    rendered = render(stack, overrides={"tenants": ["default"], "keys.rotation": 0})
    env = contract.secret_env(
        contract.KeyValues(
            session_keys=(fake_secret("default-session-key-g0"),), secret_key=fake_secret("default-secret-key-g0")
        )
    )
    stamped = [json.dumps(r.inputs) for r in rendered.of_type(typ) if label in json.dumps(r.inputs)]
    assert len(stamped) == 1, f"{stack}: expected one workload labelled {label}"
    assert keys_checksum(fake_secret("default-keys-salt"), env) in stamped[0]
    assert hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest() not in stamped[0]
