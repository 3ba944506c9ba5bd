"""The test-only random stand-in (tests/harness/random_standin, built by ``scripts/random-standin``), real engine.

The real pulumi-random plugin cannot be downloaded or built here (the Go module proxy refuses its modules),
so the tests that need ``pulumi_random.RandomPassword`` put this stand-in on PATH as
``pulumi-resource-random``. These tests hold it to what our program relies on: the real CLI (``scripts/engine``)
runs an inline Automation API program with a local file backend and passphrase secrets, and the password
has the asked length and characters, is a secret in the outputs and the state, stays the same when nothing
changed, is replaced when an input (``length``, ``keepers``) changes, and is destroyed.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.harness.real_engine"]

ROOT = Path(__file__).resolve().parents[3]
STANDIN_SCRIPT = ROOT / "scripts" / "random-standin"
PROJECT = "random-standin-test"
PASSPHRASE = "random-standin-test"
# How the engine marks a secret value in the state (its ciphertext sits next to it).
SECRET_SIG, SECRET_SIG_VALUE = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


@pytest.fixture(scope="session")
def random_standin_bin(pulumi_bin: Path) -> Path:
    """The directory holding the stand-in `pulumi-resource-random` (built once, then cached)."""
    from tests.harness.real_engine import unavailable  # registered as a plugin above; imported here, once loaded

    try:
        proc = subprocess.run(["bash", str(STANDIN_SCRIPT)], capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable(f"scripts/random-standin did not run: {exc}")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not (Path(lines[-1]) / "pulumi-resource-random").is_file():
        why = (proc.stderr.strip().splitlines() or ["scripts/random-standin failed"])[-1]
        unavailable(f"the random stand-in is not built: {why}")
    return Path(lines[-1])


@dataclass
class RandomStack:
    """One stack of an inline program on a file backend; ``run(program)`` sets what the next op runs."""

    stack: Any
    state_dir: Path
    plugin_dir: Path
    env: dict[str, str]
    log: list[str]

    def run(self, program: Callable[[], None]) -> None:
        self.stack.workspace.program = program

    def up(self) -> Any:
        return self.stack.up(on_output=self.log.append, color="never")

    def preview(self) -> Any:
        return self.stack.preview(on_output=self.log.append, color="never")

    def state_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(self.state_dir.rglob("*")) if p.is_file())

    def failing_up(self, kind: str) -> subprocess.CompletedProcess:
        """`up` of a program that the engine fails, in a fresh Python process (see _failing_up)."""
        pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, **self.env, "PYTHONPATH": pythonpath}
        return subprocess.run([sys.executable, "-m", "tests.real.engine.test_random_standin", kind],
                              cwd=self.stack.workspace.work_dir, env=env, capture_output=True, text=True, timeout=300)

    def checkpoint(self) -> dict[str, Any]:
        """The stack's checkpoint as the file backend stores it (secrets encrypted; `stack export` decrypts)."""
        path = self.state_dir / ".pulumi" / "stacks" / PROJECT / "test.json"
        return json.loads(path.read_text())["checkpoint"]


