"""Config warnings and refusals under the real Pulumi engine (the CLI from ``scripts/engine``).

The render-harness tests (tests/config/test_config_errors.py) show what the program logs; this shows that a
real ``pulumi preview`` prints it. The preview itself ends at the first provider resource (no provider
plugins can be built here, see tests/real/engine/test_engine.py), after the config was parsed and logged.
"""

from __future__ import annotations

import pytest
import yaml

pytest_plugins = ["tests.harness.real_engine"]


def test_preview_prints_the_unpinned_image_warning(engine_project) -> None:
    path = engine_project.stack_file("local")
    data = yaml.safe_load(path.read_text())
    data["config"]["openhands:image"] = "ghcr.io/openhands/agent-server:latest"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = engine_project.helper("program-preview", "local")
    text = proc.stdout + proc.stderr
    assert "openhands:image: 'ghcr.io/openhands/agent-server:latest' uses the moving tag 'latest'" in text, text
    assert "Traceback" not in text


def test_preview_of_a_prod_stack_refuses_an_unpinned_image(engine_project) -> None:
    """A stack named prod is prod: the image is refused before anything is registered."""
    local = yaml.safe_load(engine_project.stack_file("local").read_text())
    local["config"]["openhands:image"] = "ghcr.io/openhands/agent-server"
    engine_project.stack_file("production").write_text(yaml.safe_dump(local, sort_keys=False))
    proc = engine_project.helper("program-preview", "production")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "openhands:image: 'ghcr.io/openhands/agent-server' has no tag" in text, text
    assert "Traceback" not in text
    assert engine_project.resources("production") == []


# What the real CLI (3.259.0) does with these on its own: keeps the last of two keys, reads 0443 as
# 291 (a valid port) and `yes` as true, all without a word. The program reads the tracked stack file
# strictly (components/config/stackfile.py), so each is one message and nothing is registered.
STRICT_CASES = {
    "duplicate key": ("  openhands:tenants: [a]\n  openhands:tenants: [b]\n",
                      "line 6, column 3: duplicate key 'openhands:tenants' (first at line 5)"),
    "both spellings": ("  openhands:tenants: [a]\n  tenants: [b]\n",
                       "'tenants' is openhands:tenants again (first at line 5"),
    "octal-looking port": ("  openhands:retainData: true\n  openhands:x: 0443\n",
                           "0443 looks octal: Pulumi (YAML 1.1) reads it as 291"),
    "yes": ("  openhands:retainData: yes\n", "'yes' is read as true by Pulumi (YAML 1.1)"),
}


@pytest.mark.parametrize("case", STRICT_CASES)
def test_preview_reads_the_stack_file_strictly(engine_project, case: str) -> None:
    extra, expected = STRICT_CASES[case]
    engine_project.stack_file("local").write_text(
        "config:\n  openhands:model: docker\n  openhands:docker:\n    httpsPort: 8443\n" + extra
    )
    proc = engine_project.helper("program-preview", "local")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in text and "Traceback" not in text, text
    assert engine_project.resources("local") == []


def test_operator_preview_names_the_duplicate_key(engine_project) -> None:
    """Before: `pulumi config` under the operator failed with a bare "yaml: unmarshal errors:"."""
    engine_project.stack_file("local").write_text(
        "config:\n  openhands:model: docker\n  openhands:tenants: [a]\n  openhands:tenants: [b]\n"
    )
    proc = engine_project.openhands("preview", "-s", "local")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "line 4, column 3: duplicate key 'openhands:tenants' (first at line 3)" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
