"""docs/configuration.md is the one reference for every ``openhands:*`` key, in step with the config models.

The page's convention: each ``## <block>`` heading names a block of the namespace by its path (``docker``,
``docker.vm``, ``kubernetes``, ...; ``## Top-level keys`` is the namespace itself), and ``###`` headings
below it only group its tables. A table whose header starts with ``key`` lists keys relative to its block,
in backticks in the first column, dotted where nested (``gateway.create``); ``<tenant>`` (any ``<name>``)
stands for a map key and ``[]`` for each item of a list (``tolerations[].key``).

Every key the models accept must have a row; an object key (``gateway``, ``tenantKeys``) may have one,
or a section. A row or a section for a key the models do not accept fails, and so does a key listed twice.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from components.config import StackConfig

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
TOP = "Top-level keys"
BLOCK = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
PLACEHOLDER = re.compile(r"<[^>]+>")


def _shape(annotation: typing.Any) -> tuple[str, type[BaseModel]] | None:
    """('', M) for a model M (Optional or not), ('[]', M) for a list of M, ('.<*>', M) for a dict of M."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    if origin is typing.Annotated:
        return _shape(args[0])
    if origin in (typing.Union, types.UnionType):
        shapes = [s for s in (_shape(a) for a in args if a is not type(None)) if s]
        return shapes[0] if shapes else None
    if origin in (list, tuple, set, frozenset) and args:
        inner = _shape(args[0])
        return ("[]" + inner[0], inner[1]) if inner else None
    if origin is dict and len(args) == 2:
        inner = _shape(args[1])
        return (".<*>" + inner[0], inner[1]) if inner else None
    return None


def model_keys(model: type[BaseModel] = StackConfig, prefix: str = "") -> tuple[set[str], set[str]]:
    """(leaf keys, object keys) the model accepts, as dotted camelCase paths."""
    leaves: set[str] = set()
    objects: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        shape = _shape(field.annotation)
        if shape is None:
            leaves.add(path)
            continue
        suffix, nested = shape
        objects.add(path)
        if suffix.startswith(".<*>"):
            objects.add(path + ".<*>")
        sub_leaves, sub_objects = model_keys(nested, path + suffix + ".")
        leaves |= sub_leaves
        objects |= sub_objects
    return leaves, objects


def documented_keys(text: str) -> tuple[list[str], set[str], list[str]]:
    """(keys of the tables' rows, in page order; the blocks the sections name; problems with the page's shape)."""
    rows: list[str] = []
    sections: set[str] = set()
    problems: list[str] = []
    block: str | None = None
    heading = ""
    in_table = in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        if line.startswith("## "):
            heading = line[3:].strip()
            name = heading.strip("`")
            block = "" if heading == TOP else name if BLOCK.match(name) else None
            if block:
                sections.add(block)
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]
        if not in_table:
            in_table = cells[0] == "key"
            if in_table and block is None:
                problems.append(f"line {number}: a key table under '## {heading}', which names no config block")
            continue
        if set(cells[0]) <= set("-: "):
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        if not keys:
            problems.append(f"line {number}: first cell {cells[0]!r} holds no `key`")
        rows += [f"{block}.{key}" if block else key for key in keys]
    return rows, sections, problems


def _normal(key: str) -> str:
    return PLACEHOLDER.sub("<*>", key)


def test_configuration_page_documents_every_key_and_nothing_else() -> None:
    leaves, objects = model_keys()
    rows, sections, problems = documented_keys(PAGE.read_text())
    documented = {_normal(k) for k in rows}
    twice = sorted({k for k in rows if [_normal(r) for r in rows].count(_normal(k)) > 1})
    missing = sorted(leaves - documented)
    unknown = sorted((documented | sections) - leaves - objects)
    report = []
    if missing:
        report.append("keys the config models accept but docs/configuration.md does not document:\n  "
                      + "\n  ".join(missing))
    if unknown:
        report.append("keys docs/configuration.md documents that the config models do not accept:\n  "
                      + "\n  ".join(unknown))
    if twice:
        report.append("keys documented more than once (one source per text):\n  " + "\n  ".join(twice))
    if problems:
        report.append("tables the test cannot read:\n  " + "\n  ".join(problems))
    assert not report, "\n".join(report)


def test_the_walk_sees_nested_lists_and_maps() -> None:
    """Guards the test itself: a walk that stopped at the top would pass an empty page."""
    leaves, objects = model_keys()
    for key in ("model", "docker.vm.adminCidrs", "kubernetes.gateway.create", "kubernetes.egress.allowDns",
                "kubernetes.tolerations[].tolerationSeconds", "tenantKeys.<*>.sessionApiKey",
                "promotion.emergencyOverride.reason", "modal.tokenSecret", "ecs.sslPolicy"):
        assert key in leaves, key
    assert {"docker", "docker.vm", "kubernetes.tls", "tenantKeys", "tenantKeys.<*>"} <= objects


def test_no_other_page_keeps_a_config_table() -> None:
    """The model pages link to docs/configuration.md instead of keeping their own key table."""
    others = [p for p in sorted((ROOT / "docs").glob("*.md")) if p != PAGE] + [ROOT / "README.md"]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in others
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.match(r"^\|\s*key\s*\|", line)]
    assert not found, f"config key tables outside docs/configuration.md: {found}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_the_configuration_page_resolve() -> None:
    anchors = {_anchor(line.lstrip("#")) for line in PAGE.read_text().splitlines() if line.startswith("#")}
    broken = []
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        text = page.read_text()
        links = re.findall(r"\]\((?:docs/)?configuration\.md#([^)\s]+)\)", text)
        if page == PAGE:
            links += re.findall(r"\]\(#([^)\s]+)\)", text)
        broken += [f"{page.relative_to(ROOT)}: #{a}" for a in links if a not in anchors]
    assert not broken, f"links to missing anchors of docs/configuration.md: {broken}"
