"""Shared value types: tenant names, domains, image references, CIDRs, keys, and the strict base model."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

# --------------------------------------------------------------------------- types

_TENANT_RE = re.compile(r"^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# registry/name[:tag][@sha256:digest], the grammar of docker/distribution's reference package.
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

# Every ``pattern=`` constraint in these models is registered here with words and an example:
# pydantic's own message ("String should match pattern '^...$'") would show the user a regex.
# tests/config/test_config_errors.py walks the models and fails on a pattern missing from this table.
PATTERN_WORDS: dict[str, tuple[str, str]] = {}


def pattern(regex: str, words: str, example: str) -> str:
    PATTERN_WORDS[regex] = (words, example)
    return regex


VPC_ID = pattern(r"^vpc-[0-9a-f]{8,17}$", "a VPC id: 'vpc-' and 8 or 17 hex digits", "vpc-0123456789abcdef0")
SUBNET_ID = pattern(
    r"^subnet-[0-9a-f]{8,17}$", "a subnet id: 'subnet-' and 8 or 17 hex digits", "subnet-0123456789abcdef0"
)
HOSTED_ZONE_ID = pattern(
    r"^Z[0-9A-Z]{1,32}$",
    "a Route 53 hosted zone id: 'Z' and up to 32 uppercase letters or digits, without '/hostedzone/'",
    "Z0123456789ABCDEFGHIJ",
)


def _tenant(value: str) -> str:
    if not _TENANT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid tenant name: use 1-20 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-' (it becomes a hostname and resource names)"
        )
    return value


def _domain(value: str) -> str:
    value = value.lower().rstrip(".")
    if not _DOMAIN_RE.match(value):
        raise ValueError(
            f"{value!r} is not a DNS domain: dot-separated labels of lowercase letters, digits and '-', "
            "e.g. agents.example.com"
        )
    return value


def valid_image_ref(value: str) -> str:
    if not _IMAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not an image reference; expected registry/name:tag or registry/name@sha256:<digest>"
        )
    return value


def image_parts(ref: str) -> tuple[str | None, str, str | None, str | None]:
    """(registry, repository, tag, digest) of an image reference; registry None when it names none.

    Docker's rule: the first path component is a registry when it has a '.' or ':' or is 'localhost'."""
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    if ":" in name[slash + 1 :]:
        name, tag = name.rsplit(":", 1)
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag, digest or None
    return None, name, tag, digest or None


def image_issues(ref: str) -> tuple[str | None, str | None]:
    """(why it is not pinned, why it names no registry); each None when fine."""
    registry, repo, tag, digest = image_parts(ref)
    unpinned = None
    if digest is None and tag is None:
        unpinned = "has no tag, so it means ':latest', which moves"
    elif digest is None and tag.lower() == "latest":
        unpinned = f"uses the moving tag {tag!r}"
    elif digest is None and not any(ch.isdigit() for ch in tag):
        # The policy pack's image-pinned rule too: a tag without a version (main, stable) moves.
        unpinned = f"uses the tag {tag!r}, which names no version and moves"
    bare = None
    if registry is None:
        full = f"docker.io/{repo if '/' in repo else 'library/' + repo}"
        bare = f"names no registry, so it silently means Docker Hub ({full}); write the registry out"
    return unpinned, bare


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None


def _bind_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address of this host; use e.g. 127.0.0.1 (this machine only), "
            "192.168.1.20 (one LAN interface) or 0.0.0.0 (every interface)"
        ) from None


def _not_blank(reason: str) -> Any:
    """A validator refusing an empty or whitespace secret, with the reason that matters for this value."""

    def check(value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(f"must not be empty or whitespace ({reason})")
        return value

    return AfterValidator(check)


# Supplied keys shorter than this are refused: a short key can be guessed or brute-forced
# (the generated ones have 48 characters).
MIN_KEY_LENGTH = 32


def _strong_key(value: SecretStr) -> SecretStr:
    n = len(value.get_secret_value().strip())
    if n < MIN_KEY_LENGTH:
        raise ValueError(
            f"is {n} characters; a supplied key needs at least {MIN_KEY_LENGTH} (a shorter one can be "
            "brute-forced); generate one with `openssl rand -hex 32`"
        )
    return value


TenantName = Annotated[str, AfterValidator(_tenant)]
Domain = Annotated[str, AfterValidator(_domain)]
ImageRef = Annotated[str, AfterValidator(valid_image_ref)]
Cidr = Annotated[str, AfterValidator(_cidr)]
BindAddress = Annotated[str, AfterValidator(_bind_address)]
# A supplied session or secret key: never empty, never short.
SuppliedKey = Annotated[
    SecretStr, _not_blank("an empty key disables authentication or encryption"), AfterValidator(_strong_key)
]
KubeconfigSecret = Annotated[
    SecretStr,
    _not_blank("remove the key to use the ambient kubeconfig: KUBECONFIG or ~/.kube/config"),
]
ModalToken = Annotated[
    SecretStr,
    _not_blank("remove tokenId and tokenSecret to use MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml"),
]


class ConfigModel(BaseModel):
    """Base: camelCase keys in the stack file, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, hide_input_in_errors=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bools_are_bools(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read true as 1 for a number, and 1 or "yes" as true for a switch; in a
        # stack file either is a mistake, so only true/false are switches and never numbers.
        if value is None or not info.field_name:
            return value
        import typing

        annotation = cls.model_fields[info.field_name].annotation
        kinds = set(typing.get_args(annotation)) | {annotation}
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError(f"is {str(value).lower()} (a boolean); expected a number")
        if not isinstance(value, bool) and bool in kinds and kinds <= {bool, type(None), annotation}:
            raise ValueError(f"is {value!r}; expected true or false")
        return value


# --------------------------------------------------------------------------- shared


class Resources(ConfigModel):
    """CPU (vCPU) and memory (MiB) for each agent server."""

    cpu: float = Field(1.0, gt=0, le=16)
    memory: int = Field(2048, ge=512, le=122880)


class Keys(ConfigModel):
    """Key rotation. Raise ``rotation`` by exactly one to rotate every tenant's keys."""

    rotation: int = Field(0, ge=0, le=1000)


class SuppliedKeys(ConfigModel):
    """Keys given as secret config instead of generated ones."""

    session_api_key: SuppliedKey
    secret_key: SuppliedKey
    previous_session_api_key: SuppliedKey | None = None
    previous_secret_keys: list[SuppliedKey] = []
