"""The `vm` stack: the Docker model on an EC2 VM, rendered offline and checked with real tools.

cloud-init's own schema validator, Caddy's validate/adapt, a real loop device for the
data-disk script, and the real agent server behind the real Caddy with the rendered
certificate layout.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components import contract
from components.config import ConfigError, VmSettings
from components.docker import caddy, cloud_init, local
from components.docker.vm import ami_filter, sslip_host
from openhands_cli import render as render_mod
from openhands_cli.render import Rendered, imported_sdks_for, render
from tests.harness import env_of
from tests.harness.agent_server import free_port
from tests.harness.caddy_proxy import caddy_binary
from tests.harness.ci import unavailable

CONTAINER = "docker:index/container:Container"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
SG = "aws:ec2/securityGroup:SecurityGroup"
SELFSIGNED = {"docker.domain": None, "docker.acmeEmail": None}
WORLD = {"0.0.0.0/0", "::/0"}

STACK = "vm"
THREE = ["alice", "bob", "carol"]


def agent_containers(rendered: Rendered) -> list:
    return [c for c in rendered.of_type(CONTAINER)
            if {"label": "dev.openhands.role", "value": contract.ROLE} in c.inputs.get("labels", [])]


@pytest.fixture(scope="module")
def selfsigned() -> Rendered:
    return render("vm", overrides={"tenants": THREE, **SELFSIGNED})


# ----------------------------------------------------------------- cloud-init


def cloud_init_schema(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "user-data.yaml"
    f.write_text(text)
    return subprocess.run(["cloud-init", "schema", "--config-file", str(f), "--annotate"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("fixture", ["one", "three", "selfsigned"])
def test_user_data_passes_cloud_init_schema(fixture, request, tmp_path):
    rendered: Rendered = request.getfixturevalue(fixture)
    user_data = rendered.one(INSTANCE).inputs["userData"]
    assert user_data.startswith("#cloud-config\n")
    result = cloud_init_schema(user_data, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_rejects_a_broken_document(tmp_path):
    # Control: the validator really bites (wrong types, unknown write_files key).
    result = cloud_init_schema("#cloud-config\npackages: docker.io\nwrite_files:\n- path: /x\n  mode: 1\n", tmp_path)
    assert result.returncode != 0


def test_user_data_sets_up_the_data_disk_and_docker(three: Rendered):
    volume = three.one(VOLUME)
    doc = yaml.safe_load(three.one(INSTANCE).inputs["userData"])
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    script = files[cloud_init.SETUP_SCRIPT]
    assert doc["runcmd"] == [[cloud_init.SETUP_SCRIPT]]
    # The disk is found by its own volume id (the NVMe serial), never by guessing.
    vid = three.outputs["dataVolumeId"]
    assert vid.startswith("vol-") and f"Amazon_Elastic_Block_Store_{vid.replace('-', '')}" in script
    assert volume.inputs["tags"][cloud_init_tag()] == "openhands-vm"  # project-stack
    assert "nofail" in script and cloud_init.MOUNT_POINT in script
    assert "apt-get install -y -q -o Dpkg::Options::=--force-confold docker.io" in script
    assert json.loads(files["/etc/docker/daemon.json"])["data-root"] == cloud_init.DOCKER_DATA_ROOT
    assert cloud_init.DOCKER_DATA_ROOT.startswith(cloud_init.MOUNT_POINT + "/")
    assert f"RequiresMountsFor={cloud_init.MOUNT_POINT}" in files[
        "/etc/systemd/system/docker.service.d/10-openhands-data.conf"]
    assert "unattended-upgrades" in doc["packages"]
    assert 'APT::Periodic::Unattended-Upgrade "1";' in files["/etc/apt/apt.conf.d/20auto-upgrades"]
    assert cloud_init.READY_MARKER in script and "final_message" in doc
    # The deploy waits for exactly that marker.
    wait = three.one("command:remote:Command", "vm-cloud-init")
    assert "cloud-init status --wait" in wait.inputs["create"] and cloud_init.READY_MARKER in wait.inputs["create"]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def cloud_init_tag() -> str:
    from components.docker.vm import SNAPSHOT_TAG

    return SNAPSHOT_TAG


def test_data_disk_is_formatted_once_and_never_again(tmp_path):
    """Run the rendered script's disk steps (1-3) against a real block device, twice.

    Rewrites, as a test double for the VM: the device candidates point at a loop device,
    /etc/fstab is a temp file bind-mounted in a private mount namespace, systemctl is a no-op.
    """
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("unshare"):
        unavailable("needs root, losetup and unshare for a real loop device")
    vid = "vol-0123456789abcdef0"
    script = cloud_init.setup_script(volume_id=vid, ssh_user="ubuntu", mount_point=str(tmp_path / "mnt"))
    disk_part = script.split("# 4. Docker")[0]
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    os.truncate(img, 64 * 1024 * 1024)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (shims / "systemctl").chmod(0o755)
    try:
        candidates = [line for line in disk_part.splitlines() if line.startswith("CANDIDATES=")]
        assert len(candidates) == 1 and cloud_init.nvme_by_id(vid) in candidates[0]
        disk_part = disk_part.replace(candidates[0], f"CANDIDATES=({loop})")

        def boot(name: str, check: str) -> str:
            fstab = tmp_path / f"fstab-{name}"
            fstab.write_text("# fresh instance\n")
            body = disk_part + f"\n{check}\ncat /etc/fstab\numount {tmp_path / 'mnt'}\n"
            wrapper = f"mount --make-rprivate / && mount --bind {fstab} /etc/fstab && bash -c {_q(body)}"
            out = subprocess.run(["unshare", "-m", "bash", "-c", wrapper], capture_output=True, text=True,
                                 env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout

        first = boot("first", f"echo conversation > {tmp_path / 'mnt' / 'state.json'}")
        assert "formatting the blank data volume" in first
        assert f"{tmp_path / 'mnt'} ext4 defaults,nofail" in first
        # A replacement instance (fresh fstab) with the retained volume: nothing is wiped.
        second = boot("second", f"cat {tmp_path / 'mnt' / 'state.json'}")
        assert "keeping the existing data" in second and "formatting" not in second
        assert "conversation" in second
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_user_data_carries_no_secret(three: Rendered):
    user_data = three.one(INSTANCE).inputs["userData"]
    for key in three.outputs["apiKey"].values():
        assert key not in user_data
    assert "PRIVATE KEY" not in user_data


# ----------------------------------------------------------------- the VM


def test_instance_requires_imdsv2_and_encrypts_both_volumes(one: Rendered):
    inst = one.one(INSTANCE)
    assert inst.inputs["metadataOptions"]["httpTokens"] == "required"
    assert inst.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert inst.inputs["rootBlockDevice"]["encrypted"] is True
    data = one.one(VOLUME)
    assert data.inputs["encrypted"] is True
    assert data.inputs["size"] == 50 and data.inputs["type"] == "gp3"
    assert inst.inputs["tags"]["dev.openhands.role"] == contract.ROLE
    att = one.one("aws:ec2/volumeAttachment:VolumeAttachment")
    assert att.inputs["deviceName"] == cloud_init.DEVICE_NAME


def test_data_volume_survives_destroy_unless_opted_out(one: Rendered):
    assert one.one(VOLUME).retain_on_delete
    opted_out = render("vm", overrides={"retainData": False})
    assert not opted_out.one(VOLUME).retain_on_delete


@pytest.mark.parametrize(("settings", "owner", "pattern", "arch"), [
    ({}, "099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*", "x86_64"),
    ({"docker.vm.os": "debian-13", "docker.vm.instanceType": "m7gd.xlarge"}, "136693071363", "debian-13-arm64-*",
     "arm64"),
])
def test_the_instance_boots_the_image_the_lookup_asks_aws_for(monkeypatch: pytest.MonkeyPatch, settings: dict,
                                                              owner: str, pattern: str, arch: str):
    """What the program asks aws.ec2.get_ami for (owners, newest, filters), and that the instance runs
    the image AWS answers with: each distinct question gets a distinct made-up image id."""
    asked: list[dict] = []

    def get_ami(args: dict) -> dict:
        asked.append(args)
        image = "ami-" + hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:17]
        return {"id": image, "imageId": image, "name": pattern.replace("*", "20261101"), "architecture": arch}

    monkeypatch.setitem(render_mod.CALL_RESULTS, "aws:ec2/getAmi:getAmi", get_ami)
    rendered = render("vm", overrides=settings)
    [args] = asked
    assert args["owners"] == [owner] and args["mostRecent"] is True
    assert {f["name"]: f["values"] for f in args["filters"]} == {
        "name": [pattern], "architecture": [arch], "virtualization-type": ["hvm"], "root-device-type": ["ebs"]}
    assert rendered.one(INSTANCE).inputs["ami"] == get_ami(args)["id"]


def test_ami_lookup_follows_os_and_architecture():
    base = {"sshPublicKey": "ssh-ed25519 AAAA", "adminCidrs": ["203.0.113.7/32"]}
    assert ami_filter(VmSettings.model_validate(base)) == (
        "099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*")
    assert ami_filter(VmSettings.model_validate({**base, "instanceType": "t4g.large"}))[1].endswith(
        "-arm64-server-*")
    assert ami_filter(VmSettings.model_validate({**base, "os": "debian-13", "instanceType": "m7gd.xlarge"})) == (
        "136693071363", "debian-13-arm64-*")
    assert VmSettings.model_validate({**base, "instanceType": "g5.xlarge"}).architecture == "x86_64"
    assert VmSettings.model_validate({**base, "os": "debian-13"}).ssh_user == "admin"
    # Debian 12's docker.io 20.10 runs the containers (tests/real/docker/test_docker_real.py on a 20.10 engine).
    assert ami_filter(VmSettings.model_validate({**base, "os": "debian-12"})) == ("136693071363", "debian-12-amd64-*")


def test_boot_checks_the_engine_api_the_containers_need(three: Rendered):
    """The VM's boot refuses an engine older than the one the Docker model is tested on, and no newer."""
    doc = yaml.safe_load(three.one(INSTANCE).inputs["userData"])
    script = {f["path"]: f["content"] for f in doc["write_files"]}[cloud_init.SETUP_SCRIPT]
    assert contract.DOCKER_MIN_API == "1.41"
    assert "printf '%s\\n' 1.41 \"$api\" | sort -V | head -n1)\" != 1.41 ]" in script


