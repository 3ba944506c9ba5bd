"""The user's path on Kubernetes, for real: ``openhands`` → the real Pulumi CLI → the real
pulumi-kubernetes provider → a real API server.

What is real: the operator CLI, the ``pulumi`` CLI 3.276.0 and ``pulumi-resource-kubernetes``
4.25.0 built by ``scripts/engine`` (diff, replace rules, server-side apply, await logic, the
state), kube-apiserver/controller-manager/scheduler/etcd from ``scripts/kube``.
What stands in, test-only:
- ``pulumi-resource-random`` is the stand-in built by ``scripts/random-standin`` (the proxy refuses
  the real plugin; users download the real one);
- kwok plays the node, so pods are marked Ready but nothing runs in them.
The Ingress status the provider's await waits for comes from the cluster's real controller when it has
one: ``scripts/kube start`` (CI's shared cluster) runs caddy-gateway, and the stacks then use its
IngressClass ``openhands-caddy``. A ``--no-node`` cluster (what tests/harness/real_kube.py starts when
``OPENHANDS_TEST_KUBECONFIG`` is unset) has no controller: there, and only there,
tests/harness/ingress_status.py stands in for its status publisher.
The claims bind to hostPath volumes the test pre-binds (the cluster has no provisioner).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import contract
from components import kubernetes as k8s_model
from components.config import parse
from tests.harness.docs_commands import run_as_written, section_commands
from tests.harness.ingress_status import IngressStatus
from tests.harness.real_engine import EngineProject, random_standin_bin
from tests.harness.real_node import CONTROLLER_CLASS, has_controller

pytest_plugins = ["tests.harness.real_engine", "tests.harness.real_kube"]

ROOT = Path(__file__).resolve().parents[3]
STACK = "k8s"
TENANTS = ["alpha", "beta", "gamma"]
SESSION = contract.SESSION_KEY_ENV
API = {"Service": "core/v1", "Ingress": "networking.k8s.io/v1", "PersistentVolumeClaim": "core/v1"}


@pytest.fixture(scope="session")
def random_standin() -> Path:
    """The directory holding the test-only ``pulumi-resource-random`` (built once, cached)."""
    return random_standin_bin()


@dataclass
class Deployed:
    """One stack copy of the project, aimed at the throwaway cluster in a namespace of its own."""

    project: EngineProject
    kube: Any
    stack: str
    namespace: str

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.project.openhands(*args, "-s", self.stack, timeout=timeout)

    def data(self) -> dict[str, Any]:
        return yaml.safe_load(self.project.stack_file(self.stack).read_text())

    def set(self, key: str, value: Any) -> None:
        """Edit the stack file as a user would (``openhands:<key>``; ``kubernetes.x`` merges into it)."""
        path = self.project.stack_file(self.stack)
        data = self.data()
        section, _, sub = key.partition(".")
        if sub:
            data["config"].setdefault(f"openhands:{section}", {})[sub] = value
        else:
            data["config"][f"openhands:{key}"] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def tenants(self) -> list[str]:
        return self.data()["config"]["openhands:tenants"]

    def names(self, tenant: str) -> dict[str, str]:
        data = self.data()["config"]
        cfg = parse({k.split(":", 1)[1]: json.dumps(v) for k, v in data.items()}, set(), self.stack)
        return k8s_model.names(tenant, cfg.kubernetes.object_prefix("openhands", self.stack))

    def bind(self, tenant: str) -> None:
        """A volume for the tenant's claim to bind to (the cluster has no provisioner)."""
        self.kube.volume_for(self.namespace, self.names(tenant)["claim"])

    def get(self, api: str, what: str) -> dict[str, Any] | None:
        return self.kube.get(f"{api}/namespaces/{self.namespace}/{what}")

    def sts(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/apis/apps/v1", f"statefulsets/{self.names(tenant)['workload']}")

    def claim(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/api/v1", f"persistentvolumeclaims/{self.names(tenant)['claim']}")

    def secret(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/api/v1", f"secrets/{self.names(tenant)['secret']}")

    def pod(self, tenant: str) -> dict[str, Any] | None:
        return self.get("/api/v1", f"pods/{self.names(tenant)['workload']}-0")

    def objects(self, tenant: str) -> dict[str, dict[str, Any] | None]:
        """Every object docs/kubernetes.md names for the tenant, as the API server has it."""
        n = self.names(tenant)
        return {
            "StatefulSet": self.sts(tenant),
            "Service": self.get("/api/v1", f"services/{n['service']}"),
            "Secret": self.secret(tenant),
            "ServiceAccount": self.get("/api/v1", f"serviceaccounts/{n['service_account']}"),
            "NetworkPolicy": self.get("/apis/networking.k8s.io/v1", f"networkpolicies/{n['network_policy']}"),
            "Ingress": self.get("/apis/networking.k8s.io/v1", f"ingresses/{n['ingress']}"),
        }


@pytest.fixture
def deploy(engine_project: EngineProject, kube, random_standin: Path) -> Iterator:
    """Factory: ``deploy(stack, tenants=None)`` aims a shipped stack at the throwaway cluster (the
    ambient KUBECONFIG, as a user would), in a fresh namespace, with volumes its claims can bind."""
    engine_project.env["KUBECONFIG"] = kube.cluster.kubeconfig
    engine_project.env["PATH"] = f"{random_standin}:{engine_project.env['PATH']}"
    made: list[tuple[Deployed, IngressStatus | None]] = []
    controller = has_controller(kube.client)  # caddy-gateway publishes the Ingress status itself

    def _deploy(stack: str, tenants: list[str] | None = None) -> Deployed:
        d = Deployed(engine_project, kube, stack, kube.namespace(stack))
        d.set("kubernetes.namespace", d.namespace)
        d.set("kubernetes.storageClass", kube.storage_class)
        if tenants is not None:
            d.set("tenants", tenants)
        for tenant in d.tenants():
            d.bind(tenant)
        publisher = None
        if controller:
            d.set("kubernetes.ingressClass", CONTROLLER_CLASS)
        else:
            publisher = IngressStatus(kube.client, d.namespace)
            publisher.start()
        made.append((d, publisher))
        return d

    yield _deploy
    for d, publisher in reversed(made):
        # Whatever a test left deployed goes (its namespace is deleted by the kube fixture).
        d.run("down", "--delete-data", "--yes")
        if publisher is not None:
            publisher.stop()


def ok(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
    return proc.stdout


def summary(out: str, op: str) -> dict[str, int]:
    """The operator's last line for an engine run: `<op> of stack 'k8s' done: 2 create, 9 same`."""
    m = re.search(rf"^{op} of stack '{STACK}' done: (.*)$", out, re.M)
    assert m, out
    if m.group(1) == "no changes":
        return {}
    return {k: int(n) for n, k in (part.split(" ", 1) for part in m.group(1).split(", "))}


def steps(out: str, type_: str) -> set[str]:
    """The operations the progress lines report for resources of one type (e.g. Secret: {'replace'})."""
    ops = set()
    for m in re.finditer(rf"^ \S+\s+(?:would )?([a-z-]+)(?:\.\.\.)?\s+{re.escape(type_)} ", out, re.M):
        ops.add(m.group(1))
    return ops


def secret_value(d: Deployed, tenant: str, key: str) -> str:
    import base64

    return base64.b64decode(d.secret(tenant)["data"][key]).decode()


def test_up_preview_rotate_down_and_up_again_through_the_real_provider(deploy) -> None:
    d = deploy(STACK, TENANTS)
    # 1. preview of a new stack: everything would be created, nothing is.
    pre = ok(d.run("preview"))
    assert steps(pre, "kubernetes:apps/v1:StatefulSet") == {"create"}
    assert d.sts("alpha") is None

    # 2. up: every tenant's StatefulSet ready (the provider waited for it), its claim bound to the
    #    pre-bound volume, the Ingress published; connect text for each tenant.
    up = ok(d.run("up"))
    created = summary(up, "up")
    assert set(created) == {"create"}, created
    for tenant in TENANTS:
        missing = [kind for kind, obj in d.objects(tenant).items() if obj is None]
        assert not missing, f"{tenant}: not on the API server under the documented names: {missing}"
        status = d.sts(tenant)["status"]
        assert status.get("readyReplicas") == 1 and status["currentRevision"] == status["updateRevision"]
        assert d.claim(tenant)["status"]["phase"] == "Bound"
        assert f"    Host:    https://{tenant}.agents.example.com" in up
    assert up.count("API Key: (hidden: add --show-secrets)") == len(TENANTS)
    first_pod = {t: d.pod(t)["metadata"]["uid"] for t in TENANTS}
    first_claim = {t: d.claim(t)["metadata"]["uid"] for t in TENANTS}
    unchanged = {t: {k: o["metadata"]["uid"] for k, o in d.objects(t).items() if k in ("Service", "Ingress")}
                 for t in TENANTS}
    # connect --show-secrets prints the keys the pods get; the state holds none of them in plain text.
    shown = ok(d.run("connect", "--show-secrets"))
    state = d.project.pulumi("stack", "export", "--stack", STACK).stdout
    for tenant in TENANTS:
        key = secret_value(d, tenant, SESSION.format(0))
        assert len(key) >= 32 and f"    API Key: {key}" in shown
        assert key not in state and secret_value(d, tenant, contract.SECRET_KEY_ENV) not in state
    api_key = secret_value(d, "alpha", SESSION.format(0))

    # 3. the second preview is empty (Pulumi's integration-test habit), and so is the second up.
    again = ok(d.run("preview"))
    assert set(summary(again, "preview")) <= {"same"}, again
    assert set(summary(ok(d.run("up")), "up")) <= {"same"}

    # 4. a storageSize change reaches no live object: the claim template is immutable and ignored
    #    after creation; the provider plans nothing and the claim keeps its size.
    d.set("kubernetes.storageSize", "20Gi")
    sized = ok(d.run("preview"))
    assert set(summary(sized, "preview")) <= {"same"}, sized
    assert d.claim("alpha")["spec"]["resources"]["requests"]["storage"] == "10Gi"

    # 5. rotate: new API keys through a replaced Secret, each tenant's pod rolled, the claims kept,
    #    the previous secret key still offered so stored secrets stay readable.
    old_secret_key = secret_value(d, "alpha", contract.SECRET_KEY_ENV)
    rotated = ok(d.run("rotate"))
    assert "keys.rotation: 0 -> 1" in rotated
    assert steps(rotated, "kubernetes:core/v1:Secret") >= {"replace"}, rotated
    assert "update" in steps(rotated, "kubernetes:apps/v1:StatefulSet"), rotated
    for tenant in TENANTS:
        assert d.pod(tenant)["metadata"]["uid"] != first_pod[tenant]
        assert d.claim(tenant)["metadata"]["uid"] == first_claim[tenant]
        now = {k: o["metadata"]["uid"] for k, o in d.objects(tenant).items() if k in ("Service", "Ingress")}
        assert now == unchanged[tenant], "no Service or Ingress is replaced by a rotation"
    for kind in ("Service", "Ingress", "PersistentVolumeClaim"):
        assert not {"replace", "create-replacement"} & steps(rotated, f"kubernetes:{API[kind]}:{kind}"), rotated
    assert secret_value(d, "alpha", SESSION.format(0)) != api_key
    assert secret_value(d, "alpha", SESSION.format(1)) == api_key  # clients holding it keep working
    assert secret_value(d, "alpha", contract.SECRET_KEY_ENV) != old_secret_key
    assert secret_value(d, "alpha", contract.PREVIOUS_SECRET_KEY_ENV.format(0)) == old_secret_key
    secret_value_before_down = secret_value(d, "alpha", contract.SECRET_KEY_ENV)

    # 6. down keeps the data: no resource left in the state, the claims and namespace stay, and the
    #    keys that decrypt the stored secrets are saved where it says.
    down = ok(d.run("down"))
    saved = re.search(r"its data volumes are kept, and the keys that decrypt them are saved in (\S+) ", down)
    assert saved, down
    assert Path(saved.group(1)).stat().st_mode & 0o777 == 0o600
    assert json.loads(Path(saved.group(1)).read_text())["alpha"][0] == secret_value_before_down
    assert d.project.resources(STACK) == []
    assert d.sts("alpha") is None
    assert {t: d.claim(t)["metadata"]["uid"] for t in TENANTS} == first_claim

    # 7. up again re-attaches the very same claims.
    ok(d.run("up"))
    assert {t: d.claim(t)["metadata"]["uid"] for t in TENANTS} == first_claim
    for tenant in TENANTS:
        assert d.sts(tenant)["status"].get("readyReplicas") == 1

    # 8. down --delete-data asks first; without a terminal to confirm on it changes nothing...
    unconfirmed = d.run("down", "--delete-data")
    assert unconfirmed.returncode == 2
    assert unconfirmed.stderr == "error: --delete-data deletes every tenant's data for good: confirm with --yes\n"
    assert d.sts("alpha") is not None and d.claim("alpha") is not None
    # ... and with --yes deletes the claims for good.
    gone = ok(d.run("down", "--delete-data", "--yes"))
    assert "its data is deleted" in gone
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
            (c := d.claim(t)) is not None and "deletionTimestamp" not in c["metadata"] for t in TENANTS):
        time.sleep(0.5)
    assert all((c := d.claim(t)) is None or "deletionTimestamp" in c["metadata"] for t in TENANTS)


def versions(d: Deployed, tenant: str) -> dict[str, tuple[str, str]]:
    """(uid, resourceVersion) of each of the tenant's objects: what any write would move."""
    return {k: (o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for k, o in d.objects(tenant).items() if o}


def test_adding_and_removing_a_tenant_touches_only_that_tenant(deploy) -> None:
    d = deploy(STACK, ["alpha", "beta"])
    ok(d.run("up"))
    before = {t: versions(d, t) for t in ("alpha", "beta")}

    d.set("tenants", ["alpha", "beta", "gamma"])
    d.bind("gamma")
    added = ok(d.run("up"))
    assert set(summary(added, "up")) == {"create", "same"}, added
    assert len(versions(d, "gamma")) == 6 and d.sts("gamma")["status"].get("readyReplicas") == 1
    assert {t: versions(d, t) for t in ("alpha", "beta")} == before

    d.set("tenants", ["alpha", "beta"])
    removed = ok(d.run("up"))
    assert set(summary(removed, "up")) == {"delete", "same"}, removed
    assert versions(d, "gamma") == {}
    assert d.claim("gamma") is not None, "a removed tenant's claim is kept (retainData)"
    assert {t: versions(d, t) for t in ("alpha", "beta")} == before


def test_promotion_for_real_dev_then_prod_through_a_stack_reference(deploy) -> None:
    dev = deploy("dev")
    ok(dev.run("up"))
    image = dev.data()["config"]["openhands:image"]
    prod = deploy("prod")
    up = ok(prod.run("up"))
    assert "would read" not in up
    outputs = json.loads(prod.project.pulumi("stack", "output", "--stack", "prod", "--json").stdout)
    assert outputs["promotedFrom"] == {"stack": "organization/openhands/dev", "image": image,
                                       "contractVersion": contract.CONTRACT_VERSION}
    for tenant in prod.tenants():
        (container,) = prod.sts(tenant)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image

    # dev now runs another contract (as after a merge that changed it): prod refuses, changes nothing.
    before = {t: versions(prod, t) for t in prod.tenants()}
    seeded = prod.project.helper("seed", "dev", json.dumps({"image": image, "contractVersion": "999"}))
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    refused = prod.run("up")
    assert refused.returncode != 0
    text = refused.stdout + refused.stderr
    assert "Traceback" not in text, text
    assert "runtime contract mismatch: 'organization/openhands/dev' ran contract version 999" in text, text
    assert {t: versions(prod, t) for t in prod.tenants()} == before

    # The emergency override deploys anyway and is recorded in prod's outputs.
    prod.set("promotion", {"fromStack": "organization/openhands/dev",
                           "emergencyOverride": {"image": image, "reason": "INC-1: dev cluster down"}})
    ok(prod.run("up"))
    outputs = json.loads(prod.project.pulumi("stack", "output", "--stack", "prod", "--json").stdout)
    assert "INC-1: dev cluster down" in json.dumps(outputs["promotionOverride"])


def test_render_to_writes_valid_manifests_and_never_the_keys(deploy, tmp_path: Path) -> None:
    import kubernetes_validate

    from tests.harness import checkov_runner

    d = deploy(STACK, ["alpha", "beta"])
    out = tmp_path / "rendered"
    d.set("kubernetes.renderTo", str(out))
    up = ok(d.run("up"))
    assert "the keys Secrets" in up and "are not written there" in up
    files = sorted(out.rglob("*.yaml"))
    manifests = [m for f in files for m in yaml.safe_load_all(f.read_text()) if m]
    kinds = sorted(m["kind"] for m in manifests)
    assert "Secret" not in kinds and kinds.count("StatefulSet") == 2, kinds
    assert d.sts("alpha") is None, "render mode applies nothing to the cluster"
    shown = ok(d.run("connect", "--show-secrets"))
    keys = re.findall(r"API Key: (\S+)", shown)
    assert len(keys) == 2
    blob = "".join(f.read_text() for f in files)
    assert not [k for k in keys if k in blob], "no key is written into the manifests"
    for m in manifests:
        kubernetes_validate.validate(m, kubernetes_validate.latest_version(), strict=True)
    report = checkov_runner.run(out)
    assert report["summary"]["parsing_errors"] == 0
    failed = {f["check_id"] for f in report["results"]["failed_checks"]}
    assert failed <= set(checkov_runner.skips()), sorted(failed - set(checkov_runner.skips()))


def test_rotate_raises_keys_rotation_by_one_then_runs_up_to_the_end(deploy) -> None:
    """Moved here from test_engine.py, where it could only reach the missing Docker plugin."""
    d = deploy(STACK, ["alpha"])
    ok(d.run("up"))
    session = [secret_value(d, "alpha", SESSION.format(0))]
    secret = [secret_value(d, "alpha", contract.SECRET_KEY_ENV)]
    for expected in (1, 2):
        out = ok(d.run("rotate"))
        assert f"keys.rotation: {expected - 1} -> {expected} (in Pulumi.{STACK}.yaml)" in out
        got = d.project.pulumi("config", "get", "--path", "openhands:keys.rotation", "--stack", STACK)
        assert got.stdout.strip() == str(expected)
        session.insert(0, secret_value(d, "alpha", SESSION.format(0)))
        secret.insert(0, secret_value(d, "alpha", contract.SECRET_KEY_ENV))
    data = d.secret("alpha")["data"]
    # Two session keys are accepted (this generation and the last); every older secret key is kept.
    assert sorted(k for k in data if k.startswith("OH_SESSION_API_KEYS_")) == [SESSION.format(0), SESSION.format(1)]
    assert secret_value(d, "alpha", SESSION.format(1)) == session[1]
    assert session[2] not in {secret_value(d, "alpha", k) for k in data}
    assert [secret_value(d, "alpha", contract.PREVIOUS_SECRET_KEY_ENV.format(i)) for i in (0, 1)] == secret[1:]
    rotated = d.project.stack_file(STACK).read_text()
    assert yaml.safe_load(rotated)["config"]["openhands:keys"] == {"rotation": 2}
    assert "encryptionsalt" not in rotated  # the only change is the counter


def test_key_rotation_commands_run_as_written(deploy) -> None:
    """docs/rotation.md's commands on a deployed k8s stack: `rotate` runs to the end; plain `pulumi up`
    needs the Python language host, which the proxy refuses (users have it with the CLI)."""
    import shlex

    commands = section_commands("Key rotation")
    assert commands == ["uv run openhands rotate -s <stack>", "pulumi config set --path keys.rotation N -s <stack>",
                        "pulumi up -s <stack>"]
    d = deploy(STACK, ["alpha"])
    ok(d.run("up"))
    before = secret_value(d, "alpha", SESSION.format(0))
    rotate = run_as_written(d.project, commands[0], STACK)
    assert "keys.rotation: 0 -> 1" in ok(rotate)
    assert secret_value(d, "alpha", SESSION.format(0)) != before
    assert secret_value(d, "alpha", SESSION.format(1)) == before
    assert run_as_written(d.project, commands[1], STACK).returncode == 0
    got = d.project.pulumi("config", "get", "--path", "keys.rotation", "--stack", STACK).stdout.strip()
    assert got == "2"
    # (It asks for confirmation on a terminal and refuses without one: give it a terminal.)
    up = run_as_written(d.project, f"script -qec {shlex.quote(commands[2])} /dev/null", STACK)
    assert up.returncode != 0
    assert "no language plugin 'pulumi-language-python' found" in up.stdout + up.stderr
