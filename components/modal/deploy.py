"""Modal model: per tenant one Modal app (components/modal/app.py), its Secret and Volume.

Why a dynamic provider over the modal SDK, not pulumi-command running the modal CLI:

* a real diff. The resource compares a hash of the app spec (settings, pinned image,
  Canvas tool files) and the keys' checksum with the state, and redeploys only when one
  of them changed; a Command would rerun on any trigger and keep its stdout in state.
* secrets stay out of state and logs. The key env reaches Modal through the SDK (never a
  command line), the state keeps only its salted checksum (components/keys.py), and the Modal token is read from the
  environment or the stack's secret config inside the provider process, so it is in no
  input, output or log at all.
* one language: ``build_app`` is the same code ``modal deploy -m components.modal.app`` runs.

The provider talks to Modal only through ``ModalClient``; tests replace that one class.
Dynamic providers are pickled with dill: ``ModalAppProvider`` holds no state when it is
registered and imports modal lazily, so it pickles by reference to this importable module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from components import contract
from components.config import ModalSettings, StackConfig
from components.deployment import Deployment
from components.keys import TenantKeys
from components.modal.app import CLASS_NAME, WEB_METHOD, AppSpec

# Bump to redeploy every app when this provider's deploy logic changes.
PROVIDER_VERSION = "1"
REPLACE_KEYS = ("appName", "environment", "volumeName", "secretName")


# ------------------------------------------------------------------ spec


def tools_hash(path: str | None) -> str:
    """sha256 over the files of the Canvas tool dir (names and contents); '' if none."""
    if not path:
        return ""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def spec_for(cfg: StackConfig, tenant: str, secret_keys: list[str]) -> AppSpec:
    """The typed settings of one tenant's app."""
    settings: ModalSettings = cfg.settings
    return AppSpec(
        app_name=settings.app_for(tenant),
        tenant=tenant,
        image=cfg.image,
        secret_name=settings.secret_for(tenant),
        secret_keys=tuple(secret_keys),
        volume_name=settings.volume_for(tenant),
        environment=settings.environment,
        cpu=cfg.resources.cpu,
        memory=cfg.resources.memory,
        min_containers=settings.min_containers,
        max_containers=settings.max_containers,
        scaledown_window=settings.scaledown_window,
        timeout=settings.timeout,
        max_inputs=settings.max_inputs,
        tools_dir=settings.canvas_ui_path if settings.canvas_ui else None,
    )


