"""Dev -> prod promotion: prod runs the image (and runtime contract) that dev ran.

A stack with ``openhands:promotion.fromStack`` does not choose its own image. It reads
the ``image`` and ``contractVersion`` outputs of that stack through a
``pulumi.StackReference`` and deploys exactly that image. Promotion is therefore a
deliberate ``pulumi up`` of prod after dev was deployed and smoke-tested; prod never runs
an image dev did not run, and never renders a runtime contract dev did not run.

Design: why the value is read synchronously
    Every model takes ``cfg.image`` as a plain ``str`` (some derive names or labels from
    it), while ``StackReference.get_output`` returns an ``Output``. Instead of making every
    model accept an ``Output`` image, we await ``StackReference.get_output_details`` once,
    right here, and hand the models a ``StackConfig`` whose ``image`` is dev's string.
    A StackReference is a *read* of the other stack's last checkpoint, done by the engine
    at registration, so its outputs are known in ``pulumi preview`` as well as ``up``;
    awaiting them does not depend on anything in this stack. Pulumi's own synchronous
    invokes (``pulumi.runtime.invoke``) wait the same way (``_sync_await``, pinned SDK
    ``pulumi==3.272.0``). The effect: the image shows up as a known value in prod's
    preview diff, and a missing or mismatched dev output stops the run before any
    resource of the model is registered.

Emergency override
    ``promotion.emergencyOverride: {image?, reason}`` deploys something dev did not run
    (with ``image``) and/or accepts a contract mismatch. It needs a reason, prints a
    warning, and is exported as ``promotionOverride`` so ``pulumi stack output`` and the
    stack history show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from components import contract, deployment
from components.config import StackConfig, image_issues, valid_image_ref

# The outputs a promoted-from stack must export (components/program.py exports both).
REQUIRED_OUTPUTS = (deployment.IMAGE, deployment.CONTRACT_VERSION)


class PromotionError(pulumi.RunError):
    """Promotion cannot proceed. Pulumi prints a RunError's message with no traceback."""


@dataclass(frozen=True)
class Promotion:
    """What the program deploys: ``cfg`` with the promoted image, and extra exports."""

    cfg: StackConfig
    exports: dict[str, Any] = field(default_factory=dict)


def _read_now(ref: pulumi.StackReference, name: str) -> Any:
    """One output of the referenced stack as a plain value (None when absent).

    ``get_output_details`` is the SDK's public way to get a stack output's value rather
    than an Output; we wait for it in place (see the module docstring for why).
    """
    from pulumi.runtime.sync_await import _sync_await

    details = _sync_await(ref.get_output_details(name))
    return details.value if details.value is not None else details.secret_value


def resolve(cfg: StackConfig) -> Promotion:
    """The config the model should deploy. Unchanged for a stack without ``promotion``.

    Raises PromotionError when the referenced stack lacks an output, exports an
    invalid image, or ran another runtime contract (unless an emergency override is set),
    or when this stack's own ``openhands:image`` contradicts the promoted one.
    """
    promo = cfg.promotion
    if promo is None:
        return Promotion(cfg)

    here = f"{pulumi.get_project()}/{pulumi.get_stack()}"
    source = promo.from_stack
    if source.split("/", 1)[1] == here:
        raise PromotionError(
            f"openhands:promotion.fromStack is {source!r}, this stack itself; name the stack to promote from"
        )

    ref = pulumi.StackReference(source)
    dev = {name: _read_now(ref, name) for name in REQUIRED_OUTPUTS}
    dev_image, dev_contract = dev[deployment.IMAGE], dev[deployment.CONTRACT_VERSION]
    dev_contract = None if dev_contract is None else str(dev_contract)
    override = promo.emergency_override
    stack = pulumi.get_stack()

    missing = [name for name, value in dev.items() if value is None]
    if missing and (override is None or (dev_image is None and override.image is None)):
        raise PromotionError(
            f"cannot promote into stack {stack!r}: stack {source!r} has no output "
            f"{' or '.join(repr(m) for m in missing)}.\n"
            f"  Deploy it with this package first (`pulumi up -s {source.rsplit('/', 1)[-1]}` exports "
            f"{' and '.join(REQUIRED_OUTPUTS)}), and check openhands:promotion.fromStack.\n"
            "  In an emergency set openhands:promotion.emergencyOverride.image and .reason."
        )
    if dev_image is not None:
        try:
            valid_image_ref(str(dev_image))
        except ValueError as exc:
            raise PromotionError(f"stack {source!r} exports image {dev_image!r}: {exc}") from None
        # A promoting stack is prod (config.is_prod): it runs pinned images only, dev's included.
        unpinned, _ = image_issues(str(dev_image))
        if unpinned and not (override and override.image):
            raise PromotionError(
                f"stack {source!r} exports image {dev_image!r}, which {unpinned}; a promoting stack deploys "
                f"pinned images only: pin openhands:image in {source.rsplit('/', 1)[-1]} to a version tag or "
                "a digest and deploy it first"
            )

    problems = [f"{source!r} has no output {m!r}" for m in missing]  # only reached with an override
    if dev_contract is not None and dev_contract != contract.CONTRACT_VERSION:
        problems.append(
            f"runtime contract mismatch: {source!r} ran contract version {dev_contract}, this code "
            f"renders version {contract.CONTRACT_VERSION}. Deploy this commit to dev first, smoke-test it, "
            "then promote"
        )
    image = override.image if override and override.image else dev_image
    if "image" in cfg.model_fields_set and cfg.image != image:
        # An explicit image in prod's stack file would silently lose to dev's; say so.
        raise PromotionError(
            f"openhands:image is {cfg.image!r} in stack {stack!r}, but this stack promotes "
            f"{image!r} from {source!r}. Remove openhands:image from Pulumi.{stack}.yaml; to deploy another "
            "image in an emergency set openhands:promotion.emergencyOverride.image and .reason"
        )
    if problems and override is None:
        raise PromotionError(
            f"cannot promote {source!r} into stack {stack!r}:\n  - "
            + "\n  - ".join(problems)
            + "\n  In an emergency set openhands:promotion.emergencyOverride.reason (and .image)."
        )

    exports: dict[str, Any] = {
        deployment.PROMOTED_FROM: {"stack": source, "image": dev_image, "contractVersion": dev_contract},
    }
    if override is not None:
        exports[deployment.PROMOTION_OVERRIDE] = {
            "image": image,
            "reason": override.reason,
            "fromStackImage": dev_image,
            "fromStackContractVersion": dev_contract,
            "contractVersion": contract.CONTRACT_VERSION,
            "waived": problems + ([f"{image} is not the image {source} runs"] if image != dev_image else []),
        }
        pulumi.log.warn(
            f"EMERGENCY OVERRIDE of promotion from {source}: deploying {image} "
            f"(dev runs {dev_image}, contract {dev_contract}); reason: {override.reason}"
        )
    return Promotion(cfg.model_copy(update={"image": image}), exports)
