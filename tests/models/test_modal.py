"""The `modal` stack: rendered, the Modal app built offline with the real modal library,
the dynamic provider driven directly with only its Modal boundary stubbed, and the
container's env fed to the real agent server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dill
import modal
import pulumi
import pytest
from modal._utils.async_utils import synchronizer
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config as DynamicConfig
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

from components import contract
from components.config import ConfigError
from components.modal.app import (
    STARTUP_TIMEOUT_ENV,
    WEB_PORT_ENV,
    AgentServer,
    AppSpec,
    build_app,
    image_env,
)
from components.modal.deploy import ModalAppProvider, ModalClient
from openhands_cli import render as r
from openhands_cli.render import Rendered, imported_sdks_for, render
from tests.harness.agent_server import ROOT

APP = "pulumi-python:dynamic/modal:App"
COMPONENT = "openhands:modal:ModalApp"

STACK = "modal"


def provider_props(res: r.Resource) -> dict[str, Any]:
    """The inputs as the engine hands them to the provider: secrets still wrapped."""
    return {k: v for k, v in res.raw_inputs.items() if k != "__provider"}


class FakeModal(ModalClient):
    """The boundary, stubbed: records every call, talks to nobody."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.secrets: dict[str, dict[str, str]] = {}

    def put_secret(self, name, env, environment):
        self.secrets[name] = dict(env)
        self.calls.append(("put_secret", name, environment))

    def ensure_volume(self, name, environment):
        self.calls.append(("ensure_volume", name, environment))

    def deploy(self, app, name, environment, tag):
        assert isinstance(app, modal.App) and app.name == name
        self.calls.append(("deploy", name, environment))
        return f"https://ws--{name}-agentserver-serve.modal.run"

    def stop(self, name, environment):
        self.calls.append(("stop", name, environment))

    def delete_volume(self, name, environment):
        self.calls.append(("delete_volume", name, environment))

    def delete_secret(self, name, environment):
        self.calls.append(("delete_secret", name, environment))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def provider() -> tuple[ModalAppProvider, FakeModal]:
    p, fake = ModalAppProvider(), FakeModal()
    p.client = fake
    return p, fake