def spec_hash(spec: Mapping[str, Any], tools: str = "") -> str:
    """What decides a redeploy besides the keys: the spec, the tool files, the contract.

    The tool dir's local path is left out (it differs between machines); its files count."""
    body = {k: v for k, v in spec.items() if k != "tools_dir"}
    payload = {"spec": body, "tools": tools, "contract": contract.CONTRACT_VERSION, "provider": PROVIDER_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ the boundary


class ModalClient:
    """The only code that talks to Modal's servers (tests stub this class)."""

    def __init__(self, token_id: str | None = None, token_secret: str | None = None) -> None:
        self._token = (token_id, token_secret) if token_id and token_secret else None
        self._client: Any = None

    def client(self) -> Any:
        import modal

        if self._client is None:
            # Explicit tokens from secret config, else MODAL_TOKEN_ID/SECRET or ~/.modal.toml.
            self._client = modal.Client.from_credentials(*self._token) if self._token else modal.Client.from_env()
        return self._client

    def put_secret(self, name: str, env: Mapping[str, str], environment: str | None) -> None:
        import modal

        # Overwrite, not merge (Secret.update merges): a key dropped from the env must stop
        # working. This is what `modal secret create --force` calls.
        modal.Secret._create_deployed(
            name, dict(env), client=self.client(), environment_name=environment, overwrite=True
        )

    def ensure_volume(self, name: str, environment: str | None) -> None:
        import modal

        modal.Volume.objects.create(name, allow_existing=True, environment_name=environment, client=self.client())

    def deploy(self, app: Any, name: str, environment: str | None, tag: str) -> str:
        import modal

        # "recreate": stop the old containers instead of a rolling overlap, because two
        # servers on one volume would be two writers.
        app.deploy(name=name, environment_name=environment, tag=tag, client=self.client(), strategy="recreate")
        cls = modal.Cls.from_name(name, CLASS_NAME, environment_name=environment, client=self.client())
        return getattr(cls(), WEB_METHOD).get_web_url()

    def stop(self, name: str, environment: str | None) -> None:
        import modal
        from modal.exception import NotFoundError

        try:
            app = modal.App.lookup(name, environment_name=environment, client=self.client())
        except NotFoundError:
            return  # already gone
        app.stop(client=self.client())

    def delete_volume(self, name: str, environment: str | None) -> None:
        import modal

        modal.Volume.objects.delete(name, allow_missing=True, environment_name=environment, client=self.client())

    def delete_secret(self, name: str, environment: str | None) -> None:
        import modal

        modal.Secret.objects.delete(name, allow_missing=True, environment_name=environment, client=self.client())


# ------------------------------------------------------------------ the provider


def _plain(value: Any) -> Any:
    """Drop Pulumi's secret wrappers (the provider gets secret inputs wrapped)."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _tokens_from_config(raw: Any) -> tuple[str | None, str | None]:
    """modal.tokenId / modal.tokenSecret from the stack config (a JSON object string)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, None
    if not isinstance(raw, dict):
        return None, None
    return raw.get("tokenId"), raw.get("tokenSecret")


class ModalAppProvider(dynamic.ResourceProvider):
    """Create/update: Secret (overwritten), Volume (created if missing), app deployed.
    Delete: app stopped; Volume and Secret kept unless retainData is false."""

    client: ModalClient | None = None  # set by configure(); tests set a stub

    def configure(self, req: dynamic.ConfigureRequest) -> None:
        token_id, token_secret = _tokens_from_config(req.config.get("modal"))
        self.client = ModalClient(token_id, token_secret)

    def _modal(self) -> ModalClient:
        if self.client is None:
            self.client = ModalClient()
        return self.client

    def _apply(self, props: dict[str, Any], *, secret: bool, deploy: bool, url: str | None) -> dict[str, Any]:
        from components.modal.app import build_app

        props = _plain(props)
        env = props.get("environment") or None
        modal_ = self._modal()
        if secret:
            modal_.put_secret(props["secretName"], props["secretEnv"], env)
        modal_.ensure_volume(props["volumeName"], env)
        if deploy:
            app = build_app(AppSpec.from_dict(props["spec"]))
            url = modal_.deploy(app, props["appName"], env, tag=props["specHash"][:12])
        outs = {k: v for k, v in props.items() if k != "secretEnv"}  # never the key values
        outs["url"] = url
        return outs

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        outs = self._apply(props, secret=True, deploy=True, url=None)
        return dynamic.CreateResult(id_=f"{outs.get('environment') or '-'}/{outs['appName']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        changes = [k for k in ("specHash", "secretHash", "retainData") if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(
            changes=bool(replaces or changes),
            replaces=replaces,
            stables=[k for k in REPLACE_KEYS if k not in replaces],
            # A renamed app on the same volume must not run next to the old one.
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        secret_changed = olds.get("secretHash") != news.get("secretHash")
        # New keys reach a container only at its start, so a key change redeploys too.
        redeploy = secret_changed or olds.get("specHash") != news.get("specHash")
        outs = self._apply(news, secret=secret_changed, deploy=redeploy, url=olds.get("url"))
        return dynamic.UpdateResult(outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        props = _plain(props)
        env = props.get("environment") or None
        modal_ = self._modal()
        modal_.stop(props["appName"], env)
        if props.get("retainData", True) is False:
            modal_.delete_volume(props["volumeName"], env)
            modal_.delete_secret(props["secretName"], env)
        # With retainData the Secret stays too: it holds OH_SECRET_KEY, the only key that
        # decrypts the secrets stored on the kept volume.


class ModalAppResource(dynamic.Resource, module="modal", name="App"):
    """``pulumi-python:dynamic/modal:App``: one deployed Modal app."""

    url: pulumi.Output[str]
    spec_hash: pulumi.Output[str]

    def __init__(self, name: str, props: Mapping[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ModalAppProvider(), name, {**props, "url": None}, opts)


# ------------------------------------------------------------------ components


class ModalApp(pulumi.ComponentResource):
    """One tenant's agent server on Modal."""

    spec: AppSpec
    app: ModalAppResource
    url: pulumi.Output[str]

    def __init__(
        self,
        tenant: str,
        *,
        cfg: StackConfig,
        keys: TenantKeys,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:modal:ModalApp", tenant, None, opts)
        self.spec = spec_for(cfg, tenant, keys.env_names)
        spec = self.spec.to_dict()
        self.app = ModalAppResource(
            f"{tenant}-modal-app",
            {
                "appName": self.spec.app_name,
                "environment": self.spec.environment or "",
                "secretName": self.spec.secret_name,
                "volumeName": self.spec.volume_name,
                "role": contract.ROLE,
                "spec": spec,
                "specHash": spec_hash(spec, tools_hash(self.spec.tools_dir)),
                "secretEnv": pulumi.Output.secret(keys.env),
                "secretHash": keys.checksum,
                "retainData": cfg.retain_data,
            },
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["secretEnv"]),
        )
        self.url = self.app.url
        self.register_outputs({"url": self.url, "app": self.spec.app_name, "volume": self.spec.volume_name})


class ModalDeployment(pulumi.ComponentResource):
    """All tenants' Modal apps."""

    apps: dict[str, ModalApp]

    def __init__(
        self, name: str, *, cfg: StackConfig, keys: Mapping[str, TenantKeys], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("openhands:modal:ModalDeployment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.apps = {t: ModalApp(t, cfg=cfg, keys=keys[t], opts=child) for t in cfg.tenants}
        self.register_outputs({"urls": {t: a.url for t, a in self.apps.items()}})


def build(cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment:
    deployment = ModalDeployment("modal", cfg=cfg, keys=keys)
    settings: ModalSettings = cfg.settings
    return Deployment(
        resource=deployment,
        urls={t: a.url for t, a in deployment.apps.items()},
        image=cfg.image,
        exports={
            # One tenant's spec is what `modal deploy -m components.modal.app` needs in
            # OPENHANDS_MODAL_SPEC (no secrets in it: the keys live in the Modal Secret).
            "modalSpecs": {t: a.spec.to_dict() for t, a in deployment.apps.items()},
            # "" = the token's default environment (or MODAL_ENVIRONMENT).
            "modalEnvironment": settings.environment or "",
        },
    )
