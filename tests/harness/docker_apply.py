"""Test-only applier: do on a real Docker engine what ``pulumi up`` / ``pulumi destroy`` with
pulumi-docker 5.2.0 would do with what ``openhands_cli.render.render(...)`` registered.

pulumi-docker's plugin cannot be built here (no GitHub), so this module replays the
provider (terraform-provider-docker, which pulumi-docker bridges) through the Engine API with
the Docker SDK for Python. It maps every rendered input field by hand, in the provider's
order, and FAILS on a field (or a resource type) it does not map, so the render can never
outgrow it silently. Provider behaviours reproduced:

Engine
  - The API version is negotiated with the engine (the Go client's ``WithAPIVersionNegotiation``),
    and, like the Go client, a field newer than the negotiated API is refused before the call:
    healthcheck ``start_interval`` needs API 1.44 (``"specify health-check start interval"
    requires API version 1.44``).

``docker:index/remoteImage:RemoteImage``
  - Uses the local image of that name (the provider pulls only when it is missing; registries
    are unreachable here, so a missing image fails and names ``scripts/docker-images``).
    ``imageId`` is the image's id; containers get it as ``image``.
    ``keepLocally: true``: destroy leaves the image.

``docker:index/network:Network``
  - ``NetworkCreate`` with ``CheckDuplicate: true``; driver, options, internal, attachable, ipv6,
    labels as given (unset driver: the engine's default, ``bridge``). Delete: ``NetworkRemove``.

``docker:index/volume:Volume``
  - ``VolumeCreate`` (name, driver, driverOpts, labels). An existing volume of that name is
    returned by the engine, not replaced: that is how a retained volume is re-attached by name.
    Delete: ``VolumeRemove`` with force, retried while a container still releases it.
    ``retainOnDelete``: Pulumi forgets the volume without calling delete.

``docker:index/container:Container`` (create, in the provider's order)
  - Config: image, env (``envs``), cmd (``command``; an empty element is refused), user,
    exposed ports and port bindings (``ports``: ``ip`` defaults to ``0.0.0.0``, protocol to
    ``tcp``), volumes (``volumeName`` -> bind ``name:path[:ro]``), labels, healthcheck (Go
    durations), then HostConfig: restart policy (``restart``, ``maxRetryCount`` 0), mounts
    (binds), log config (``logDriver``, ``logOpts``), capabilities (``adds``/``drops``),
    security opts, memory (MiB -> bytes), cpus (-> NanoCPUs). ``init`` is sent only when set
    (unset: the daemon's default, false here).
  - Created on the default bridge, then disconnected from it and connected to every
    ``networksAdvanced`` entry with its aliases (``NetworkConnect``).
  - ``uploads``: each file as a one-entry tar copied to ``/`` (mode 0644, 0744 if executable).
  - Started (``start`` defaults to true). ``mustRun`` (default true): the container must be
    running afterwards. ``wait: true``: polls until the healthcheck says ``healthy``, fails on
    ``unhealthy`` or after ``waitTimeout`` seconds (default 60).
  - Updated in place (``ContainerUpdate``) only for restart, memory and cpus; every other
    changed input replaces the container.
  - Delete: with ``destroyGraceSeconds`` > 0, ``ContainerStop`` with that timeout (SIGTERM,
    then SIGKILL); without it no stop at all. Then ``ContainerRemove`` with ``force`` and
    ``RemoveVolumes`` (``removeVolumes`` defaults to true: ``docker rm -fv``, which removes
    the container's anonymous volumes only, never a named one), and wait until it is gone.

``pulumi-python:dynamic/docker:ProxyRoutes`` (components/docker/routes.py)
  - Not replayed: like the engine's dynamic provider host, the applier unpickles the rendered
    ``__provider`` and calls its create/diff/update/delete, with the proxy container's real id.

Pulumi engine
  - Resources are applied in dependency order (inputs' sources, ``depends_on``, and a parent
    component's dependencies), independent ones in parallel (``parallel``, the CLI's default of
    4 per CPU on 2 CPUs). A resource starts only once every dependency's step has finished: the SDK
    registers it after its dependencies' URNs resolve, which is when their create/update/replace
    returned (for a container with ``wait: true``, once it is healthy). That is how the Docker
    model's rollout chains (a tenant's container ``depends_on`` the previous tenant's) replace one
    tenant at a time.
  - A ``depends_on``-only dependent is not deleted or replaced along with a delete-before-replace of
    its dependency: Pulumi's ``calculateDependentReplacements`` follows property dependencies only.
  - A changed input that forces replacement replaces the resource: delete-then-create when the
    resource has ``deleteBeforeReplace`` (the render says so), otherwise create-then-delete
    (which fails on a taken name, as the real provider would).
  - Resources no longer rendered are deleted, dependents first; ``retainOnDelete`` skips the
    engine call. ``destroy()`` deletes everything the same way.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import pickle
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from openhands_cli.render import Rendered, Resource

IMAGE = "docker:index/remoteImage:RemoteImage"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
CONTAINER = "docker:index/container:Container"
# components/docker/routes.py's dynamic resource: not a provider replay. The engine's Python dynamic
# provider host unpickles ``__provider`` and calls it; this does the same, so its code is the real one.
ROUTES = "pulumi-python:dynamic/docker:ProxyRoutes"
# Registered by the program but not engine objects: nothing to apply.
NOT_APPLIED = ("pulumi:providers:docker", "random:index/randomPassword:RandomPassword")

# Engine API versions the Go client demands for a rendered field (client-side check).
FIELD_MIN_API = {"healthcheck.startInterval": "1.44"}
# Container inputs the provider updates in place; any other change replaces the container.
CONTAINER_UPDATABLE = {"restart", "maxRetryCount", "memory", "memorySwap", "cpuShares", "cpuSet", "cpus"}


class UnmappedField(AssertionError):
    """The render holds a field or resource type this applier does not reproduce."""


class ApplyError(RuntimeError):
    """What the provider would report as a failed create/delete."""


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
            "h": 3_600_000_000_000}


def go_duration_ns(text: str) -> int:
    """Go's time.ParseDuration, for the forms the provider accepts ("15s", "1m30s", "500ms")."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ApplyError(f"not a Go duration: {text!r}")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def mock_image_id(name: str) -> str:
    """The imageId the offline render gave a RemoteImage (openhands_cli/render.py's mock)."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class _Fields:
    """Hands out rendered inputs one by one and fails on any left unmapped."""

    def __init__(self, what: str, inputs: dict[str, Any]):
        self.what = what
        self.left = dict(inputs)

    def take(self, key: str, default: Any = None) -> Any:
        return self.left.pop(key, default)

    def done(self) -> None:
        if self.left:
            raise UnmappedField(
                f"{self.what}: rendered input(s) {sorted(self.left)} are not mapped by tests/harness/docker_apply.py"
            )


def _sub(what: str, value: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    extra = set(value) - set(known)
    if extra:
        raise UnmappedField(
            f"{what}: rendered field(s) {sorted(extra)} are not mapped by tests/harness/docker_apply.py"
        )
    return value


@dataclass
class Applied:
    """What the applier holds for one resource, as Pulumi's state would."""

    urn: str
    type: str
    name: str
    inputs: dict[str, Any]  # as rendered (secrets unwrapped), image ids still the render's
    resolved: dict[str, Any]  # what was sent: render ids replaced by real ones
    id: str
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    dependencies: set[str] = field(default_factory=set)
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    op: str  # create | update | replace | delete | forget (retainOnDelete) | same
    type: str
    name: str
    seconds: float = 0.0


