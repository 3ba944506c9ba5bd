"""What every model gives the program, which module builds which model, and the names of the
stack outputs.

A model is a module with a ``build`` function (the ``Model`` protocol). The program imports only
the chosen model's module (``MODEL_MODULES``), so a ``local`` or ``modal`` run never loads
``pulumi_aws`` or ``pulumi_kubernetes``. This module imports no model: each model imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pulumi

if TYPE_CHECKING:
    from components.config import StackConfig
    from components.keys import TenantKeys


@dataclass
class Deployment:
    """What a model returns to the program."""

    resource: pulumi.ComponentResource
    urls: dict[str, pulumi.Input[str]]
    exports: dict[str, Any] = field(default_factory=dict)
    image: pulumi.Input[str] | None = None  # the image reference actually deployed


class Model(Protocol):
    """A model's ``build``: register the stack's resources for ``cfg`` with the tenants' ``keys``."""

    def __call__(self, cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment: ...


# (config ``model``, ``docker.engine`` or None) -> the module whose ``build`` deploys it.
MODEL_MODULES: dict[tuple[str, str | None], str] = {
    ("docker", "local"): "components.docker.local",
    ("docker", "vm"): "components.docker.vm",
    ("kubernetes", None): "components.kubernetes",
    ("ecs", None): "components.ecs.service",
    ("modal", None): "components.modal.deploy",
}


def model_module(cfg: StackConfig) -> str:
    """The module that builds ``cfg``'s model."""
    engine = cfg.settings.engine if cfg.model == "docker" else None
    return MODEL_MODULES[(cfg.model, engine)]


# ------------------------------------------------------------------ stack outputs
# Every stack exports these; the operator (connect, status, smoke) and a promoting stack read them.
MODEL = "model"
URL = "url"  # {tenant: https URL}
API_KEY = "apiKey"  # secret {tenant: session API key}
SECRET_KEYS = "secretKeys"  # secret {tenant: [current secret key, previous ...]}
IMAGE = "image"  # the image reference actually deployed
CONTRACT_VERSION = "contractVersion"
# A promoting stack also exports where its image came from, and any emergency override.
PROMOTED_FROM = "promotedFrom"
PROMOTION_OVERRIDE = "promotionOverride"
# Model-specific outputs the operator reads.
CADDYFILE = "caddyfile"
CA_CERTIFICATE = "caCertificate"  # Docker with tls internal: the root a client trusts
