"""Bad stack config ends the program with one clear message and registers nothing."""

from __future__ import annotations

import pulumi
import pytest

from components.config import ConfigError
from openhands_cli import render as r


def fails(stack: str = "local", **kw) -> str:
    with pytest.raises(ConfigError) as info:
        r.render(stack, **kw)
    assert r.registered_before(info.value) == [], "resources registered before the config error"
    # A RunError: Pulumi prints the message alone, with no traceback.
    assert isinstance(info.value, pulumi.RunError)
    return str(info.value)


def test_typo_in_value_names_the_key_and_the_allowed_values():
    msg = fails(overrides={"model": "dokcer"})
    assert "openhands:model" in msg
    assert "'modal', 'docker', 'ecs' or 'kubernetes'" in msg
    assert "dokcer" in msg


def test_unknown_top_level_key_suggests_the_right_one():
    msg = fails(overrides={"tenant": ["a"]})
    assert "openhands:tenant: unknown key (did you mean 'tenants'?)" in msg
    assert "allowed: " in msg and "resources" in msg


def test_unknown_nested_key_lists_what_that_object_allows():
    msg = fails(overrides={"docker.httpsprot": 9443})
    assert "openhands:docker.httpsprot: unknown key (did you mean 'httpsPort'?)" in msg
    assert "acmeEmail" in msg


def test_wrong_type():
    msg = fails(overrides={"resources": {"cpu": "lots"}})
    assert "openhands:resources.cpu" in msg and "number" in msg


def test_bad_tenant_name_and_duplicates():
    assert "not a valid tenant name" in fails(overrides={"tenants": ["Alice"]})
    assert "repeated: a" in fails(overrides={"tenants": ["a", "b", "a"]})
    assert "openhands:tenants" in fails(overrides={"tenants": []})


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_empty_or_whitespace_secret(blank):
    msg = fails(secrets={"tenantKeys": {"default": {"sessionApiKey": blank, "secretKey": "s3cret-value"}}})
    assert "openhands:tenantKeys.default.sessionApiKey" in msg
    assert "must not be empty" in msg


def test_supplied_key_in_plain_text_is_refused():
    msg = fails(overrides={"tenantKeys": {"default": {"sessionApiKey": "k" * 32, "secretKey": "s" * 32}}})
    assert "openhands:tenantKeys" in msg and "--secret" in msg


def test_conflicting_settings():
    assert "acmeEmail" in fails(overrides={"docker.tls": "acme", "docker.domain": "example.com"})
    msg = fails(overrides={"ecs": {"domain": "example.com", "hostedZoneId": "Z123"}})
    assert "openhands:ecs: not used by model 'docker'; remove it" in msg
    assert "tenantKeys names bob" in fails(
        secrets={"tenantKeys": {"bob": {"sessionApiKey": "k" * 32, "secretKey": "s" * 32}}}
    )


def test_several_problems_come_in_one_message():
    msg = fails(overrides={"model": "dokcer", "image": "not an image", "keys": {"rotation": -1}})
    assert msg.count("\n  - ") == 3
    for key in ("openhands:model", "openhands:image", "openhands:keys.rotation"):
        assert key in msg


def test_image_must_be_a_reference():
    assert "is not an image reference" in fails(overrides={"image": "ghcr.io/openhands/agent-server:"})


def test_a_render_after_asyncio_run_in_the_same_thread_works():
    """asyncio.run() leaves the main thread without an event loop, and Pulumi's mocks need one (a test that
    ran a load client before a render failed with "There is no current event loop")."""
    import asyncio

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    assert r.render("local").one("docker:index/container:Container", "docker-proxy-caddy")
