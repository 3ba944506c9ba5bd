"""The proxy's routes, changed in place: which tenant networks Caddy is on, and the Caddyfile it serves.

Why a dynamic provider: pulumi-docker replaces a container whose ``networks_advanced`` or ``uploads``
change (both are create-only in the provider). With the routes in the container resource, every tenant
added or removed replaced the proxy, so every other tenant was refused for 1-3 s and lost its
WebSockets. Here the proxy container is created once with what does not change per tenant (image,
ports, its own network, the global-options Caddyfile), and this resource, through the Docker SDK for
Python on the same engine as the docker provider:

- connects the container to each tenant's network and disconnects it from a removed tenant's
  (``NetworkConnect``/``NetworkDisconnect`` leave its other connections alone);
- writes the full Caddyfile where Caddy reads it (so a restarted container comes back with every site);
- asks Caddy to reload it over the admin socket (``caddy reload``): Caddy swaps the config gracefully,
  keeping its listeners and open connections, and ``stream_close_delay`` keeps open WebSockets.

It never holds a secret: the Caddyfile names hosts and upstreams only (certificates stay uploads).
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from components.docker import caddy

# The container may be (re)starting when the routes are applied (just created, or restarted by its
# policy): Caddy answers its admin socket within a second of starting.
RUNNING_TIMEOUT_SECONDS = 60
CHANGES = ("containerId", "networks", "caddyfile", "configPath", "adminSocket", "host")


def _client(host: str | None) -> Any:
    import docker  # the Docker SDK for Python: only the local model's deploys need it

    if host:
        return docker.DockerClient(base_url=host, version="auto", use_ssh_client=host.startswith("ssh://"))
    return docker.from_env(version="auto")


def _put_file(container: Any, path: str, content: str) -> None:
    data = content.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(posixpath.basename(path))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    if not container.put_archive(posixpath.dirname(path), buf.getvalue()):
        raise RuntimeError(f"could not write {path} into container {container.name}")


def _running(client: Any, container_id: str) -> Any:
    deadline = time.monotonic() + RUNNING_TIMEOUT_SECONDS
    while True:
        container = client.containers.get(container_id)
        state = container.attrs.get("State", {})
        if state.get("Running") and not state.get("Restarting"):
            return container
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy container {container.name} is not running "
                               f"(status {state.get('Status')}); see `docker logs {container.name}`")
        time.sleep(0.5)


def _reload(container: Any, config_path: str, admin_socket: str) -> None:
    """``caddy reload``: a config Caddy rejects leaves the running one in place, and fails the step."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_SECONDS
    cmd = ["caddy", "reload", "--config", config_path, "--adapter", "caddyfile", "--address", f"unix/{admin_socket}"]
    while True:
        code, output = container.exec_run(cmd)
        if code == 0:
            return
        text = output.decode(errors="replace").strip()
        # Just started: the admin socket is not there yet.
        if "connect" in text and time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        raise RuntimeError(f"caddy reload in {container.name} failed ({code}): {text[-2000:]}")


def apply_routes(olds: dict[str, Any] | None, news: dict[str, Any]) -> None:
    """Connect new networks first (the new sites' upstreams must resolve), then write and reload the
    config, and only then leave removed tenants' networks (their sites are gone by then)."""
    client = _client(news.get("host"))
    container = _running(client, news["containerId"])
    attached = set((container.attrs.get("NetworkSettings") or {}).get("Networks") or {})
    wanted = list(news["networks"])
    for net in wanted:
        if net not in attached:
            client.api.connect_container_to_network(container.id, net)
    _put_file(container, news["configPath"], news["caddyfile"])
    _reload(container, news["configPath"], news["adminSocket"])
    if olds and olds.get("containerId") == news["containerId"]:
        for net in olds.get("networks") or []:
            if net not in wanted and net in attached:
                _disconnect(client, container.id, net)


def _disconnect(client: Any, container_id: str, network: str) -> None:
    import docker.errors

    try:
        client.api.disconnect_container_from_network(container_id, network)
    except docker.errors.NotFound:
        pass  # the network or the container is gone already
    except docker.errors.APIError as exc:
        if "is not connected" not in str(exc):
            raise


class ProxyRoutesProvider(dynamic.ResourceProvider):
    """Create and update apply the routes; delete leaves the tenant networks (so they can be removed)."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        apply_routes(None, props)
        return dynamic.CreateResult(id_=props["containerName"], outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in CHANGES if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[], stables=["containerName"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        apply_routes(olds, news)
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        import docker.errors

        client = _client(props.get("host"))
        try:
            container = client.containers.get(props["containerId"])
        except docker.errors.NotFound:
            return  # replaced or removed: its networks went with it
        for net in props.get("networks") or []:
            _disconnect(client, container.id, net)


class ProxyRoutes(dynamic.Resource, module="docker", name="ProxyRoutes"):
    """``pulumi-python:dynamic/docker:ProxyRoutes``: the proxy container's tenant networks and sites."""

    caddyfile: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        host: str | None,
        container_name: str,
        container_id: pulumi.Input[str],
        networks: Sequence[pulumi.Input[str]],
        caddyfile: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "host": host,
            "containerName": container_name,
            "containerId": container_id,
            "networks": list(networks),
            "caddyfile": caddyfile,
            "configPath": caddy.CONFIG_PATH,
            "adminSocket": caddy.ADMIN_SOCKET,
        }
        super().__init__(ProxyRoutesProvider(), name, props, opts)