def ingress_by_port(rendered: Rendered) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for rule in rendered.one(SG).inputs["ingress"]:
        assert rule["fromPort"] == rule["toPort"] and rule["protocol"] == "tcp"
        out.setdefault(rule["fromPort"], set()).update(rule.get("cidrBlocks") or [], rule.get("ipv6CidrBlocks") or [])
    return out


def test_security_group_opens_only_22_80_443(three: Rendered):
    rules = ingress_by_port(three)
    assert set(rules) == {22, 80, 443}
    assert rules[22] == {"203.0.113.7/32"}
    assert not rules[22] & WORLD
    assert rules[443] == rules[80] == WORLD  # ACME needs the world on 80/443
    restricted = render("vm", overrides={**SELFSIGNED, "docker.vm.ingressCidrs": ["198.51.100.0/24"],
                                         "docker.vm.adminCidrs": ["198.51.100.9/32", "2001:db8::/48"]})
    rules = ingress_by_port(restricted)
    assert rules == {443: {"198.51.100.0/24"}, 80: {"198.51.100.0/24"}, 22: {"198.51.100.9/32", "2001:db8::/48"}}


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        (None, "adminCidrs: is required"),
        ([], "adminCidrs: is required"),
        (["0.0.0.0/0"], "would open SSH (22) to the whole internet"),
        (["::/0"], "would open SSH (22) to the whole internet"),
        (["0.0.0.0/1"], "too wide for SSH"),
        (["203.0.113.7"], None),  # a bare address is a /32: accepted
        (["203.0.113.7/24"], "is not a CIDR block"),
        (["ssh-from-office"], "is not a CIDR block"),
    ],
)
def test_admin_cidr_errors_are_clear_and_register_nothing(admin, message):
    if message is None:
        rendered = render("vm", overrides={"docker.vm.adminCidrs": admin})
        assert ingress_by_port(rendered)[22] == {"203.0.113.7/32"}
        return
    with pytest.raises(ConfigError) as exc:
        render("vm", overrides={"docker.vm.adminCidrs": admin})
    text = str(exc.value)
    assert "openhands:docker.vm.adminCidrs" in text and message in text, text
    assert render_mod.registered_before(exc.value) == [], "a config error must register nothing"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"docker.acmeEmail": None}, "set 'acmeEmail', or set tls: selfsigned"),
        ({"docker.httpsPort": 8443}, "needs httpsPort 443 and httpPort 80"),
        ({"docker.vm.ingressCidrs": ["198.51.100.0/24"]}, "ingressCidrs to include 0.0.0.0/0"),
        ({"docker.tls": "internal"}, "tls 'internal' is for a local engine"),
        ({"docker.vm.sshPublicKey": None}, "sshPublicKey: is required"),
        ({"docker.vm.os": "debian-11"}, "debian-12"),
        ({**SELFSIGNED, "docker.httpPort": 22}, "cannot be 22"),
    ],
)
def test_other_vm_config_errors(overrides, message):
    with pytest.raises(ConfigError) as exc:
        render("vm", overrides=overrides)
    assert message in str(exc.value), str(exc.value)