class ModalNetwork:
    """Modal's control-plane gRPC stub, stubbed: the only thing replaced under the real ``ModalClient``
    and modal's own classes. Records every RPC with its request; answers the ones a test expects,
    ``missing`` lookups with modal's NotFoundError (what the real stub raises on NOT_FOUND)."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        from google.protobuf import empty_pb2
        from modal_proto import api_pb2

        self.calls: list[tuple[str, Any]] = []
        self.missing = missing
        method = api_pb2.FunctionHandleMetadata(function_name="AgentServer.serve", is_method=True,
                                                use_method_name="serve", web_url="https://ws--app-serve.modal.run")
        self.answers = {
            "AppGetOrCreate": api_pb2.AppGetOrCreateResponse(app_id="ap-1"),
            "AppStop": empty_pb2.Empty(),
            "VolumeGetOrCreate": api_pb2.VolumeGetOrCreateResponse(volume_id="vo-1"),
            "VolumeDelete": empty_pb2.Empty(),
            "SecretGetOrCreate": api_pb2.SecretGetOrCreateResponse(secret_id="st-1"),
            "SecretDelete": empty_pb2.Empty(),
            "ClassGet": api_pb2.ClassGetResponse(class_id="cs-1"),
            "FunctionGet": api_pb2.FunctionGetResponse(
                function_id="fu-1",
                function=api_pb2.FunctionData(function_name="AgentServer.*", is_class=True, ranked_functions=[
                    api_pb2.FunctionData.RankedFunction(function=api_pb2.Function(function_name="AgentServer.*"))]),
                handle_metadata=api_pb2.FunctionHandleMetadata(function_name="AgentServer.*",
                                                               method_handle_metadata={"serve": method})),
        }

    def __getattr__(self, rpc: str):
        async def call(request, **_kw):
            from modal.exception import NotFoundError

            self.calls.append((rpc, request))
            if rpc in self.missing:
                raise NotFoundError(f"{rpc}: not found")
            if rpc not in self.answers:
                raise AssertionError(f"unexpected Modal RPC {rpc}({request})")
            return self.answers[rpc]

        return call

    def rpcs(self) -> list[str]:
        return [name for name, _ in self.calls]

    def request(self, rpc: str) -> Any:
        [req] = [r for name, r in self.calls if name == rpc]
        return req


def real_client(network: ModalNetwork) -> ModalClient:
    """Our ModalClient on a real (unopened) modal.Client whose control-plane stub is ``network``."""
    from modal_proto import api_pb2

    client = modal.Client("https://api.modal.invalid", api_pb2.CLIENT_TYPE_CLIENT, ("ak-test", "as-test"))
    inner = synchronizer._translate_in(client)
    inner._control_plane_stub = network
    inner._opened = True
    ours = ModalClient()
    ours._client = client
    return ours


# ------------------------------------------------------------------ render


def test_one_app_secret_and_volume_per_tenant(three: Rendered):
    apps = three.of_type(APP)
    assert sorted(a.name for a in apps) == ["alice-modal-app", "bob-modal-app", "carol-modal-app"]
    assert len(three.of_type(COMPONENT)) == 3
    for field in ("appName", "secretName", "volumeName"):
        assert len({a.inputs[field] for a in apps}) == 3, field
    for a in apps:
        assert a.inputs["role"] == contract.ROLE
        assert a.inputs["environment"] == "main"
    urls = three.outputs["url"]
    assert set(urls) == {"alice", "bob", "carol"} and all(u.startswith("https://") for u in urls.values())


def test_keys_only_as_secrets(three: Rendered):
    keys = three.outputs["apiKey"]
    assert "apiKey" in three.secret_outputs and "url" not in three.secret_outputs
    for a in three.of_type(APP):
        assert a.is_secret("secretEnv") and a.is_secret("__provider")
        assert a.inputs["secretHash"] and not a.is_secret("secretHash")
    for res in three.resources:
        plain = repr({k: v for k, v in res.inputs.items() if not res.is_secret(k)})
        for key in keys.values():
            assert key not in plain, f"{res.type} {res.name} carries a key in plain inputs"
    assert not any(k in json.dumps(three.outputs["modalSpecs"]) for k in keys.values())


def test_modal_program_imports_neither_aws_nor_kubernetes():
    sdks = imported_sdks_for("modal")
    assert "modal" in sdks
    assert "pulumi_aws" not in sdks and "pulumi_kubernetes" not in sdks and "pulumi_docker" not in sdks


def fails(**overrides) -> str:
    with pytest.raises(ConfigError) as info:
        render("modal", overrides=overrides)
    registered = r.registered_before(info.value)
    assert registered == [], f"registered before the config error: {[x.name for x in registered]}"
    assert isinstance(info.value, pulumi.RunError)
    return str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("modal.maxContainers", 2, "must be 1, got 2"),
        ("modal.minContainers", 2, "must be 1 (always warm"),
        ("modal.minContainers", -1, "or 0 (scale to zero"),
        ("modal.volumeName", "bad/name", "is not a Modal name"),
        ("modal.appName", "bad name!", "is not a Modal name"),
        ("modal.appName", "a" * 39, "at most 38"),
    ],
)
def test_bad_modal_settings_are_config_errors(key, value, says):
    message = fails(**{key: value})
    assert f"openhands:{key}:" in message and says in message


def test_canvas_ui_needs_the_tool(tmp_path):
    message = fails(**{"modal.canvasUi": True, "modal.canvasUiDir": str(tmp_path)})
    assert "openhands:modal.canvasUi" in message and "canvas_ui_tool.py" in message


# ------------------------------------------------------------------ the app, built offline


class Spy:
    """Wraps a modal method: records the arguments and still calls the real one."""

    def __init__(self, monkeypatch, owner: Any, name: str) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls.append((args, kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def spec_of(rendered: Rendered, tenant: str = "default") -> AppSpec:
    # Through the wire format, as the provider gets it (numbers arrive as floats).
    return AppSpec.from_dict(rendered.one(APP, f"{tenant}-modal-app").inputs["spec"])


def test_app_built_with_the_real_modal_library(one: Rendered, monkeypatch):
    cls_spy = Spy(monkeypatch, modal.App, "cls")
    registry = Spy(monkeypatch, modal.Image, "from_registry")
    entry = Spy(monkeypatch, modal.Image, "entrypoint")
    env_spy = Spy(monkeypatch, modal.Image, "env")
    spec = spec_of(one)
    app = build_app(spec)  # modal validates the arguments here, offline
    assert app.name == "openhands-modal-default"

    (_, kw), = cls_spy.calls
    assert kw["min_containers"] == 1 and kw["max_containers"] == 1
    assert kw["cpu"] == 1.0 and kw["memory"] == 2048
    assert kw["scaledown_window"] == 300 and kw["timeout"] == 3600
    assert registry.calls[0][0][0] == contract.DEFAULT_IMAGE
    assert registry.calls[0][1]["add_python"] == contract.IMAGE_PYTHON_VERSION == "3.13"
    assert entry.calls[0][0][-1] == []  # the image's tini entrypoint is cleared
    (env_args, _), = env_spy.calls
    env = env_args[-1]
    assert env == contract.container_env(
        {WEB_PORT_ENV: str(contract.PORT), STARTUP_TIMEOUT_ENV: str(contract.STARTUP_BUDGET_SECONDS)}
    )

    # What Modal itself recorded for the class's service function.
    info = synchronizer._translate_in(app)._local_state.functions["AgentServer.*"]._function_info
    assert set(info.volumes) == {contract.DATA_DIR}
    assert info.volumes[contract.DATA_DIR].name == "openhands-modal-state-default"
    assert all(env[k].startswith(contract.DATA_DIR + "/") for k in contract.STATE_ENV)  # all state in the volume
    assert info.secrets == ["modal.Secret.from_name('openhands-modal-default-keys', environment_name='main')"]
    assert info.concurrency_info.max_inputs == 100
    assert info.cpu == 1.0 and info.memory_mib == 2048
    assert info.method_names == ["serve"]
    secret = kw["secrets"][0]
    assert synchronizer._translate_in(secret)._name == spec.secret_name
    assert spec.secret_keys == ("OH_SESSION_API_KEYS_0", "OH_SECRET_KEY")

    web = synchronizer._translate_in(AgentServer.__dict__["serve"]).params.webhook_config
    assert web.web_server_port == contract.PORT == 8000
    assert web.web_server_startup_timeout == contract.STARTUP_BUDGET_SECONDS > 5  # not Modal's 5 s default


def test_scale_to_zero_and_canvas_ui(tmp_path, monkeypatch):
    (tmp_path / "canvas_ui_tool.py").write_text("TOOL = 'canvas'\n")
    rendered = render(
        "modal",
        overrides={"modal.minContainers": 0, "modal.canvasUi": True, "modal.canvasUiDir": str(tmp_path)},
    )
    spec = spec_of(rendered)
    add_dir = Spy(monkeypatch, modal.Image, "add_local_dir")
    cls_spy = Spy(monkeypatch, modal.App, "cls")
    build_app(spec)
    assert cls_spy.calls[0][1]["min_containers"] == 0
    (args, kw), = add_dir.calls
    assert args[-2:] == (str(tmp_path), contract.TOOLS_DIR) and kw["copy"] is True
    assert image_env(spec)[contract.EXTRA_PYTHON_PATH_ENV] == contract.TOOLS_DIR
    # The tool's content is part of the spec hash: editing it redeploys.
    before = rendered.one(APP).inputs["specHash"]
    (tmp_path / "canvas_ui_tool.py").write_text("TOOL = 'canvas v2'\n")
    after = render(
        "modal", overrides={"modal.minContainers": 0, "modal.canvasUi": True, "modal.canvasUiDir": str(tmp_path)}
    ).one(APP).inputs["specHash"]
    assert before != after


def test_module_level_app_for_modal_deploy(one: Rendered):
    spec = json.dumps(one.outputs["modalSpecs"]["default"])
    code = "import components.modal.app as m; print(m.app.name)"
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                        env={"PATH": "/usr/bin:/bin", "OPENHANDS_MODAL_SPEC": spec})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "openhands-modal-default"
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0 and "OPENHANDS_MODAL_SPEC is not set" in missing.stderr


# What Modal's container does with our module: import it fresh by the name the deploy
# recorded, take the class by name, and ask it for its methods (modal 1.6.4,
# _runtime/user_code_imports.py: _get_cls_or_user_cls, then _Cls._get_partial_functions).
CONTAINER_DISCOVERY = """
import json, sys
from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags
from modal._runtime.user_code_imports import _get_cls_or_user_cls
from modal_proto import api_pb2

