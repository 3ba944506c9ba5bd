"""Docker model: one agent-server container per tenant behind a Caddy TLS proxy.

Used as-is by the ``local`` stack (the local engine, or any DOCKER_HOST-style URL)
and by the VM stack (components/docker/vm.py), which points the same ``DockerHost`` at a
provisioned EC2 instance over SSH.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import pulumi
import pulumi_docker as docker
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings

from components import contract, deployment
from components.config import StackConfig
from components.config.docker import DockerSettings
from components.deployment import Deployment
from components.docker import caddy
from components.docker.routes import ProxyRoutes
from components.keys import TenantKeys

# Labels: which role, tenant and deployment (<project>/<stack>) a container, network or volume belongs to.
ROLE_LABEL, TENANT_LABEL, STACK_LABEL = contract.ROLE_LABEL, contract.TENANT_LABEL, contract.STACK_LABEL


def name_prefix() -> str:
    """The prefix of every engine-global name (containers, networks, volumes): project AND stack,
    so two stacks, or two projects, on one engine never share a name. The default project
    (``openhands``) keeps the names of earlier releases: ``openhands-<stack>-...``."""
    return contract.global_name(pulumi.get_project(), pulumi.get_stack())


def _labels(role: str, tenant: str | None = None) -> list[docker.ContainerLabelArgs]:
    labels = [
        docker.ContainerLabelArgs(label=ROLE_LABEL, value=role),
        docker.ContainerLabelArgs(label=STACK_LABEL, value=f"{pulumi.get_project()}/{pulumi.get_stack()}"),
    ]
    if tenant:
        labels.append(docker.ContainerLabelArgs(label=TENANT_LABEL, value=tenant))
    return labels


# The Engine API that has a healthcheck ``start_interval`` (Docker 25). pulumi-docker's Go client refuses
# to create a container that sets it on an older engine, so the render cannot send it "just in case".
START_INTERVAL_API = "1.44"
# While a server starts, the engine probes this often (start_interval on >= 1.44; on 20.10 the interval
# itself, the probe sleeping the rest of the contract's interval once the server has been ready).
STARTING_PROBE_SECONDS = 1
# Where the 20.10 probe notes "this container's server has answered /ready": /dev/shm is a tmpfs the
# engine mounts afresh at every start of the container, so a restarted server is polled quickly again.
READY_MARK = "/dev/shm/openhands-ready"
_POLL_SECONDS = 0.25  # how often the 20.10 probe asks /ready while the server starts



def healthcheck(api: str = contract.DOCKER_MIN_API) -> docker.ContainerHealthcheckArgs:
    """The contract's readiness check, run inside the container by the engine, for an engine that
    speaks ``api``. The render targets the oldest API the stack supports (contract.DOCKER_MIN_API): it
    runs before any engine is asked, and pulumi-docker refuses a field newer than the engine's API.

    Either way a starting server is asked about once a second, so ``wait: true`` returns (and a rollout
    moves on) within about a second of the server answering ``/ready``, and a running one every
    ``HEALTHCHECK_INTERVAL_SECONDS`` with the contract's failure budget:

    - API >= 1.44: ``start_interval`` (probes every second until the first success), else the
      contract's command and interval.
    - API 1.41 (Docker 20.10, no ``start_interval``; the first probe runs one ``interval`` after start):
      ``interval`` is 1 s and the probe itself keeps the steady cadence. Until the server has answered
      once (``READY_MARK``), it polls ``/ready`` every 0.25 s for up to one contract interval; after
      that it sleeps ``interval - 1`` s, then checks once. ``timeout`` covers that sleep plus the
      contract's timeout, so a hung server still fails after ``HEALTHCHECK_RETRIES`` probes."""
    every = contract.HEALTHCHECK_INTERVAL_SECONDS
    if _version(api) >= _version(START_INTERVAL_API):
        return _healthcheck(
            contract.HEALTHCHECK_COMMAND, contract.STARTUP_BUDGET_SECONDS, start_interval=f"{STARTING_PROBE_SECONDS}s"
        )
    rest = every - STARTING_PROBE_SECONDS
    polls = int(rest / _POLL_SECONDS)
    script = (
        f"ready() {{ {contract.HEALTHCHECK_SCRIPT}; }}; m={READY_MARK}; "
        f"if [[ -e $m ]]; then sleep {rest}; ready; exit; fi; "
        f'for ((i = 0; i < {polls}; i++)); do ready 2>/dev/null && {{ : >"$m"; exit 0; }}; '
        f"sleep {_POLL_SECONDS}; done; exit 1"
    )
    return _healthcheck(
        ("CMD", "bash", "-c", script),
        contract.STARTUP_BUDGET_SECONDS,
        interval=STARTING_PROBE_SECONDS,
        timeout=every + contract.HEALTHCHECK_TIMEOUT_SECONDS,
    )


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def engine_api(settings: DockerSettings) -> str:
    """The Engine API the healthchecks are written for (``docker.engineApi``). ``auto``: what the engine
    speaks, asked through the Docker SDK like pulumi-docker's client negotiates it; the oldest supported
    (contract.DOCKER_MIN_API) for a VM (its engine does not exist yet), under Pulumi's mocks (an offline
    render asks no engine), or when the engine does not answer (the docker provider then says why)."""
    if settings.engine_api != "auto":
        return settings.engine_api
    if settings.engine == "vm" or isinstance(pulumi_settings.get_monitor(), pulumi_mocks.MockMonitor):
        return contract.DOCKER_MIN_API
    try:
        import docker as docker_sdk  # the Docker SDK for Python (pulumi_docker is imported as ``docker`` here)

        host = settings.host
        client = (docker_sdk.DockerClient(base_url=host, version="auto", timeout=10,
                                          use_ssh_client=host.startswith("ssh://"))
                  if host else docker_sdk.from_env(version="auto", timeout=10))
        speaks = str(client.api.version()["ApiVersion"])
    except Exception as exc:  # noqa: BLE001 - any failure: the oldest API, which every engine accepts
        pulumi.log.warn(f"docker.engineApi auto: the engine did not say its API version ({exc}); "
                        f"writing healthchecks for API {contract.DOCKER_MIN_API}")
        return contract.DOCKER_MIN_API
    return speaks