def test_elastic_ip_dns_and_outputs(three: Rendered):
    assert three.one("aws:ec2/eip:Eip").inputs["domain"] == "vpc"
    assert three.outputs["publicIp"] == "203.0.113.10"
    assert three.outputs["url"] == {t: f"https://{t}.agents.example.com" for t in THREE}
    assert three.outputs["sshCommand"].startswith("ssh ") and three.outputs["sshCommand"].endswith(
        "ubuntu@203.0.113.10")
    assert "caCertificate" not in three.outputs  # ACME: public certificates
    assert not three.of_type("aws:route53/record:Record")
    zoned = render("vm", overrides={"tenants": THREE, "docker.vm.hostedZoneId": "Z0123456789ABCDEFGHIJ"})
    records = {r.inputs["name"]: r.inputs for r in zoned.of_type("aws:route53/record:Record")}
    assert set(records) == {f"{t}.agents.example.com" for t in THREE}
    assert all(r["type"] == "A" and r["records"] == ["203.0.113.10"] for r in records.values())


def test_daily_snapshots_of_the_data_volume(one: Rendered):
    policy = one.one("aws:dlm/lifecyclePolicy:LifecyclePolicy")
    details = policy.inputs["policyDetails"]
    tag = cloud_init_tag()
    assert details["targetTags"] == {tag: "openhands-vm"} and one.one(VOLUME).inputs["tags"][tag] == "openhands-vm"
    (schedule,) = details["schedules"]
    assert schedule["retainRule"]["count"] == 7 and schedule["createRule"]["interval"] == 24
    off = render("vm", overrides={"docker.vm.dailySnapshots": 0})
    assert not off.of_type("aws:dlm/lifecyclePolicy:LifecyclePolicy")


