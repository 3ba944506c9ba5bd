"""ConfigModel of the Modal model."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pulumi
from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components import contract
from components.config.errors import NAMESPACE
from components.config.values import ConfigModel, ModalToken, pattern

if TYPE_CHECKING:
    from components.config.stack import StackConfig


# --------------------------------------------------------------------------- modal


# Modal object names: letters, digits, '-', '_', '.'; at most 64 characters (modal's
# check_object_name). Each tenant gets <appName>-<tenant>, <appName>-<tenant>-keys and
# <volumeName>-<tenant>, so the base names leave room for the longest tenant name.
_MODAL_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
MODAL_NAME_MAX = 64


def _modal_base_limit(field: str) -> int:
    """Longest base name: room for "-<tenant>-keys" (Secret) or "-<tenant>" (Volume)."""
    return MODAL_NAME_MAX - 21 - (5 if field == "app_name" else 0)


class ModalSettings(ConfigModel):
    """The Modal model: per tenant one Modal app, one Secret (the keys) and one Volume (the state)."""

    environment: str | None = Field(
        None,
        pattern=pattern(
            r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$",
            "a Modal environment name: 1-64 letters, digits, '-' or '_', starting with a letter or digit",
            "main",
        ),
    )
    # Modal names are global to a Modal environment, so by default they carry the project and
    # the stack: two stacks (or projects) deploying into one environment never share an app,
    # Secret or Volume. Set them to adopt objects that already exist under other names.
    app_name: str | None = None  # default <project>-<stack>
    volume_name: str | None = None  # default <project>-<stack>-state
    min_containers: int = 1
    max_containers: int = 1
    scaledown_window: int = Field(300, ge=2, le=3600)
    timeout: int = Field(3600, ge=10, le=86400)
    max_inputs: int = Field(100, ge=1, le=1000)
    canvas_ui: bool = False
    # Directory (relative to the project) that holds canvas_ui_tool.py, baked into the image.
    canvas_ui_dir: str = "tools"
    token_id: ModalToken | None = None
    token_secret: ModalToken | None = None

    @field_validator("min_containers")
    @classmethod
    def _warm_or_zero(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError(
                f"must be 1 (always warm, ~1 container billed all the time) or 0 (scale to zero: "
                f"cold start on the first request), got {value}; maxContainers is 1, so more cannot run"
            )
        return value

    @field_validator("max_containers")
    @classmethod
    def _single_writer(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                f"must be 1, got {value}: the agent server keeps its state in files and two containers "
                "on one volume serve stale catalogs and 404s; add tenants to scale out"
            )
        return value

    @field_validator("app_name", "volume_name")
    @classmethod
    def _modal_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        limit = _modal_base_limit(info.field_name)
        if not re.match(_MODAL_NAME, value):
            raise ValueError(
                f"{value!r} is not a Modal name: use letters, digits, '-', '_' or '.', starting with a "
                "letter or digit"
            )
        if len(value) > limit:
            raise ValueError(
                f"{value!r} is {len(value)} characters; at most {limit}, so that the per-tenant names "
                f"stay within Modal's {MODAL_NAME_MAX}"
            )
        if re.match(r"^[a-z]{2}-[a-zA-Z0-9]{22}$", value):
            raise ValueError(f"{value!r} looks like a Modal object id; choose a name")
        return value

    @model_validator(mode="after")
    def _token_pair(self) -> ModalSettings:
        if (self.token_id is None) != (self.token_secret is None):
            raise ValueError(
                "set both tokenId and tokenSecret, or neither (then MODAL_TOKEN_ID/SECRET are used)"
            )
        return self

    def _base(self, field: str) -> str:
        explicit = getattr(self, field)
        if explicit is not None:
            return explicit
        suffix = ("state",) if field == "volume_name" else ()
        return contract.global_name(
            pulumi.get_project(), pulumi.get_stack(), *suffix,
            max_length=_modal_base_limit(field), invalid=r"[^A-Za-z0-9._-]",
        )

    def app_for(self, tenant: str) -> str:
        return f"{self._base('app_name')}-{tenant}"

    def secret_for(self, tenant: str) -> str:
        return f"{self._base('app_name')}-{tenant}-keys"

    def volume_for(self, tenant: str) -> str:
        return f"{self._base('volume_name')}-{tenant}"

    @property
    def canvas_ui_path(self) -> str:
        from pathlib import Path

        path = Path(self.canvas_ui_dir)
        return str(path if path.is_absolute() else contract.PROJECT_ROOT / path)

    def check_stack(self, cfg: StackConfig) -> list[str]:
        """Checks that need the disk: the Canvas UI tool must exist to be baked into the image."""
        problems = []
        if self.canvas_ui:
            from pathlib import Path

            tool = Path(self.canvas_ui_path) / "canvas_ui_tool.py"
            if not tool.is_file():
                problems.append(
                    f"  - {NAMESPACE}:modal.canvasUi: needs the Agent Canvas UI tool at {tool} "
                    "(set modal.canvasUiDir to the directory holding canvas_ui_tool.py, or canvasUi: false)"
                )
        return problems