def proxy_healthcheck() -> docker.ContainerHealthcheckArgs:
    """Caddy's own check (components/docker/caddy.py: its admin API over a unix socket, asked by the caddy
    binary, the only program in the image), on the contract's interval, timeout and retries.

    A signal (``docker ps``, ``docker inspect``), not a cure: the engine restarts a container
    whose process exits (``unless-stopped``), never one that is merely unhealthy. No
    ``start_interval``: API 1.41 drops it (tests/real/docker/test_docker_real.py)."""
    return _healthcheck(caddy.HEALTHCHECK_COMMAND, caddy.HEALTHCHECK_START_PERIOD_SECONDS)


def _healthcheck(
    command: Sequence[str],
    start_period_seconds: int,
    *,
    interval: int = contract.HEALTHCHECK_INTERVAL_SECONDS,
    timeout: int = contract.HEALTHCHECK_TIMEOUT_SECONDS,
    start_interval: str | None = None,
) -> docker.ContainerHealthcheckArgs:
    """A command on the contract's interval, timeout and retries (unless told otherwise)."""
    return docker.ContainerHealthcheckArgs(
        tests=list(command),
        interval=f"{interval}s",
        timeout=f"{timeout}s",
        retries=contract.HEALTHCHECK_RETRIES,
        start_period=f"{start_period_seconds}s",
        start_interval=start_interval,
    )


def upstream(tenant: str) -> str:
    """The proxy's upstream for a tenant: its network alias and the contract's port."""
    return f"agent-{tenant}:{contract.PORT}"


