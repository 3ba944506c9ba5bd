"""The `local` stack: the Docker model on the local engine, rendered and then run for real."""

from __future__ import annotations

import shutil
import subprocess

from components import contract
from components.docker import local
from openhands_cli.render import Rendered, imported_sdks_for, render
from tests.harness import env_of
from tests.harness.agent_server import free_port
from tests.harness.caddy_proxy import served_caddyfile

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"

STACK = "local"


def agent_containers(rendered: Rendered) -> list:
    return [c for c in rendered.of_type(CONTAINER) if {"label": "dev.openhands.role", "value": contract.ROLE}
            in c.inputs.get("labels", [])]


def test_keys_are_never_plain(three: Rendered):
    keys = three.outputs["apiKey"]
    assert set(keys) == {"alice", "bob", "carol"} and len(set(keys.values())) == 3
    servers = agent_containers(three)
    assert len(servers) == 3
    for c in servers:
        assert c.is_secret("envs"), f"{c.name}: env holding keys is not a Pulumi secret"
        # What the policy engine can see of it (a secret value reaches a policy unmarked): the declaration.
        assert c.additional_secret_outputs == ["envs"], c.name
    # No key value appears anywhere outside a secret input.
    for res in three.resources:
        plain = {k: v for k, v in res.inputs.items() if not res.is_secret(k)}
        text = repr(plain)
        for key in keys.values():
            assert key not in text, f"{res.type} {res.name} carries a key in plain inputs"
    assert "apiKey" in three.secret_outputs
    assert "secretKeys" in three.secret_outputs
    assert "url" not in three.secret_outputs


def test_each_tenant_has_its_own_server_keys_and_volume(three: Rendered):
    servers = agent_containers(three)
    assert len(servers) == 3
    volumes = {c.inputs["volumes"][0]["volumeName"] for c in servers}
    assert len(volumes) == 3
    envs = [env_of(c) for c in servers]
    assert len({e["OH_SESSION_API_KEYS_0"] for e in envs}) == 3
    assert len({e["OH_SECRET_KEY"] for e in envs}) == 3


def test_container_follows_the_contract(one: Rendered):
    (server,) = agent_containers(one)
    env = env_of(server)
    assert server.inputs["command"] == contract.args()
    assert server.inputs["user"] == f"{contract.UID}:{contract.GID}"
    assert server.inputs["restart"] == "unless-stopped"
    # Every state path lives inside the one mounted volume.
    (mount,) = server.inputs["volumes"]
    assert mount["containerPath"] == contract.DATA_DIR
    for name in contract.STATE_ENV:
        assert env[name].startswith(contract.DATA_DIR + "/"), name
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["OH_SESSION_API_KEYS_0"].strip() and env["OH_SECRET_KEY"].strip()
    hc = server.inputs["healthcheck"]
    assert hc["tests"] == local.healthcheck().tests  # the contract's check, start-aware (tests/models/test_rollout.py)
    assert contract.HEALTHCHECK_SCRIPT in hc["tests"][-1]
    assert hc["startPeriod"] == f"{contract.STARTUP_BUDGET_SECONDS}s"
    assert server.inputs["capabilities"]["drops"] == ["ALL"]


def test_only_caddy_is_published(one: Rendered):
    published = [c for c in one.of_type(CONTAINER) if c.inputs.get("ports")]
    assert [c.name for c in published] == ["docker-proxy-caddy"]
    ports = {p["external"] for p in published[0].inputs["ports"]}
    assert ports == {8443, 8080}
    assert one.outputs["url"] == {"default": "https://default.localhost:8443"}


def test_volumes_survive_destroy_unless_opted_out(one: Rendered):
    assert all(v.retain_on_delete for v in one.of_type(VOLUME))
    opted_out = render("local", overrides={"retainData": False})
    assert not any(v.retain_on_delete for v in opted_out.of_type(VOLUME))


def test_image_pinned_and_exported(one: Rendered):
    image = one.one("docker:index/remoteImage:RemoteImage", "docker-agent-image")
    assert image.inputs["name"] == contract.DEFAULT_IMAGE
    assert one.outputs["image"] == contract.DEFAULT_IMAGE
    assert one.outputs["contractVersion"] == contract.CONTRACT_VERSION


def test_local_program_imports_no_cloud_sdk():
    out = imported_sdks_for("local")
    assert "pulumi_docker" in out
    assert "pulumi_aws" not in out and "pulumi_kubernetes" not in out and "modal" not in out


def test_secret_keys_export_matches_what_the_server_gets(three: Rendered):
    # What a user saves before `destroy` must be exactly what decrypts the volume.
    for c in agent_containers(three):
        tenant = c.inputs["name"].rsplit("-", 1)[-1]
        assert three.outputs["secretKeys"][tenant] == [env_of(c)["OH_SECRET_KEY"]]


def test_rotation_keeps_the_previous_keys():
    env0 = env_of(agent_containers(render("local"))[0])
    env1 = env_of(agent_containers(render("local", overrides={"keys": {"rotation": 1}}))[0])
    env2 = env_of(agent_containers(render("local", overrides={"keys": {"rotation": 2}}))[0])
    assert env1["OH_SESSION_API_KEYS_0"] != env0["OH_SESSION_API_KEYS_0"]
    assert env1["OH_SESSION_API_KEYS_1"] == env0["OH_SESSION_API_KEYS_0"]
    assert env1["OH_PREVIOUS_SECRET_KEYS_0"] == env0["OH_SECRET_KEY"]
    assert env2["OH_SESSION_API_KEYS_1"] == env1["OH_SESSION_API_KEYS_0"]
    assert "OH_SESSION_API_KEYS_2" not in env2  # only one previous session key stays valid
    assert [env2["OH_PREVIOUS_SECRET_KEYS_0"], env2["OH_PREVIOUS_SECRET_KEYS_1"]] == [
        env1["OH_SECRET_KEY"], env0["OH_SECRET_KEY"]]


