"""The Pulumi program: config -> keys -> the chosen model -> exports.

Only the chosen model's module is imported, so a ``local`` or ``modal`` run never
loads ``pulumi_aws`` or ``pulumi_kubernetes``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components import config, contract, promotion


@dataclass
class Deployment:
    """What a model returns to the program."""

    resource: pulumi.ComponentResource
    urls: dict[str, pulumi.Input[str]]
    exports: dict[str, Any] = field(default_factory=dict)
    image: pulumi.Input[str] | None = None  # the image reference actually deployed


def model_module(cfg: config.StackConfig) -> str:
    if cfg.model == "docker":
        return "components.vm" if cfg.settings.engine == "vm" else "components.docker"
    return {"kubernetes": "components.kubernetes", "ecs": "components.ecs", "modal": "components.modal_deploy"}[
        cfg.model
    ]


def run() -> dict[str, Any]:
    """Build the stack and return its exports (also registered with ``pulumi.export``)."""
    cfg = config.load()  # raises ConfigError before anything is registered
    # A promoting stack (prod) deploys the image its fromStack (dev) ran; see components/promotion.py.
    promoted = promotion.resolve(cfg)
    cfg = promoted.cfg
    build = importlib.import_module(model_module(cfg)).build

    from components.keys import tenant_keys

    keys = tenant_keys(cfg)
    deployment: Deployment = build(cfg, keys)
    exports: dict[str, Any] = {
        "model": cfg.model,
        "url": dict(deployment.urls),
        "apiKey": pulumi.Output.secret({t: k.api_key for t, k in keys.items()}),
        # The keys that decrypt secrets stored on each tenant's volume (current first). Kept
        # volumes outlive `pulumi destroy`, the generated keys do not: save these first to
        # re-attach a volume later through tenantKeys.
        "secretKeys": pulumi.Output.secret(
            {t: k.values.apply(lambda v: [v.secret_key, *v.previous_secret_keys]) for t, k in keys.items()}
        ),
        "image": deployment.image if deployment.image is not None else cfg.image,
        "contractVersion": contract.CONTRACT_VERSION,
        **promoted.exports,
        **deployment.exports,
    }
    for name, value in exports.items():
        pulumi.export(name, value)
    return exports