fdef = api_pb2.Function(module_name=sys.argv[1], implementation_name=sys.argv[2],
                        definition_type=api_pb2.Function.DEFINITION_TYPE_FILE)
cls = _get_cls_or_user_cls(fdef, None)
found = {}
for name, pf in _find_partial_methods_for_user_cls(cls, _PartialFunctionFlags.all()).items():
    web = pf.params.webhook_config
    found[name] = {
        "web": bool(pf.flags & _PartialFunctionFlags.WEB_INTERFACE),
        "web_server": bool(web) and web.type == api_pb2.WEBHOOK_TYPE_WEB_SERVER,
        "port": web.web_server_port if web else None,
        "startup_timeout": web.web_server_startup_timeout if web else None,
    }
print(json.dumps(found))
"""


def test_container_discovers_serve_as_a_web_server(one: Rendered):
    """A fresh process with only the image's env finds ``serve`` as Modal's web server,
    with the spec's port and startup timeout (not only the deploying process)."""
    # A startup timeout other than the default shows the value travels through the image.
    spec = AppSpec.from_dict({**spec_of(one).to_dict(), "startup_timeout": 240})
    app = build_app(spec)
    # What the deploy records for the container: where to import the class from.
    info = synchronizer._translate_in(app)._local_state.functions["AgentServer.*"]._source_info
    assert info.is_serialized() is False  # the container finds the class by name, not unpickled
    env = image_env(spec)
    assert "OPENHANDS_MODAL_SPEC" not in env
    proc = subprocess.run(
        [sys.executable, "-c", CONTAINER_DISCOVERY, info.module_name, info.implementation_name],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(found) == {"serve", "stop"}
    assert found["serve"] == {"web": True, "web_server": True, "port": contract.PORT, "startup_timeout": 240}
    assert found["stop"]["web"] is False


# ------------------------------------------------------------------ the provider


def test_provider_pickles_by_reference():
    p = dill.loads(base64.b64decode(serialize_provider(ModalAppProvider())))
    assert type(p).__module__ == "components.modal.deploy" and p.client is None


def test_create_puts_secret_volume_and_deploys(one: Rendered):
    res = one.one(APP)
    p, fake = provider()
    props = provider_props(res)
    assert rpc.is_rpc_secret(props["secretEnv"])  # as the engine passes it
    result = p.create(props)
    assert fake.calls == [
        ("put_secret", "openhands-modal-default-keys", "main"),
        ("ensure_volume", "openhands-modal-state-default", "main"),
        ("deploy", "openhands-modal-default", "main"),
    ]
    key = one.outputs["apiKey"]["default"]
    secret_env = fake.secrets["openhands-modal-default-keys"]
    assert set(secret_env) == {"OH_SESSION_API_KEYS_0", "OH_SECRET_KEY"} and secret_env["OH_SESSION_API_KEYS_0"] == key
    assert result.id == "main/openhands-modal-default"
    assert result.outs["url"] == "https://ws--openhands-modal-default-agentserver-serve.modal.run"
    # State keeps the hash of the keys, never the keys.
    assert "secretEnv" not in result.outs and key not in json.dumps(result.outs)
    assert result.outs["secretHash"] == res.inputs["secretHash"]


def test_diff_and_update_redeploy_only_on_change(one: Rendered):
    res = one.one(APP)
    p, fake = provider()
    olds = p.create(provider_props(res)).outs
    fake.calls.clear()

    same = p.diff("id", olds, provider_props(res))
    assert same.changes is False and same.replaces == []

    # Settings change (scale to zero): redeploy, the Secret is left alone.
    news = provider_props(render("modal", overrides={"modal.minContainers": 0}).one(APP))
    d = p.diff("id", olds, news)
    assert d.changes and d.replaces == []
    out = p.update("id", olds, news).outs
    assert fake.names() == ["ensure_volume", "deploy"]
    assert out["specHash"] != olds["specHash"]

    # Key rotation: the Secret is overwritten and the app redeployed so containers restart.
    fake.calls.clear()
    rotated = provider_props(render("modal", overrides={"keys.rotation": 1}).one(APP))
    assert p.diff("id", olds, rotated).changes
    p.update("id", olds, rotated)
    assert fake.names() == ["put_secret", "ensure_volume", "deploy"]
    env = fake.secrets["openhands-modal-default-keys"]
    assert {"OH_SESSION_API_KEYS_1", "OH_PREVIOUS_SECRET_KEYS_0"} <= set(env)

    # The pinned image: redeploy.
    fake.calls.clear()
    image = provider_props(render("modal", overrides={"image": contract.IMAGE_REPOSITORY + ":1.59.0-python"}).one(APP))
    p.update("id", olds, image)
    assert fake.names() == ["ensure_volume", "deploy"]

    # Only retainData: nothing to deploy, the url stays.
    fake.calls.clear()
    keep = provider_props(render("modal", overrides={"retainData": False}).one(APP))
    assert p.diff("id", olds, keep).changes
    out = p.update("id", olds, keep).outs
    assert "deploy" not in fake.names() and "put_secret" not in fake.names()
    assert out["url"] == olds["url"] and out["retainData"] is False

    # A new app name replaces (old one deleted first: one writer per volume).
    renamed = provider_props(render("modal", overrides={"modal.appName": "oh"}).one(APP))
    d = p.diff("id", olds, renamed)
    assert "appName" in d.replaces and d.delete_before_replace is True


def test_delete_stops_the_app_and_keeps_the_volume(one: Rendered):
    """The provider's delete through the real ModalClient and modal's classes; only the RPCs are stubbed."""
    outs = provider()[0].create(provider_props(one.one(APP))).outs
    network = ModalNetwork()
    p = ModalAppProvider()
    p.client = real_client(network)
    p.delete("id", outs)
    assert network.rpcs() == ["AppGetOrCreate", "AppStop"]
    lookup = network.request("AppGetOrCreate")
    assert (lookup.app_name, lookup.environment_name) == ("openhands-modal-default", "main")
    assert network.request("AppStop").app_id == "ap-1"

    network = ModalNetwork()
    p.client = real_client(network)
    p.delete("id", {**outs, "retainData": False})
    assert network.rpcs() == ["AppGetOrCreate", "AppStop", "VolumeGetOrCreate", "VolumeDelete",
                              "SecretGetOrCreate", "SecretDelete"]
    volume, secret = network.request("VolumeGetOrCreate"), network.request("SecretGetOrCreate")
    assert (volume.deployment_name, volume.environment_name) == ("openhands-modal-state-default", "main")
    assert (secret.deployment_name, secret.environment_name) == (outs["secretName"], "main")
    assert network.request("VolumeDelete").volume_id == "vo-1" and network.request("SecretDelete").secret_id == "st-1"


def test_delete_of_what_is_already_gone_succeeds(one: Rendered):
    outs = provider()[0].create(provider_props(one.one(APP))).outs
    network = ModalNetwork(missing=("AppGetOrCreate", "VolumeGetOrCreate", "SecretGetOrCreate"))
    p = ModalAppProvider()
    p.client = real_client(network)
    p.delete("id", {**outs, "retainData": False})
    assert network.rpcs() == ["AppGetOrCreate", "VolumeGetOrCreate", "SecretGetOrCreate"]  # nothing to stop or delete


def test_token_comes_from_secret_config_not_state():
    p = ModalAppProvider()
    raw = {"openhands:modal": json.dumps({"tokenId": "ak-test", "tokenSecret": "as-secret"})}
    p.configure(ConfigureRequest(DynamicConfig(raw, "openhands")))
    assert p.client is not None and p.client._token == ("ak-test", "as-secret")
    p2 = ModalAppProvider()
    p2.configure(ConfigureRequest(DynamicConfig({}, "openhands")))
    assert p2.client._token is None  # then modal reads MODAL_TOKEN_ID/SECRET


def test_boundary_overwrites_the_secret_and_recreates(monkeypatch):
    """ModalClient itself on modal's own classes, only the RPCs stubbed (App.deploy, dozens of RPCs of
    image and function creation, is recorded instead): what it asks Modal for, name by name."""
    network = ModalNetwork()
    client = real_client(network)
    client.put_secret("s", {"A": "1"}, "main")
    put = network.request("SecretGetOrCreate")
    assert (put.deployment_name, put.environment_name, dict(put.env_dict)) == ("s", "main", {"A": "1"})
    from modal_proto import api_pb2

    assert put.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS

    deployed: dict[str, Any] = {}
    monkeypatch.setattr(modal.App, "deploy", lambda self, **k: deployed.update(app=self, **k))
    app = modal.App("n")
    network.calls.clear()
    assert client.deploy(app, "n", "main", tag="t") == "https://ws--app-serve.modal.run"
    assert deployed["app"] is app and deployed["name"] == "n" and deployed["tag"] == "t"
    assert deployed["strategy"] == "recreate" and deployed["environment_name"] == "main"
    # The URL comes from the class the app just deployed: app name, class name, environment.
    cls_get, fn_get = network.request("ClassGet"), network.request("FunctionGet")
    assert (cls_get.app_name, cls_get.object_tag, cls_get.environment_name) == ("n", "AgentServer", "main")
    assert (fn_get.app_name, fn_get.object_tag, fn_get.environment_name) == ("n", "AgentServer.*", "main")

    network.calls.clear()
    client.ensure_volume("v", "main")
    vol = network.request("VolumeGetOrCreate")
    assert (vol.deployment_name, vol.environment_name) == ("v", "main")
    assert vol.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING


# ------------------------------------------------------------------ the real server


def test_container_env_boots_the_real_server(one: Rendered, start_agent_server):
    res = one.one(APP)
    p, fake = provider()
    p.create(provider_props(res))
    spec = spec_of(one)
    # What the container gets: the image's env plus the Modal Secret's env.
    env = {**image_env(spec), **fake.secrets[spec.secret_name]}
    assert set(env) >= set(spec.secret_keys)
    command = contract.command()
    assert command[0] == contract.SERVER_BINARY
    server = start_agent_server(env, command[1:])
    key = one.outputs["apiKey"]["default"]
    assert server.get(contract.READINESS_PROBE.path)[0] == 200
    assert server.get("/api/conversations/search")[0] == 401
    assert server.get("/api/conversations/search", key=key)[0] == 200
    # State went inside the (mapped) volume.
    assert (Path(server.workdir) / "data" / "conversations").is_dir()