# ----------------------------------------------------------------- the real agent server


def test_real_server_with_rendered_env(one: Rendered, start_agent_server, tmp_path):
    (server_spec,) = agent_containers(one)
    env = env_of(server_spec)
    server = start_agent_server(env, server_spec.inputs["command"])
    assert server.ready_after < contract.STARTUP_BUDGET_SECONDS
    key = env["OH_SESSION_API_KEYS_0"]
    assert server.get("/api/conversations/count")[0] == 401
    assert server.get("/api/conversations/count", key="wrong")[0] == 401
    assert server.get("/api/conversations/count", key=key) == (200, "0")
    assert server.get(contract.LIVENESS_PROBE.path)[0] == 200

    # The rendered Docker healthcheck, run as the engine would (port moved to loopback).
    tests = server_spec.inputs["healthcheck"]["tests"]
    assert tests[:3] == ["CMD", "bash", "-c"]
    # Its "has been ready" mark moved out of the host's /dev/shm; once set, the steady-state sleep shortened.
    mark, rest = tmp_path / "ready", contract.HEALTHCHECK_INTERVAL_SECONDS - local.STARTING_PROBE_SECONDS
    probe = tests[3].replace(local.READY_MARK, str(mark)).replace(f"sleep {rest};", "sleep 0;")
    script = probe.replace(f"/{contract.PORT} ", f"/{server.port} ")
    assert subprocess.run(["bash", "-c", script], timeout=10).returncode == 0
    assert mark.exists()
    dead = probe.replace(f"/{contract.PORT} ", f"/{free_port()} ")
    assert subprocess.run(["bash", "-c", dead], timeout=10, capture_output=True).returncode != 0

    # State lands in the volume, not in the container's HOME.
    server.stop()
    data = server.workdir / "data"
    assert (data / "conversations").is_dir()


def test_secret_key_rotation_keeps_stored_secrets(start_agent_server, tmp_path):
    from tests.harness.agent_server import http

    def spec(rotation: int):
        (c,) = agent_containers(render("local", overrides={"keys": {"rotation": rotation}}))
        return env_of(c), c.inputs["command"]

    volume = tmp_path / "volume"  # one state volume across restarts, as on the engine
    env0, args = spec(0)
    s0 = start_agent_server(env0, args, workdir=volume)
    put = http("PUT", s0.url + "/api/settings/secrets", {contract.AUTH_HEADER: env0["OH_SESSION_API_KEYS_0"]},
               {"name": "GITHUB_TOKEN", "value": "ghp_before_rotation"})
    assert put[0] == 200, put
    s0.stop()
    control = tmp_path / "control"
    shutil.copytree(volume / "data", control / "data")  # the same state, for the control below

    env1, args = spec(1)
    s1 = start_agent_server(env1, args, workdir=volume)
    new, old = env1["OH_SESSION_API_KEYS_0"], env0["OH_SESSION_API_KEYS_0"]
    assert s1.get("/api/settings/secrets/GITHUB_TOKEN", key=new) == (200, "ghp_before_rotation")
    # Clients still holding the previous session key keep working until the next rotation.
    assert s1.get("/api/conversations/count", key=old)[0] == 200
    s1.stop()

    # Control: the new key without the previous secret key, on the same pre-rotation state,
    # loses the stored secret; that is what the contract's OH_PREVIOUS_SECRET_KEYS_0 prevents.
    broken = {k: v for k, v in env1.items() if not k.startswith("OH_PREVIOUS_SECRET_KEYS")}
    s2 = start_agent_server(broken, args, workdir=control)
    assert s2.get("/api/settings/secrets/GITHUB_TOKEN", key=new)[0] == 404


def test_real_tls_through_rendered_caddy(start_agent_server, run_caddy):
    https_port, http_port = free_port(), free_port()
    rendered = render("local", overrides={"docker.httpsPort": https_port, "docker.httpPort": http_port})
    (spec,) = agent_containers(rendered)
    env = env_of(spec)
    server = start_agent_server(env, spec.inputs["command"])
    host = "default.localhost"
    proxy = run_caddy(served_caddyfile(rendered),
                      upstreams={f"agent-default:{contract.PORT}": f"127.0.0.1:{server.port}"}, wait_for_cert=host)
    assert rendered.outputs["url"]["default"] == f"https://{host}:{https_port}"

    ca = proxy.internal_root
    assert proxy.https(host, "/ready", ca) == (200, '{"status":"ready"}')
    key = env["OH_SESSION_API_KEYS_0"]
    assert proxy.https(host, "/api/conversations/count", ca)[0] == 401
    assert proxy.https(host, "/api/conversations/count", ca, {contract.AUTH_HEADER: key}) == (200, "0")
    status, location = proxy.http(host, "/ready")
    assert status in (301, 308)
    assert location == f"https://{host}:{https_port}/ready"
