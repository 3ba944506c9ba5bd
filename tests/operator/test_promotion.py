"""Prod promotes dev: image and contract version come from dev's stack outputs."""

from __future__ import annotations

import pytest
import yaml

from components import contract, promotion
from components.config import ConfigError
from openhands_cli.render import assumed_stack_outputs, load_stack_config, render, stack_file

DEV = "organization/openhands/dev"  # prod's promotion.fromStack
DIGEST = "ghcr.io/openhands/agent-server@sha256:" + "4f" * 32
STATEFULSET = "kubernetes:apps/v1:StatefulSet"


def dev_outputs(**values) -> dict:
    out = {"image": DIGEST, "contractVersion": contract.CONTRACT_VERSION,
           "url": {"alpha": "https://alpha.dev.agents.example.com"}}
    out.update(values)
    return {DEV: {k: v for k, v in out.items() if v is not None}}


def container_images(rendered) -> dict[str, list[str]]:
    return {r.name: [c["image"] for c in r.inputs["spec"]["template"]["spec"]["containers"]]
            for r in rendered.of_type(STATEFULSET)}


def test_prod_runs_and_exports_the_image_and_contract_dev_exported():
    prod = render("prod", stack_outputs=dev_outputs())
    images = container_images(prod)
    assert len(images) == len(load_stack_config("prod")["openhands:tenants"]) == 3
    assert all(imgs == [DIGEST] for imgs in images.values()), images
    assert prod.outputs["image"] == DIGEST
    assert prod.outputs["contractVersion"] == contract.CONTRACT_VERSION
    assert prod.outputs["promotedFrom"] == {"stack": DEV, "image": DIGEST,
                                            "contractVersion": contract.CONTRACT_VERSION}
    assert "promotionOverride" not in prod.outputs
    assert set(prod.outputs["url"]) == {"acme", "globex", "initech"}


def test_dev_outputs_feed_prod_end_to_end():
    """What `pulumi up -s dev` exports is exactly what prod needs and deploys."""
    dev = render("dev")
    for name in ("image", "contractVersion", "url"):
        assert name in dev.outputs, name
    assert dev.outputs["image"] == load_stack_config("dev")["openhands:image"]
    assert set(dev.outputs["url"]) == {"alpha", "beta"}
    prod = render("prod", stack_outputs={DEV: dev.outputs})
    assert prod.outputs["image"] == dev.outputs["image"]
    assert {img for imgs in container_images(prod).values() for img in imgs} == {dev.outputs["image"]}


@pytest.mark.parametrize("missing", ["image", "contractVersion"])
def test_missing_dev_output_is_a_clear_error(missing):
    with pytest.raises(promotion.PromotionError) as err:
        render("prod", stack_outputs=dev_outputs(**{missing: None}))
    message = str(err.value)
    assert f"stack {DEV!r} has no output {missing!r}" in message
    assert "pulumi up -s dev" in message and "emergencyOverride" in message


def test_contract_mismatch_fails_unless_overridden():
    with pytest.raises(promotion.PromotionError, match=r"runtime contract mismatch: .* ran contract version 0"):
        render("prod", stack_outputs=dev_outputs(contractVersion="0"))

    reason = "INC-42: dev cluster down, contract change verified on staging"
    prod = render("prod", stack_outputs=dev_outputs(contractVersion="0"),
                  overrides={"promotion.emergencyOverride": {"reason": reason}})
    assert prod.outputs["image"] == DIGEST  # still dev's image: only the contract check was waived
    override = prod.outputs["promotionOverride"]
    assert override["reason"] == reason
    assert override["fromStackContractVersion"] == "0"
    assert override["contractVersion"] == contract.CONTRACT_VERSION
    assert any("contract mismatch" in w for w in override["waived"])


def test_emergency_image_override_is_deployed_and_logged():
    hotfix = "ghcr.io/openhands/agent-server:1.58.1-python"
    reason = "CVE-2026-0001 hotfix, approved in INC-7"
    prod = render("prod", stack_outputs=dev_outputs(),
                  overrides={"promotion.emergencyOverride": {"image": hotfix, "reason": reason}})
    assert prod.outputs["image"] == hotfix
    assert all(imgs == [hotfix] for imgs in container_images(prod).values())
    assert prod.outputs["promotedFrom"]["image"] == DIGEST  # what dev runs, for the record
    assert prod.outputs["promotionOverride"]["image"] == hotfix
    assert prod.outputs["promotionOverride"]["reason"] == reason
    assert prod.outputs["promotionOverride"]["waived"] == [f"{hotfix} is not the image {DEV} runs"]


def test_an_image_set_in_prod_config_cannot_silently_lose_to_dev():
    with pytest.raises(promotion.PromotionError, match="Remove openhands:image from Pulumi.prod.yaml"):
        render("prod", stack_outputs=dev_outputs(), overrides={"image": contract.DEFAULT_IMAGE})
    # the same image as dev's is harmless
    render("prod", stack_outputs=dev_outputs(), overrides={"image": DIGEST})


def test_dev_exporting_garbage_as_image_is_refused():
    with pytest.raises(promotion.PromotionError, match="exports image 'latest!'"):
        render("prod", stack_outputs=dev_outputs(image="latest!"))


def test_promoting_from_itself_is_refused():
    with pytest.raises(promotion.PromotionError, match="this stack itself"):
        render("prod", overrides={"promotion.fromStack": "organization/openhands/prod"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"promotion.fromStack": "dev"}, "openhands:promotion.fromStack: 'dev' is not a fully qualified stack name"),
        ({"promotion.emergencyOverride": {"reason": "   because   "}},
         "openhands:promotion.emergencyOverride.reason: give a real reason"),
        ({"promotion.emergencyOverride": {"image": "x y", "reason": "a valid reason here"}},
         "openhands:promotion.emergencyOverride.image"),
        ({"promotion.emergencyOverride": {"reason": "a valid reason here", "imag": "x"}}, "did you mean 'image'"),
    ],
)
def test_promotion_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        render("prod", stack_outputs=dev_outputs(), overrides=overrides)


def test_stack_pair_is_one_model_dev_small_prod_sized_up():
    dev, prod = (yaml.safe_load(stack_file(s).read_text())["config"] for s in ("dev", "prod"))
    assert dev["openhands:model"] == prod["openhands:model"] == "kubernetes"
    assert "openhands:image" not in prod, "prod must not choose its own image"
    assert prod["openhands:promotion"]["fromStack"].endswith("/openhands/dev")
    assert "openhands:promotion" not in dev
    assert prod["openhands:resources"]["cpu"] > dev["openhands:resources"]["cpu"]
    assert prod["openhands:resources"]["memory"] > dev["openhands:resources"]["memory"]
    size = lambda c: int(c["openhands:kubernetes"]["storageSize"].removesuffix("Gi"))  # noqa: E731
    assert size(prod) > size(dev)
    assert prod["openhands:retainData"] is True
    assert "Kubernetes" in stack_file("dev").read_text().split("config:")[0]  # the why, in the header


def test_offline_check_of_prod_assumes_dev_runs_its_configured_image():
    assumed = assumed_stack_outputs("prod")
    assert assumed == {DEV: {"image": load_stack_config("dev")["openhands:image"],
                             "contractVersion": contract.CONTRACT_VERSION}}
    assert assumed_stack_outputs("dev") == {}
    assert render("prod", stack_outputs=assumed).outputs["image"] == load_stack_config("dev")["openhands:image"]