class Applier:
    """Pulumi state plus the provider, for one stack on one engine.

    ``up(rendered)`` converges the engine on the render; ``destroy()`` removes what ``up``
    made (volumes with ``retainOnDelete`` stay). State lives in memory; a new ``Applier``
    is a fresh stack (e.g. after ``pulumi destroy`` + ``pulumi stack rm``)."""

    def __init__(self, client: docker.DockerClient, parallel: int = 8):
        self.client = client
        self.api_version: str = client.api.api_version
        self.state: dict[str, Applied] = {}
        self.parallel = parallel
        self._local = threading.local()
        self._lock = threading.Lock()
        self.real_image_ids: dict[str, str] = {}  # the render's mock imageId -> the engine's id

    # ------------------------------------------------------------------ plumbing

    @property
    def api(self) -> docker.APIClient:
        # One low-level client per thread: parallel steps share no HTTP connection.
        api = getattr(self._local, "api", None)
        if api is None:
            api = docker.APIClient(version=self.api_version, timeout=300, **docker.utils.kwargs_from_env())
            self._local.api = api
        return api

    def _require_api(self, field_path: str) -> None:
        need = FIELD_MIN_API.get(field_path)
        if need and _version(self.api_version) < _version(need):
            raise ApplyError(f'"{field_path}" requires API version {need}, but the Docker daemon API version is '
                             f"{self.api_version}")

    # ------------------------------------------------------------------ pulumi engine

    @staticmethod
    def _engine_resources(rendered: Rendered) -> list[Resource]:
        out = []
        for r in rendered.resources:
            if not r.custom or r.type in NOT_APPLIED:
                continue
            if r.type not in (IMAGE, NETWORK, VOLUME, CONTAINER, ROUTES):
                raise UnmappedField(f"resource type {r.type} ({r.name}) is not mapped by tests/harness/docker_apply.py")
            out.append(r)
        return out

    @staticmethod
    def _effective_deps(rendered: Rendered, applied: list[Resource]) -> dict[str, set[str]]:
        """Each engine resource's dependencies among engine resources: its own, its ancestors'
        (a component registers only after its dependencies are done), with components
        expanded to their custom descendants."""
        by_urn = {r.urn: r for r in rendered.resources}
        engine = {r.urn for r in applied}

        def ancestors(r: Resource) -> list[Resource]:
            out = []
            while r.parent in by_urn:
                r = by_urn[r.parent]
                out.append(r)
            return out

        def descendants(urn: str) -> set[str]:
            return {r.urn for r in applied if urn in {a.urn for a in ancestors(r)}}

        deps: dict[str, set[str]] = {}
        for r in applied:
            raw = set(r.dependencies)
            for a in ancestors(r):
                raw |= set(a.dependencies)
            out: set[str] = set()
            for d in raw:
                if d in engine:
                    out.add(d)
                elif d in by_urn and not by_urn[d].custom:
                    out |= descendants(d)
            out.discard(r.urn)
            deps[r.urn] = out
        return deps

    def _run_dag(self, items: list[str], deps: dict[str, set[str]], fn: Callable[[str], None]) -> None:
        """Run ``fn`` on every item once all its deps (within ``items``) are done; parallel."""
        pending = set(items)
        done: set[str] = set()
        futures: dict[concurrent.futures.Future, str] = {}
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as pool:
            while pending or futures:
                if not errors:
                    for urn in sorted(pending):
                        if not (deps.get(urn, set()) & set(items)) - done:
                            pending.discard(urn)
                            futures[pool.submit(fn, urn)] = urn
                else:
                    pending.clear()
                if not futures:
                    if pending:
                        raise ApplyError(f"dependency cycle among {sorted(pending)}")
                    break
                finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in finished:
                    urn = futures.pop(f)
                    if f.exception() is not None:
                        errors.append(f.exception())
                    else:
                        done.add(urn)
        if errors:
            raise errors[0]

    def up(self, rendered: Rendered) -> list[Step]:
        """``pulumi up``: create, update, replace and delete until the engine matches the render."""
        resources = self._engine_resources(rendered)
        deps = self._effective_deps(rendered, resources)
        by_urn = {r.urn: r for r in resources}
        steps: list[Step] = []

        def converge(urn: str) -> None:
            r = by_urn[urn]
            t0 = time.monotonic()
            old = self.state.get(urn)
            resolved = self._resolve(r)
            if old is None:
                op = "create"
                self._create(r, resolved, deps[urn])
            elif old.resolved == resolved:
                op = "same"
            else:
                changed = {k for k in set(old.resolved) | set(resolved) if old.resolved.get(k) != resolved.get(k)}
                if r.type == CONTAINER and changed <= CONTAINER_UPDATABLE:
                    op = "update"
                    self._update_container(old, resolved)
                    old.inputs, old.resolved = r.inputs, resolved
                elif r.type == ROUTES:
                    op = "update"  # its diff never asks for a replacement
                    provider = _dynamic_provider(r)
                    assert not provider.diff(old.id, old.resolved, resolved).replaces
                    olds = {k: v for k, v in old.outputs.items() if k != "__provider"}
                    old.outputs = {**(provider.update(old.id, olds, resolved).outs or {}),
                                   "__provider": r.inputs["__provider"]}
                    old.inputs, old.resolved = r.inputs, resolved
                elif r.delete_before_replace:
                    op = "replace"
                    self._delete(old)
                    self._create(r, resolved, deps[urn])
                else:
                    op = "replace"
                    previous = old
                    self._create(r, resolved, deps[urn])  # fails on a taken name, as the provider does
                    self._delete(previous)
            with self._lock:
                steps.append(Step(op, r.type, r.name, time.monotonic() - t0))

        self._run_dag(list(by_urn), deps, converge)

        gone = [urn for urn in self.state if urn not in by_urn]
        self._delete_many(gone, steps)
        return steps

    def destroy(self) -> list[Step]:
        """``pulumi destroy``: delete everything, dependents first; retained volumes stay."""
        steps: list[Step] = []
        self._delete_many(list(self.state), steps)
        return steps

    def _delete_many(self, urns: list[str], steps: list[Step]) -> None:
        # Reverse dependencies: a resource goes only after everything that depends on it.
        rdeps = {u: {v for v in urns if u in self.state[v].dependencies} for u in urns}

        def delete(urn: str) -> None:
            t0 = time.monotonic()
            res = self.state[urn]
            self._delete(res)
            with self._lock:
                steps.append(Step("forget" if res.retain_on_delete else "delete", res.type, res.name,
                                  time.monotonic() - t0))

        self._run_dag(urns, rdeps, delete)

    # ------------------------------------------------------------------ provider: resolve

    def _resolve(self, r: Resource) -> dict[str, Any]:
        inputs = dict(r.inputs)
        if r.type == ROUTES:
            inputs.pop("__provider", None)
            # The render's container id is a mock: the engine passes the container's real one.
            (proxy,) = [a for a in self.state.values()
                        if a.type == CONTAINER and a.outputs.get("name") == inputs["containerName"]]
            inputs["containerId"] = proxy.id
        if r.type == CONTAINER and "image" in inputs:
            image = inputs["image"]
            if image in self.real_image_ids:
                inputs["image"] = self.real_image_ids[image]
            elif str(image).startswith("sha256:"):
                raise ApplyError(f"{r.name}: image id {image} comes from no RemoteImage applied here")
        return inputs

    def _create(self, r: Resource, resolved: dict[str, Any], deps: set[str]) -> None:
        if r.type == ROUTES:
            created = _dynamic_provider(r).create(resolved)
            rid, outputs = created.id, dict(created.outs or {})
            outputs["__provider"] = r.inputs["__provider"]
        else:
            create = {IMAGE: self._create_image, NETWORK: self._create_network, VOLUME: self._create_volume,
                      CONTAINER: self._create_container}[r.type]
            rid, outputs = create(r.name, resolved)
        with self._lock:
            self.state[r.urn] = Applied(
                urn=r.urn, type=r.type, name=r.name, inputs=r.inputs, resolved=resolved, id=rid,
                retain_on_delete=r.retain_on_delete, delete_before_replace=r.delete_before_replace,
                dependencies=set(deps), outputs=outputs,
            )

    def _delete(self, res: Applied) -> None:
        if res.type == ROUTES:
            provider = pickle.loads(base64.b64decode(res.outputs["__provider"]))  # noqa: S301 - our own render
            provider.delete(res.id, {k: v for k, v in res.outputs.items() if k != "__provider"})
        elif not res.retain_on_delete:
            {IMAGE: self._delete_image, NETWORK: self._delete_network, VOLUME: self._delete_volume,
             CONTAINER: self._delete_container}[res.type](res)
        with self._lock:
            if self.state.get(res.urn) is res:
                del self.state[res.urn]

    # ------------------------------------------------------------------ provider: images

    def _create_image(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        f = _Fields(f"{IMAGE} {name}", inputs)
        ref = f.take("name")
        keep_locally = bool(f.take("keepLocally", False))
        f.done()
        try:
            info = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            raise ApplyError(f"image {ref} is not on this engine and registries are unreachable: "
                             "run scripts/docker-images") from None
        with self._lock:
            self.real_image_ids[mock_image_id(ref)] = info["Id"]
        return info["Id"], {"imageId": info["Id"], "keepLocally": keep_locally, "ref": ref}

    def _delete_image(self, res: Applied) -> None:
        if not res.outputs.get("keepLocally"):
            self.api.remove_image(res.outputs["ref"])

    # ------------------------------------------------------------------ provider: networks, volumes

    def _create_network(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        f = _Fields(f"{NETWORK} {name}", inputs)
        net_name = f.take("name")
        driver = f.take("driver")
        options = f.take("options")
        internal = bool(f.take("internal", False))
        attachable = f.take("attachable")
        ipv6 = bool(f.take("ipv6", False))
        labels = {x["label"]: x["value"] for x in f.take("labels", []) or []}
        f.done()
        out = self.api.create_network(net_name, driver=driver, options=options, check_duplicate=True,
                                      internal=internal, labels=labels or None, enable_ipv6=ipv6,
                                      attachable=attachable)
        return out["Id"], {"name": net_name}

    def _delete_network(self, res: Applied) -> None:
        try:
            self.api.remove_network(res.id)
        except docker.errors.NotFound:
            pass

    def _create_volume(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        f = _Fields(f"{VOLUME} {name}", inputs)
        vol_name = f.take("name")
        driver = f.take("driver")
        driver_opts = f.take("driverOpts")
        labels = {x["label"]: x["value"] for x in f.take("labels", []) or []}
        f.done()
        out = self.api.create_volume(vol_name, driver=driver, driver_opts=driver_opts, labels=labels or None)
        return out["Name"], {"name": out["Name"]}

    def _delete_volume(self, res: Applied) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.api.remove_volume(res.id, force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:  # in use
                    raise
                time.sleep(0.5)

    # ------------------------------------------------------------------ provider: containers

    def _container_body(self, name: str, inputs: dict[str, Any]) -> tuple[dict, dict]:
        """(create body, provider-only settings) in the provider's field order."""
        f = _Fields(f"{CONTAINER} {name}", inputs)
        what = f"{CONTAINER} {name}"
        config: dict[str, Any] = {"Image": f.take("image")}
        host: dict[str, Any] = {}
        extra: dict[str, Any] = {"name": f.take("name")}

        envs = f.take("envs")
        if envs:
            config["Env"] = list(envs)
        command = f.take("command")
        if command:
            if any(c == "" for c in command):
                raise ApplyError("values for command may not be empty")
            config["Cmd"] = list(command)
        entrypoint = f.take("entrypoints")
        if entrypoint:
            config["Entrypoint"] = list(entrypoint)
        user = f.take("user")
        if user:
            config["User"] = user
        ports = f.take("ports") or []
        if ports:
            exposed, bindings = {}, {}
            for p in ports:
                _sub(f"{what} ports", p, ("internal", "external", "ip", "protocol"))
                key = f"{int(p['internal'])}/{p.get('protocol', 'tcp')}"
                exposed[key] = {}
                binding = {"HostIp": p.get("ip", "0.0.0.0"),
                           "HostPort": str(int(p["external"])) if p.get("external") is not None else ""}
                bindings.setdefault(key, []).append(binding)
            config["ExposedPorts"] = exposed
            host["PortBindings"] = bindings
        working_dir = f.take("workingDir")
        if working_dir:
            config["WorkingDir"] = working_dir
        binds, anon = [], {}
        for v in f.take("volumes") or []:
            _sub(f"{what} volumes", v, ("volumeName", "containerPath", "readOnly", "hostPath"))
            src = v.get("volumeName") or v.get("hostPath")
            if src:
                binds.append(f"{src}:{v['containerPath']}" + (":ro" if v.get("readOnly") else ""))
            else:
                anon[v["containerPath"]] = {}
        if anon:
            config["Volumes"] = anon
        labels = f.take("labels") or []
        if labels:
            config["Labels"] = {x["label"]: x["value"] for x in labels}
        hc = f.take("healthcheck")
        if hc:
            _sub(f"{what} healthcheck", hc, ("tests", "interval", "timeout", "startPeriod", "retries", "startInterval"))
            if "startInterval" in hc:
                self._require_api("healthcheck.startInterval")
            health: dict[str, Any] = {"Test": list(hc["tests"])}
            for key, api_key in (("interval", "Interval"), ("timeout", "Timeout"), ("startPeriod", "StartPeriod"),
                                 ("startInterval", "StartInterval")):
                if hc.get(key):
                    health[api_key] = go_duration_ns(hc[key])
            if hc.get("retries") is not None:
                health["Retries"] = int(hc["retries"])
            config["Healthcheck"] = health

        # HostConfig
        host["RestartPolicy"] = {"Name": f.take("restart", "no"), "MaximumRetryCount": int(f.take("maxRetryCount", 0))}
        if binds:
            host["Binds"] = binds
        host["LogConfig"] = {"Type": f.take("logDriver", "json-file")}
        caps = f.take("capabilities")
        if caps:
            _sub(f"{what} capabilities", caps, ("adds", "drops"))
            host["CapAdd"] = list(caps.get("adds") or []) or None
            host["CapDrop"] = list(caps.get("drops") or []) or None
        security = f.take("securityOpts")
        if security:
            host["SecurityOpt"] = list(security)
        memory = f.take("memory")
        if memory:
            host["Memory"] = int(memory) * 1024 * 1024
        cpus = f.take("cpus")
        if cpus:
            host["NanoCpus"] = int(round(float(cpus) * 1e9))
        log_opts = f.take("logOpts")
        if log_opts:
            host["LogConfig"]["Config"] = {k: str(v) for k, v in log_opts.items()}
        init = f.take("init")
        if init is not None:
            host["Init"] = bool(init)
        config["HostConfig"] = host

        networks = []
        for n in f.take("networksAdvanced") or []:
            _sub(f"{what} networksAdvanced", n, ("name", "aliases", "ipv4Address", "ipv6Address"))
            networks.append(n)
        extra["networks"] = networks
        uploads = []
        for u in f.take("uploads") or []:
            _sub(f"{what} uploads", u, ("file", "content", "contentBase64", "executable"))
            uploads.append(u)
        extra["uploads"] = uploads
        extra["start"] = bool(f.take("start", True))
        extra["must_run"] = bool(f.take("mustRun", True))
        extra["wait"] = bool(f.take("wait", False))
        extra["wait_timeout"] = float(f.take("waitTimeout", 60))
        extra["destroy_grace_seconds"] = int(f.take("destroyGraceSeconds", 0) or 0)
        extra["remove_volumes"] = bool(f.take("removeVolumes", True))
        f.done()
        return config, extra

    def _create_container(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        body, extra = self._container_body(name, inputs)
        api = self.api
        created = api.create_container_from_config(body, name=extra["name"])
        cid = created["Id"]
        outputs = {k: extra[k] for k in ("name", "destroy_grace_seconds", "remove_volumes")}
        try:
            if extra["networks"]:
                try:
                    api.disconnect_container_from_network(cid, "bridge")
                except docker.errors.APIError as exc:
                    if "is not connected" not in str(exc):
                        raise
                for n in extra["networks"]:
                    api.connect_container_to_network(cid, n["name"], aliases=n.get("aliases") or None,
                                                     ipv4_address=n.get("ipv4Address"),
                                                     ipv6_address=n.get("ipv6Address"))
            for u in extra["uploads"]:
                api.put_archive(cid, "/", _tar_one(u))
            if extra["start"]:
                api.start(cid)
            if extra["wait"]:
                self._wait_healthy(cid, extra["name"], extra["wait_timeout"])
            if extra["must_run"]:
                state = api.inspect_container(cid)["State"]
                if not state["Running"]:
                    raise ApplyError(f"container {extra['name']} failed to be in running state "
                                     f"(exit {state['ExitCode']}): {self._logs(cid)}")
        except BaseException:
            # The provider deletes a container it could not bring up (taint), then reports the error.
            api.remove_container(cid, v=True, force=True)
            raise
        return cid, outputs

    def _wait_healthy(self, cid: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self.api.inspect_container(cid)
            health = (info["State"].get("Health") or {}).get("Status")
            if health is None:
                raise ApplyError(f"container {name} has no healthcheck; wait needs one")
            if health == "healthy":
                return
            if health == "unhealthy":
                raise ApplyError(f"container {name} is unhealthy: {self._logs(cid)}")
            if not info["State"]["Running"]:
                raise ApplyError(f"container {name} exited ({info['State']['ExitCode']}): {self._logs(cid)}")
            if time.monotonic() > deadline:
                raise ApplyError(f"container {name} not healthy within {timeout:g} s")
            time.sleep(0.5)

    def _logs(self, cid: str) -> str:
        try:
            return self.api.logs(cid, tail=40).decode(errors="replace")
        except docker.errors.APIError:
            return ""

    def _update_container(self, old: Applied, resolved: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {}
        if "restart" in resolved:
            kwargs["restart_policy"] = {"Name": resolved["restart"],
                                        "MaximumRetryCount": int(resolved.get("maxRetryCount", 0))}
        if resolved.get("memory"):
            kwargs["mem_limit"] = int(resolved["memory"]) * 1024 * 1024
        if resolved.get("cpus"):
            kwargs["nano_cpus"] = int(round(float(resolved["cpus"]) * 1e9))
        self.api.update_container(old.id, **kwargs)

    def _delete_container(self, res: Applied) -> None:
        api = self.api
        try:
            grace = int(res.outputs.get("destroy_grace_seconds") or 0)
            if grace > 0:
                api.stop(res.id, timeout=grace)
            api.remove_container(res.id, v=bool(res.outputs.get("remove_volumes", True)), force=True)
        except docker.errors.NotFound:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                api.inspect_container(res.id)
            except docker.errors.NotFound:
                return
            time.sleep(0.1)
        raise ApplyError(f"container {res.outputs.get('name')} was not removed")

    # ------------------------------------------------------------------ lookups for tests

    def of_type(self, typ: str) -> list[Applied]:
        return [a for a in self.state.values() if a.type == typ]

    def named(self, name: str) -> Applied:
        (found,) = [a for a in self.state.values() if a.name == name]
        return found


def _dynamic_provider(r: Resource) -> Any:
    """What the engine's dynamic provider host does with ``__provider`` (a pickle, by reference to its class)."""
    return pickle.loads(base64.b64decode(r.inputs["__provider"]))  # noqa: S301 - our own render


def _tar_one(upload: dict[str, Any]) -> bytes:
    if "contentBase64" in upload and upload["contentBase64"]:
        data = base64.b64decode(upload["contentBase64"])
    else:
        data = str(upload.get("content", "")).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(upload["file"])
        info.size = len(data)
        info.mode = 0o744 if upload.get("executable") else 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
