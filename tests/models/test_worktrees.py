"""Conversation worktrees live on the data volume (OH_CONVERSATION_WORKTREE_ROOT), shown
with the real agent server: a conversation started with ``worktree: true`` on a git
workspace works in a git worktree under that root, and the agent's uncommitted edits there
survive a restart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from components import contract
from tests.harness.agent_server import ensure_agent_server, http

ROOT_ENV = "OH_CONVERSATION_WORKTREE_ROOT"
SESSION_KEY = "k" * 40


def git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.email=test@example.com", "-c", "user.name=test"]
    return subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True,
                          text=True).stdout


def test_the_servers_own_default_is_outside_the_volume():
    """Why the contract sets it: the server's default root is under /tmp."""
    python = ensure_agent_server().parent / "python"
    code = ("from openhands.agent_server.config import Config; "
            "print(Config.model_fields['conversation_worktree_root'].default)")
    # The contract's litellm setting: without it the import races litellm's cost-map fetch.
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": contract.PLAIN_ENV["LITELLM_LOCAL_MODEL_COST_MAP"]}
    default = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                             env=env, timeout=120).stdout.strip().splitlines()[-1]
    assert default == "/tmp/conversation-worktrees"
    assert not default.startswith(contract.DATA_DIR + "/")
    root = contract.STATE_ENV[ROOT_ENV]
    assert root.startswith(contract.DATA_DIR + "/") and root in contract.state_paths()
    # Not inside the default workspace (a repo there would list worktrees as untracked files).
    assert not root.startswith(contract.STATE_ENV["OH_WORKSPACE_PATH"] + "/")
    assert contract.container_env()[ROOT_ENV] == root


def bash(server, cid: str, command: str) -> tuple[int, str]:
    """Run ``command`` through the server, in the conversation's workspace (its worktree)."""
    status, text = http("POST", f"{server.url}/api/conversations/{cid}/bash/execute_bash_command",
                        {contract.AUTH_HEADER: SESSION_KEY}, {"command": command, "timeout": 60}, timeout=90)
    assert status == 200, text
    out = json.loads(text)
    return out["exit_code"], (out.get("stdout") or "") + (out.get("stderr") or "")


def test_worktree_edits_survive_a_restart(start_agent_server, tmp_path: Path):
    env = {**contract.container_env(), "OH_SESSION_API_KEYS_0": SESSION_KEY, "OH_SECRET_KEY": "s" * 40}
    workdir = tmp_path / "volume"  # reused by the second start, as a volume would be
    server = start_agent_server(env, contract.args(), workdir, tmp=tmp_path / "tmp-first")
    data = workdir / "data"
    repo = data / Path(contract.STATE_ENV["OH_WORKSPACE_PATH"]).relative_to(contract.DATA_DIR)
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")

    headers = {contract.AUTH_HEADER: SESSION_KEY}
    body = {
        # No LLM call is made: the conversation is only created.
        "agent": {"llm": {"model": "openai/gpt-4o", "api_key": "sk-unused"}, "tools": []},
        "workspace": {"kind": "LocalWorkspace", "working_dir": str(repo)},
        "worktree": True,
    }
    status, text = http("POST", server.url + "/api/conversations", headers, body, timeout=60)
    assert status == 201, text
    created = json.loads(text)
    cid = created["id"]
    working_dir = Path(created["workspace"]["working_dir"])
    # The conversation's working directory is its worktree, under the root in the volume.
    mapped_root = data / Path(contract.STATE_ENV[ROOT_ENV]).relative_to(contract.DATA_DIR)
    assert working_dir == mapped_root / cid / repo.name
    assert git(working_dir, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"openhands/{cid}"

    # The edit is made by the server, in the conversation's workspace (the worktree): uncommitted work.
    code, out = bash(server, cid, "printf \"print('work in progress')\\n\" > agent-edit.py && pwd")
    assert code == 0 and out.strip() == str(working_dir), out
    assert (working_dir / "agent-edit.py").read_text() == "print('work in progress')\n"

    # A restart: SIGTERM, then a new process with a new TMPDIR on the same volume.
    first_pid = server.pid
    server.stop()
    assert server.process.returncode is not None
    again = start_agent_server(env, contract.args(), workdir, tmp=tmp_path / "tmp-second")
    assert again.pid != first_pid and again.env["TMPDIR"] != server.env["TMPDIR"]
    status, text = again.get(f"/api/conversations/{cid}", key=SESSION_KEY)
    assert status == 200, text
    assert json.loads(text)["workspace"]["working_dir"] == str(working_dir)
    # Read back through the new server: the file, and git's view of the worktree.
    status, text = http("GET", f"{again.url}/api/conversations/{cid}/file/download?path={working_dir}/agent-edit.py",
                        headers)
    assert (status, text) == (200, "print('work in progress')\n")
    code, out = bash(again, cid, "git status --porcelain && git rev-parse --abbrev-ref HEAD")
    assert code == 0 and out.splitlines() == ["?? agent-edit.py", f"openhands/{cid}"], out
    # The main repo does not see the worktree as its own files.
    assert git(repo, "status", "--porcelain") == ""