class DockerTenant(pulumi.ComponentResource):
    """One tenant's agent server: its own network, a state volume and a container.

    The network holds this tenant's server and the proxy only, so no tenant can reach another
    tenant's server on any port; it is not ``internal``, so the server keeps outbound access
    (model APIs, git) through the bridge's NAT."""

    network: docker.Network
    volume: docker.Volume
    container: docker.Container

    def __init__(
        self,
        tenant: str,
        *,
        image: pulumi.Input[str],
        keys: TenantKeys,
        cfg: StackConfig,
        volume_driver_opts: Mapping[str, pulumi.Input[str]] | None = None,
        after: Sequence[pulumi.Resource] = (),
        api: str = contract.DOCKER_MIN_API,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``api``: the Engine API its healthcheck is written for (``engine_api``).
        ``after``: containers this tenant's container is created (and replaced) after, once they are
        healthy (DockerHost's rollout chains). Its network and volume do not wait."""
        # The type token keeps its first name: it is in every deployed stack's URNs.
        super().__init__("openhands:docker:AgentServer", tenant, None, opts)
        prefix = name_prefix()
        child = pulumi.ResourceOptions(parent=self)

        self.network = docker.Network(
            f"{tenant}-network",
            name=f"{prefix}-{tenant}-net",
            labels=[
                docker.NetworkLabelArgs(label=TENANT_LABEL, value=tenant),
                docker.NetworkLabelArgs(label=STACK_LABEL, value=f"{pulumi.get_project()}/{pulumi.get_stack()}"),
            ],
            opts=child,
        )
        # The only copy of this tenant's conversations and secrets: kept on destroy
        # unless the stack opts out with retainData: false.
        self.volume = docker.Volume(
            f"{tenant}-state",
            name=f"{prefix}-{tenant}-state",
            driver_opts=dict(volume_driver_opts) if volume_driver_opts else None,
            labels=[docker.VolumeLabelArgs(label=TENANT_LABEL, value=tenant)],
            opts=child.merge(pulumi.ResourceOptions(retain_on_delete=cfg.retain_data)),
        )
        # No leases: the container's fixed name means the engine never runs two servers on this volume (a
        # replacement is created only once the old container is gone, and a crash restarts the same one).
        plain = contract.container_env(contract.NO_LEASES)
        envs = pulumi.Output.secret(
            keys.env.apply(lambda secret: [f"{k}={v}" for k, v in {**plain, **secret}.items()])
        )
        self.container = docker.Container(
            f"{tenant}-agent-server",
            name=f"{prefix}-{tenant}",
            image=image,
            command=contract.args(),
            envs=envs,
            user=f"{contract.UID}:{contract.GID}",
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=contract.DATA_DIR)
            ],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=self.network.name, aliases=[f"agent-{tenant}"])
            ],
            healthcheck=healthcheck(api),
            restart="unless-stopped",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges"],
            memory=cfg.resources.memory,
            cpus=str(cfg.resources.cpu),
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "5"},
            labels=[
                *_labels(contract.ROLE, tenant),
                # A key rotation changes the env; the label makes the replacement visible in diffs.
                docker.ContainerLabelArgs(label=contract.CHECKSUM_LABEL, value=keys.checksum),
            ],
            # `pulumi up` waits for the healthcheck, so a broken rollout fails the update.
            wait=True,
            wait_timeout=contract.STARTUP_BUDGET_SECONDS + 60,
            # Without it the provider force-removes (SIGKILL): the server keeps its conversation
            # leases and the replacement of a key rotation answers 404 until they expire.
            destroy_grace_seconds=contract.STOP_GRACE_SECONDS,
            # The engine strips secretness from inputs before policies see them; declaring the
            # env a secret output keeps it encrypted in state and tells the policy pack so.
            # depends_on only (no input flows from ``after``): Pulumi registers this container once those are
            # done, and a replacement of theirs never deletes this one first.
            opts=child.merge(
                pulumi.ResourceOptions(
                    delete_before_replace=True, additional_secret_outputs=["envs"], depends_on=list(after)
                )
            ),
        )
        self.register_outputs(
            {"container": self.container.name, "volume": self.volume.name, "network": self.network.name}
        )