@pytest.fixture
def random_stack(pulumi_bin: Path, random_standin_bin: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[RandomStack]:
    from pulumi import automation as auto

    from tests.harness.real_engine import INHERITED, OFFLINE_ENV

    for name in (*INHERITED, "PULUMI_IGNORE_AMBIENT_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    env = {
        **OFFLINE_ENV,
        # The stand-in first: the engine takes `pulumi-resource-random` from PATH.
        "PATH": os.pathsep.join([str(random_standin_bin), str(pulumi_bin), os.environ.get("PATH", "")]),
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        "PULUMI_BACKEND_URL": state_dir.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "NO_COLOR": "1",
    }
    work = tmp_path / "work"
    work.mkdir()
    ws = auto.LocalWorkspace(
        work_dir=str(work), env_vars=env, secrets_provider="passphrase",
        pulumi_command=auto.PulumiCommand(root=str(pulumi_bin.parent), skip_version_check=True),
        project_settings=auto.ProjectSettings(name=PROJECT, runtime="python",
                                              backend=auto.ProjectBackend(state_dir.as_uri())),
    )
    ws.create_stack("test")
    stack = auto.Stack.select("test", ws)
    yield RandomStack(stack, state_dir, random_standin_bin, env, [])


def ops(summary: dict[Any, int]) -> dict[str, int]:
    """A change summary keyed by plain op names ("same", "create", "replace", ...)."""
    return {str(getattr(k, "value", k)): v for k, v in summary.items() if v}


def secret(outputs: dict[str, Any], name: str) -> str:
    assert outputs[name].secret, f"stack output {name!r} is not a secret"
    return outputs[name].value


def passwords_program(params: dict[str, Any]) -> Callable[[], None]:
    """Two passwords: `a` (its length and keepers come from params) and `b` (its own special characters)."""

    def program() -> None:
        import pulumi
        import pulumi_random as random

        a = random.RandomPassword("a", length=params["length"], special=False, min_numeric=4, min_upper=2,
                                  keepers=params["keepers"])
        b = random.RandomPassword("b", length=24, upper=False, override_special="_", min_special=3, min_lower=2)
        pulumi.export("a", a.result)
        pulumi.export("aHash", a.bcrypt_hash)
        pulumi.export("b", b.result)

    return program


def test_password_lifecycle_under_the_real_engine(random_stack: RandomStack) -> None:
    params: dict[str, Any] = {"length": 20, "keepers": {"rotation": "0"}}
    random_stack.run(passwords_program(params))

    # up: the asked length and characters, secret outputs, no plaintext in the state.
    first = random_stack.up()
    assert ops(first.summary.resource_changes) == {"create": 3}, random_stack.log  # the stack and 2 passwords
    # The engine ran the stand-in (an ambient plugin: the engine says so), with no version complaint.
    log = "".join(random_stack.log)
    assert f"using pulumi-resource-random from $PATH at {random_stack.plugin_dir}/pulumi-resource-random" in log
    assert "mismatch" not in log
    a, a_hash, b = secret(first.outputs, "a"), secret(first.outputs, "aHash"), secret(first.outputs, "b")
    assert len(a) == 20 and set(a) <= set(string.ascii_letters + string.digits), a
    assert sum(c.isdigit() for c in a) >= 4 and sum(c.isupper() for c in a) >= 2, a
    assert a_hash.startswith("$2a$10$"), a_hash
    assert len(b) == 24 and set(b) <= set(string.ascii_lowercase + string.digits + "_"), b
    assert b.count("_") >= 3 and sum(c.islower() for c in b) >= 2, b
    state = random_stack.state_bytes()
    assert b"random:index/randomPassword:RandomPassword" in state
    for plaintext in (a, a_hash, b):
        assert plaintext.encode() not in state
    resources = random_stack.checkpoint()["latest"]["resources"]
    passwords = [r for r in resources if r["type"] == "random:index/randomPassword:RandomPassword"]
    assert [r["id"] for r in passwords] == ["none", "none"]
    for r in passwords:  # secrets in the state are ciphertext under the passphrase
        for name in ("result", "bcryptHash"):
            assert r["outputs"][name].get(SECRET_SIG) == SECRET_SIG_VALUE and "ciphertext" in r["outputs"][name]
    # The real plugin's defaults, applied by Check and recorded as inputs.
    a_inputs = next(r["inputs"] for r in passwords if r["urn"].endswith("::a"))
    assert {k: a_inputs[k] for k in ("lower", "upper", "numeric", "number", "special", "minLower", "minSpecial")} \
        == {"lower": True, "upper": True, "numeric": True, "number": True, "special": False, "minLower": 0,
            "minSpecial": 0}

    # Nothing changed: the preview shows no changes and the passwords stay.
    preview = random_stack.preview()
    assert ops(preview.change_summary) == {"same": 3}, random_stack.log
    again = random_stack.up()
    assert ops(again.summary.resource_changes) == {"same": 3}
    assert (secret(again.outputs, "a"), secret(again.outputs, "b")) == (a, b)

    # A new length replaces `a` (only `a`).
    params["length"] = 32
    longer = random_stack.up()
    assert ops(longer.summary.resource_changes) == {"same": 2, "replace": 1}, random_stack.log
    a2 = secret(longer.outputs, "a")
    assert len(a2) == 32 and a2 != a
    assert secret(longer.outputs, "b") == b

    # A new keeper replaces it again, at the same length.
    params["keepers"] = {"rotation": "1"}
    rotated = random_stack.up()
    assert ops(rotated.summary.resource_changes) == {"same": 2, "replace": 1}, random_stack.log
    a3 = secret(rotated.outputs, "a")
    assert len(a3) == 32 and a3 not in (a, a2)

    # destroy removes every resource.
    gone = random_stack.stack.destroy(on_output=random_stack.log.append, color="never")
    assert ops(gone.summary.resource_changes) == {"delete": 3}
    assert not random_stack.checkpoint()["latest"].get("resources")


def test_bad_inputs_and_other_random_resources_fail_clearly(random_stack: RandomStack) -> None:
    too_short = random_stack.failing_up("too-short")
    assert too_short.returncode == 1, too_short.stdout + too_short.stderr
    assert "Attribute length value must be at least sum of min_upper + min_lower + min_numeric + min_special, " \
           "got: 3" in too_short.stderr
    other = random_stack.failing_up("random-string")
    assert other.returncode == 1, other.stdout + other.stderr
    assert "the test-only random stand-in implements only RandomPassword" in other.stderr


# --------------------------------------------------------------------------- failing ups, in a subprocess
# A failed inline `up` leaves the SDK's program coroutine unfinished in this process, and Python reports it
# whenever it is collected (in a later test, or at exit): those ups run in a fresh process instead.

FAILING_PROGRAMS = {
    "too-short": lambda random: random.RandomPassword("p", length=3, min_upper=2, min_lower=2),
    "random-string": lambda random: random.RandomString("s", length=8),
}


def _failing_up(kind: str) -> int:
    """`up` of FAILING_PROGRAMS[kind] on the stack in the current directory; the engine's error on stderr."""
    from pulumi import automation as auto

    def program() -> None:
        import pulumi_random as random

        FAILING_PROGRAMS[kind](random)

    # The workspace's Pulumi.yaml, backend, passphrase and PATH come from the fixture (cwd and env).
    ws = auto.LocalWorkspace(work_dir=os.getcwd(), program=program, secrets_provider="passphrase",
                             pulumi_command=auto.PulumiCommand(skip_version_check=True))
    try:
        auto.Stack.select("test", ws).up(color="never")
    except auto.errors.CommandError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_failing_up(sys.argv[1]))