# ----------------------------------------------------------------- containers on the VM


def test_docker_reached_over_ssh_after_cloud_init(three: Rendered):
    provider = three.one("pulumi:providers:docker")
    assert provider.inputs["host"] == "ssh://ubuntu@203.0.113.10"
    opts = json.loads(provider.inputs["sshOpts"])
    assert "StrictHostKeyChecking=accept-new" in opts
    # Every Docker resource goes through that provider, none through the local engine.
    docker_resources = [r for r in three.resources if r.type.startswith("docker:")]
    assert docker_resources and all(r.provider.split("::")[-2] == provider.name for r in docker_resources)
    wait = three.one("command:remote:Command", "vm-cloud-init")
    assert wait.inputs["connection"]["host"] == "203.0.113.10"
    assert wait.inputs["connection"]["user"] == "ubuntu"


def test_same_containers_as_local_stack(three: Rendered):
    local = render("local", overrides={"tenants": THREE})

    def shape(rendered: Rendered) -> list:
        out = []
        for c in sorted(rendered.of_type(CONTAINER), key=lambda c: c.name):
            i = c.inputs
            spec = (c.name, i["command"], i.get("user"), i.get("healthcheck"), i.get("volumes"),
                    i.get("capabilities"), i.get("restart"))
            # Names carry the stack (openhands-<stack>-<tenant>-state); compare the rest.
            out.append(json.loads(json.dumps(spec).replace(f"openhands-{rendered.stack}-", "openhands-STACK-")))
        return out

    # Same resource names and container specs: DockerHost is reused, not copied.
    assert [s[0] for s in shape(three)] == [s[0] for s in shape(local)]
    assert [s[1:] for s in shape(three) if s[0] != "docker-proxy-caddy"] == [
        s[1:] for s in shape(local) if s[0] != "docker-proxy-caddy"]


def test_containers_have_healthchecks_and_keys_only_as_secrets(three: Rendered):
    servers = agent_containers(three)
    assert len(servers) == 3
    for c in servers:
        assert c.inputs["healthcheck"]["tests"] == local.healthcheck().tests  # the contract's check, start-aware
        assert c.is_secret("envs")
    keys = three.outputs["apiKey"]
    assert "apiKey" in three.secret_outputs and len(set(keys.values())) == 3
    for res in three.resources:
        plain = repr({k: v for k, v in res.inputs.items() if not res.is_secret(k)})
        for key in keys.values():
            assert key not in plain, f"{res.type} {res.name} carries a key in plain inputs"