class TlsProxy(pulumi.ComponentResource):
    """Caddy: the only published container. HTTPS per tenant host, HTTP only redirects."""

    container: docker.Container
    data: docker.Volume
    caddyfile: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        image: pulumi.Input[str],
        networks: Mapping[str, docker.Network],
        sites: Mapping[str, pulumi.Input[str]],
        cfg: StackConfig,
        tls_files: tuple[pulumi.Input[str], pulumi.Input[str]] | None = None,
        live_routes: str | bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``live_routes``: False renders the sites and tenant networks into the container (any change
        replaces it); True (or the engine's URL) applies them in place with ``ProxyRoutes``, over the
        Docker SDK on the engine the docker provider uses (True: DOCKER_HOST or the local socket)."""
        super().__init__("openhands:docker:TlsProxy", name, None, opts)
        settings = cfg.settings
        prefix = name_prefix()
        child = pulumi.ResourceOptions(parent=self)
        tenants = list(sites)
        mode = settings.tls_mode
        if mode == "selfsigned" and tls_files is None:
            raise ValueError("tls 'selfsigned' needs a certificate and key")

        def render(hosts: Mapping[str, str]) -> str:  # tenant -> its public host
            return caddy.caddyfile(
                {h: upstream(t) for t, h in hosts.items()},
                tls=mode,
                http_port=settings.http_port,
                https_port=settings.https_port,
                acme_email=settings.acme_email,
                limits=settings.proxy,  # docker.proxy: what one client may hold (docs/local.md, "Limits")
            )

        self.caddyfile = pulumi.Output.all(*[sites[t] for t in tenants]).apply(
            lambda hosts: render(dict(zip(tenants, hosts, strict=True)))
        )
        # live_routes: the container starts with the global options only and ProxyRoutes adds the sites and
        # the tenant networks in place, so adding or removing a tenant never replaces the proxy.
        boot = render({}) if live_routes else self.caddyfile
        uploads = [docker.ContainerUploadArgs(file=caddy.CONFIG_PATH, content=boot)]
        if tls_files is not None:
            cert, key = tls_files
            uploads += [
                docker.ContainerUploadArgs(file=caddy.CERT_PATH, content=cert),
                docker.ContainerUploadArgs(
                    file=caddy.KEY_PATH,
                    content_base64=pulumi.Output.secret(
                        pulumi.Output.from_input(key).apply(lambda k: base64.b64encode(k.encode()).decode())
                    ),
                ),
            ]
        # Certificates, the ACME account and the internal CA; kept so a redeploy does not
        # re-issue certificates (Let's Encrypt rate limits) or change the local root.
        self.data = docker.Volume(
            f"{name}-data",
            name=f"{prefix}-caddy-data",
            opts=child.merge(pulumi.ResourceOptions(retain_on_delete=cfg.retain_data)),
        )
        if live_routes:
            # Its own network, fixed for the container's life (egress for ACME); the tenants' networks
            # are joined and left in place by ProxyRoutes.
            self.network = docker.Network(
                f"{name}-network",
                name=f"{prefix}-proxy-net",
                labels=[docker.NetworkLabelArgs(label=STACK_LABEL,
                                                value=f"{pulumi.get_project()}/{pulumi.get_stack()}")],
                opts=child,
            )
            own_networks = [docker.ContainerNetworksAdvancedArgs(name=self.network.name)]
        else:
            # On every tenant's network (and only there): the upstreams are the tenants' aliases.
            own_networks = [docker.ContainerNetworksAdvancedArgs(name=networks[t].name) for t in tenants]
        self.container = docker.Container(
            f"{name}-caddy",
            name=f"{prefix}-proxy",
            image=image,
            command=["caddy", "run", "--config", caddy.CONFIG_PATH, "--adapter", "caddyfile"],
            uploads=uploads,
            # Caddy listens on the published port numbers themselves, so its HTTP->HTTPS
            # redirect points at the port clients actually use.
            # On loopback unless bindAddress says otherwise: a port without an ip is published
            # on every interface of the host.
            ports=[
                docker.ContainerPortArgs(
                    internal=settings.https_port, external=settings.https_port, ip=settings.publish_address
                ),
                docker.ContainerPortArgs(
                    internal=settings.http_port, external=settings.http_port, ip=settings.publish_address
                ),
            ],
            volumes=[docker.ContainerVolumeArgs(volume_name=self.data.name, container_path=caddy.DATA_DIR)],
            networks_advanced=own_networks,
            healthcheck=proxy_healthcheck(),
            restart="unless-stopped",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=["NET_BIND_SERVICE"]),
            security_opts=["no-new-privileges"],
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "5"},
            labels=_labels(contract.TLS_PROXY_ROLE),
            destroy_grace_seconds=contract.STOP_GRACE_SECONDS,  # Caddy drains connections on SIGTERM
            opts=child.merge(pulumi.ResourceOptions(
                delete_before_replace=True,
                # ProxyRoutes attaches the tenant networks; a `pulumi refresh` reads them back into the
                # state, and without this the next `up` would replace the proxy to drop them again.
                ignore_changes=["networksAdvanced"] if live_routes else None,
            )),
        )
        self.routes: ProxyRoutes | None = None
        if live_routes:
            self.routes = ProxyRoutes(
                f"{name}-routes",
                host=live_routes if isinstance(live_routes, str) else None,
                container_name=f"{prefix}-proxy",
                container_id=self.container.id,
                networks=[networks[t].name for t in tenants],
                caddyfile=self.caddyfile,
                opts=child,
            )
        self.register_outputs({"caddyfile": self.caddyfile})


class DockerHost(pulumi.ComponentResource):
    """All tenants on one Docker engine: the pinned images, one agent server per tenant (each
    on its own network), and the TLS proxy on every tenant network. The engine comes from the
    provider passed in ``opts`` (local socket, DOCKER_HOST URL, or ssh:// to a VM)."""

    image: docker.RemoteImage
    proxy_image: docker.RemoteImage
    servers: dict[str, DockerTenant]
    proxy: TlsProxy
    urls: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        cfg: StackConfig,
        keys: Mapping[str, TenantKeys],
        hosts: Mapping[str, pulumi.Input[str]],
        tls_files: tuple[pulumi.Input[str], pulumi.Input[str]] | None = None,
        volume_driver_opts: Mapping[str, Mapping[str, pulumi.Input[str]]] | None = None,
        live_routes: str | bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``live_routes``: see ``TlsProxy`` (the VM keeps False: its engine is reached over SSH only)."""
        super().__init__("openhands:docker:DockerHost", name, None, opts)
        settings = cfg.settings
        child = pulumi.ResourceOptions(parent=self)

        self.image = docker.RemoteImage(f"{name}-agent-image", name=cfg.image, keep_locally=True, opts=child)
        self.proxy_image = docker.RemoteImage(
            f"{name}-proxy-image", name=settings.caddy_image, keep_locally=True, opts=child
        )
        # Rollout chains (docker.rolloutWidth, default 1): tenant i's container waits for tenant i - width's
        # replacement to be healthy (``wait: true``), so a change to every tenant (a key rotation, a new image)
        # restarts `width` servers at a time and, at 1, no boot competes with another for the CPU
        # (docs/performance.md, "Rollouts").
        self.servers = {}
        api = engine_api(settings)
        width = settings.rollout_width
        for i, t in enumerate(cfg.tenants):
            before = cfg.tenants[i - width] if i >= width else None
            self.servers[t] = DockerTenant(
                t,
                image=self.image.image_id,
                keys=keys[t],
                cfg=cfg,
                volume_driver_opts=(volume_driver_opts or {}).get(t),
                after=[self.servers[before].container] if before else [],
                api=api,
                opts=child,
            )
        self.proxy = TlsProxy(
            f"{name}-proxy",
            image=self.proxy_image.image_id,
            networks={t: s.network for t, s in self.servers.items()},
            sites=hosts,
            cfg=cfg,
            tls_files=tls_files,
            live_routes=live_routes,
            opts=child.merge(pulumi.ResourceOptions(depends_on=list(self.servers.values()))),
        )
        port = "" if settings.https_port == 443 else f":{settings.https_port}"
        self.urls = {t: pulumi.Output.concat("https://", hosts[t], port) for t in cfg.tenants}
        self.register_outputs({"urls": self.urls})


def build(cfg: StackConfig, keys: Mapping[str, TenantKeys]) -> Deployment:
    """The local (or DOCKER_HOST) engine."""
    settings = cfg.settings
    provider = docker.Provider("docker-engine", host=settings.host)
    host = DockerHost(
        "docker",
        cfg=cfg,
        keys=keys,
        hosts={t: settings.host_for(t) for t in cfg.tenants},
        live_routes=settings.host or True,  # the engine the provider uses
        opts=pulumi.ResourceOptions(providers={"docker": provider}),
    )
    exports = {deployment.CADDYFILE: host.proxy.caddyfile}
    if settings.tls_mode == "internal":
        exports["localCaRoot"] = (
            "Caddy's internal root CA, to trust once: docker cp "
            f"{name_prefix()}-proxy:{caddy.DATA_DIR}/caddy/pki/authorities/local/root.crt ."
        )
    return Deployment(resource=host, urls=host.urls, exports=exports)
