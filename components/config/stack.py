"""The whole stack: promotion, the per-model settings together, and what counts as prod."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from components import contract
from components.config.docker import DockerSettings
from components.config.ecs import EcsSettings
from components.config.errors import MODELS, NAMESPACE
from components.config.kubernetes import KubernetesSettings
from components.config.modal import ModalSettings
from components.config.values import ConfigModel, ImageRef, Keys, Resources, SuppliedKeys, TenantName, image_issues

# --------------------------------------------------------------------------- promotion

_STACK_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"


class EmergencyOverride(ConfigModel):
    """Break-glass: deploy something dev did not run. Logged in the stack outputs."""

    image: ImageRef | None = None  # None: still dev's image, only the contract check is waived
    reason: str = Field(max_length=500)

    @field_validator("reason")
    @classmethod
    def _real_reason(cls, value: str) -> str:
        if len(value.strip()) < 10:
            raise ValueError("give a real reason (at least 10 characters, e.g. an incident id and why)")
        return value.strip()


class PromotionSettings(ConfigModel):
    """Prod promotes dev's image and contract version instead of choosing its own (components/promotion.py)."""

    from_stack: str  # <org>/<project>/<stack>; DIY backends use organization/<project>/<stack>
    emergency_override: EmergencyOverride | None = None

    @field_validator("from_stack")
    @classmethod
    def _qualified(cls, value: str) -> str:
        if not re.match(_STACK_REF, value):
            raise ValueError(
                f"{value!r} is not a fully qualified stack name; use <org>/<project>/<stack>, e.g. "
                "organization/openhands/dev on a DIY backend or acme/openhands/dev on Pulumi Cloud"
            )
        return value


# --------------------------------------------------------------------------- stack


class StackConfig(ConfigModel):
    model: Literal["modal", "docker", "ecs", "kubernetes"]
    tenants: list[TenantName] = Field(default_factory=lambda: ["default"], min_length=1, max_length=200)
    image: ImageRef = contract.DEFAULT_IMAGE
    resources: Resources = Resources()
    keys: Keys = Keys()
    tenant_keys: dict[str, SuppliedKeys] = {}
    retain_data: bool = True
    docker: DockerSettings | None = None
    kubernetes: KubernetesSettings | None = None
    ecs: EcsSettings | None = None
    modal: ModalSettings | None = None
    promotion: PromotionSettings | None = None

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[str]) -> list[str]:
        dupes = sorted({t for t in tenants if tenants.count(t) > 1})
        if dupes:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dupes)}")
        return tenants

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        unknown = sorted(set(self.tenant_keys) - set(self.tenants))
        if unknown:
            raise ValueError(f"tenantKeys names {', '.join(unknown)}, which are not in tenants {self.tenants}")
        others = [m for m in MODELS if m != self.model and getattr(self, m) is not None]
        if others:
            # parse() reports each block under its own key; this covers direct validation.
            raise ValueError(f"{', '.join(others)}: not used by model {self.model!r}; remove it")
        if self.model in ("kubernetes", "ecs") and getattr(self, self.model) is None:
            raise ValueError(f"model {self.model!r} needs the '{self.model}' object (at least its domain and TLS)")
        return self

    def images(self) -> list[tuple[str, str]]:
        """(config key, reference) of every image this stack's config names."""
        out = [("image", self.image)]
        if self.model == "docker":
            out.append(("docker.caddyImage", self.settings.caddy_image))
        override = self.promotion.emergency_override if self.promotion else None
        if override and override.image:
            out.append(("promotion.emergencyOverride.image", override.image))
        return out

    @property
    def settings(self) -> Any:
        """The chosen model's settings object (defaults where the model allows them)."""
        value = getattr(self, self.model)
        if value is None:
            value = {"docker": DockerSettings, "modal": ModalSettings}[self.model]()
        return value


SECRET_FIELDS = ("tenantKeys",)



# Stacks held to prod rules (pinned images): these names, and every stack that promotes
# (``promotion`` set), the same stacks whose policy config makes ``image-pinned`` mandatory.
PROD_STACKS = ("prod", "production")


def is_prod(cfg: StackConfig, stack: str) -> bool:
    return cfg.promotion is not None or stack.rsplit("/", 1)[-1] in PROD_STACKS


def warnings(cfg: StackConfig, stack: str) -> list[str]:
    """What is allowed but risky: unpinned images outside prod, images that name no registry."""
    out = []
    for key, ref in cfg.images():
        unpinned, bare = image_issues(ref)
        if unpinned and not is_prod(cfg, stack):
            out.append(
                f"{NAMESPACE}:{key}: {ref!r} {unpinned}: a redeploy may run another image; pin a version tag "
                "or a digest (prod stacks refuse unpinned images)"
            )
        if bare:
            out.append(f"{NAMESPACE}:{key}: {ref!r} {bare}")
    return out