def test_private_key_from_path_is_a_secret(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)  # ssh ignores a key others can read; config refuses it (tests/config/test_config_errors.py)
    rendered = render("vm", overrides={"docker.vm.sshPrivateKeyPath": str(key)})
    commands = rendered.of_type("command:remote:Command")
    assert sorted(c.name for c in commands) == ["vm-authorized-key", "vm-cloud-init"]
    for c in commands:
        assert c.inputs["connection"]["privateKey"] == key.read_text()
        assert c.is_secret("connection.privateKey")
    assert str(key) in json.loads(rendered.one("pulumi:providers:docker").inputs["sshOpts"])
    for res in rendered.resources:
        if res not in commands:
            assert "abc\n-----END" not in repr(res.inputs)
    with pytest.raises(ConfigError, match="sshPrivateKeyPath: cannot read"):
        render("vm", overrides={"docker.vm.sshPrivateKeyPath": str(tmp_path / "missing")})


def test_selfsigned_without_a_domain(selfsigned: Rendered):
    hosts = {t: sslip_host(t, "203.0.113.10") for t in THREE}
    assert selfsigned.outputs["url"] == {t: f"https://{h}" for t, h in hosts.items()}
    assert selfsigned.outputs["caCertificate"].startswith("-----BEGIN CERTIFICATE-----")
    ca = selfsigned.one("tls:index/selfSignedCert:SelfSignedCert")
    assert ca.inputs["isCaCertificate"] is True
    csr = selfsigned.one("tls:index/certRequest:CertRequest")
    assert csr.inputs["dnsNames"] == list(hosts.values()) and csr.inputs["ipAddresses"] == ["203.0.113.10"]
    leaf = selfsigned.one("tls:index/locallySignedCert:LocallySignedCert")
    assert "server_auth" in leaf.inputs["allowedUses"]
    caddy_c = selfsigned.one(CONTAINER, "docker-proxy-caddy")
    uploads = {u["file"]: u for u in caddy_c.inputs["uploads"]}
    assert set(uploads) == {caddy.CONFIG_PATH, caddy.CERT_PATH, caddy.KEY_PATH}
    key_index = [u["file"] for u in caddy_c.inputs["uploads"]].index(caddy.KEY_PATH)
    assert caddy_c.is_secret(f"uploads[{key_index}].contentBase64") or caddy_c.is_secret("uploads")
    assert "caCertificate" not in selfsigned.secret_outputs


# ----------------------------------------------------------------- Caddy, validated and run


def caddyfile_of(rendered: Rendered) -> str:
    (upload,) = [u for u in rendered.one(CONTAINER, "docker-proxy-caddy").inputs["uploads"]
                 if u["file"] == caddy.CONFIG_PATH]
    assert upload["content"] == rendered.outputs["caddyfile"]
    return upload["content"]


