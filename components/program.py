"""The Pulumi program: config -> keys -> the chosen model -> exports.

Only the chosen model's module is imported, so a ``local`` or ``modal`` run never
loads ``pulumi_aws`` or ``pulumi_kubernetes``.
"""

from __future__ import annotations

import importlib
from typing import Any

import pulumi

from components import config, contract, deployment, promotion
from components.deployment import Deployment


def run() -> dict[str, Any]:
    """Build the stack and return its exports (also registered with ``pulumi.export``)."""
    cfg = config.load()  # raises ConfigError before anything is registered
    # A promoting stack (prod) deploys the image its fromStack (dev) ran; see components/promotion.py.
    promoted = promotion.resolve(cfg)
    cfg = promoted.cfg
    build: deployment.Model = importlib.import_module(deployment.model_module(cfg)).build

    from components.keys import tenant_keys

    keys = tenant_keys(cfg)
    built: Deployment = build(cfg, keys)
    exports: dict[str, Any] = {
        deployment.MODEL: cfg.model,
        deployment.URL: dict(built.urls),
        deployment.API_KEY: pulumi.Output.secret({t: k.api_key for t, k in keys.items()}),
        # The keys that decrypt secrets stored on each tenant's volume (current first). Kept
        # volumes outlive `pulumi destroy`, the generated keys do not: save these first to
        # re-attach a volume later through tenantKeys.
        deployment.SECRET_KEYS: pulumi.Output.secret(
            {t: k.values.apply(lambda v: [v.secret_key, *v.previous_secret_keys]) for t, k in keys.items()}
        ),
        deployment.IMAGE: built.image if built.image is not None else cfg.image,
        deployment.CONTRACT_VERSION: contract.CONTRACT_VERSION,
        **promoted.exports,
        **built.exports,
    }
    for name, value in exports.items():
        pulumi.export(name, value)
    return exports