def make_certs(workdir: Path, dns: list[str], ips: list[str]) -> tuple[str, str, str]:
    """A real CA and leaf (openssl) for the rendered SANs: the mocks only yield fake PEMs."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, leaf, ext = (workdir / n for n in ("ca.key", "ca.pem", "leaf.key", "leaf.csr",
                                                              "leaf.pem", "ext.cnf"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj",
                    "/CN=OpenHands vm CA", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=openhands-vm"], check=True,
                   capture_output=True)
    sans = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", leaf, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return ca.read_text(), leaf.read_text(), key.read_text()


def caddy_check(caddyfile: str, workdir: Path, files: dict[str, str] | None = None) -> dict:
    """`caddy validate` and `caddy adapt` on the rendered file (cert paths moved to temp copies)."""
    workdir.mkdir(parents=True, exist_ok=True)
    text = caddyfile
    for path, content in (files or {}).items():
        local = workdir / Path(path).name
        local.write_text(content)
        text = text.replace(path, str(local))
    conf = workdir / "Caddyfile"
    conf.write_text(text)
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"),
           "XDG_CONFIG_HOME": str(workdir / "config")}
    valid = subprocess.run([caddy_binary(), "validate", "--config", str(conf), "--adapter", "caddyfile"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    adapted = subprocess.run([caddy_binary(), "adapt", "--config", str(conf), "--adapter", "caddyfile"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert adapted.returncode == 0, adapted.stderr
    return json.loads(adapted.stdout)


@pytest.mark.parametrize("fixture", ["one", "three"])
def test_acme_caddyfile_validates_and_uses_lets_encrypt(fixture, request, tmp_path):
    rendered: Rendered = request.getfixturevalue(fixture)
    config = caddy_check(caddyfile_of(rendered), tmp_path)
    tenants = list(rendered.outputs["url"])
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert sorted(policy["subjects"]) == sorted(f"{t}.agents.example.com" for t in tenants)
    assert any(i["module"] == "acme" and i.get("email") == "ops@example.com" for i in policy["issuers"]), policy
    routes = config["apps"]["http"]["servers"]["srv0"]["routes"]
    # The request-body limits run before the proxy in each site: find its reverse_proxy handler.
    upstreams = {r["match"][0]["host"][0]: next(h["upstreams"][0]["dial"] for s in r["handle"][0]["routes"]
                                                for h in s["handle"] if h["handler"] == "reverse_proxy")
                 for r in routes}
    assert upstreams == {f"{t}.agents.example.com": f"agent-{t}:{contract.PORT}" for t in tenants}


def test_selfsigned_caddyfile_validates_with_real_cert_files(selfsigned: Rendered, tmp_path):
    csr = selfsigned.one("tls:index/certRequest:CertRequest").inputs
    _, leaf, key = make_certs(tmp_path / "pki", csr["dnsNames"], csr["ipAddresses"])
    config = caddy_check(caddyfile_of(selfsigned), tmp_path / "caddy", {caddy.CERT_PATH: leaf, caddy.KEY_PATH: key})
    assert config["apps"]["tls"]["certificates"]["load_files"][0]["certificate"].endswith("cert.pem")


def test_real_agent_server_behind_real_caddy_with_the_vm_render(start_agent_server, run_caddy, tmp_path):
    https_port, http_port = free_port(), free_port()
    rendered = render("vm", overrides={"tenants": THREE, **SELFSIGNED, "docker.httpsPort": https_port,
                                       "docker.httpPort": http_port})
    spec = next(c for c in agent_containers(rendered) if c.name == "alice-agent-server")
    env = env_of(spec)
    server = start_agent_server(env, spec.inputs["command"])

    csr = rendered.one("tls:index/certRequest:CertRequest").inputs
    ca, leaf, key = make_certs(tmp_path / "pki", csr["dnsNames"], csr["ipAddresses"])
    cafile = tmp_path / "pki" / "ca.pem"
    dead = free_port()  # bob and carol have no server here: their hosts must not reach alice's
    upstreams = {f"agent-{t}:{contract.PORT}": f"127.0.0.1:{server.port if t == 'alice' else dead}" for t in THREE}
    alice, bob = (sslip_host(t, "203.0.113.10") for t in ("alice", "bob"))
    proxy = run_caddy(caddyfile_of(rendered), upstreams=upstreams, files={caddy.CERT_PATH: leaf, caddy.KEY_PATH: key},
                      wait_for_cert=alice)
    assert rendered.outputs["url"]["alice"] == f"https://{alice}:{https_port}"

    assert proxy.https(alice, contract.READINESS_PROBE.path, cafile) == (200, '{"status":"ready"}')
    api_key = rendered.outputs["apiKey"]["alice"]
    assert env["OH_SESSION_API_KEYS_0"] == api_key
    assert proxy.https(alice, "/api/conversations/count", cafile)[0] == 401
    assert proxy.https(alice, "/api/conversations/count", cafile, {contract.AUTH_HEADER: api_key}) == (200, "0")
    assert proxy.https(bob, contract.READINESS_PROBE.path, cafile)[0] == 502
    status, location = proxy.http(alice, "/ready")
    assert status in (301, 308) and location == f"https://{alice}:{https_port}/ready"
    # The certificate also names the Elastic IP, for clients that connect by address.
    assert ipaddress.ip_address(csr["ipAddresses"][0]) == ipaddress.ip_address("203.0.113.10")


def test_vm_program_imports_no_kubernetes_sdk():
    out = imported_sdks_for("vm")
    assert {"pulumi_aws", "pulumi_docker", "pulumi_command", "pulumi_tls"} <= set(out)
    assert "pulumi_kubernetes" not in out and "modal" not in out
