"""The VM over its life: replacing the instance or restoring the data volume, rotating the
SSH key, and the readiness check the deploy runs before it talks to Docker (run for real:
real `mountpoint`, `findmnt` and `docker` against this machine)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from components.docker import cloud_init
from openhands_cli.render import Rendered, render

INSTANCE = "aws:ec2/instance:Instance"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
COMMAND = "command:remote:Command"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice@laptop"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB alice@new-laptop"


@pytest.fixture(scope="module")
def vm() -> Rendered:
    return render("vm", overrides={"docker.vm.sshPublicKey": KEY_A})


# ----------------------------------------------------------------- replace order


def test_attachment_and_address_are_released_before_they_are_remade(vm: Rendered):
    """Replacing the instance (or restoring the volume) re-creates both. A volume attaches to
    one instance and an Elastic IP has one association: the old ones must go first, or the
    new attachment fails with VolumeInUse and the address ends up on neither instance."""
    attachment = vm.one(ATTACHMENT)
    association = vm.one(ASSOCIATION)
    assert attachment.delete_before_replace and association.delete_before_replace
    instance = vm.one(INSTANCE)
    assert attachment.inputs["stopInstanceBeforeDetaching"] is True  # clean unmount on detach
    assert attachment.inputs["instanceId"] and instance.urn in attachment.dependencies
    # The volume and the instance themselves keep create-before-delete: the old volume (kept
    # by retainData) stays until the restore is checked.
    assert not instance.delete_before_replace and not vm.one("aws:ebs/volume:Volume").delete_before_replace


def test_new_user_data_means_a_new_instance(vm: Rendered):
    """cloud-init's setup runs once per instance: a restored volume (new id in the user data)
    on the same instance would boot with nothing mounted. So new user data replaces it."""
    instance = vm.one(INSTANCE)
    assert instance.inputs["userDataReplaceOnChange"] is True
    snapshot = "snap-0123456789abcdef0"
    restored = render("vm", overrides={"docker.vm.sshPublicKey": KEY_A, "docker.vm.dataSnapshotId": snapshot})
    assert restored.one("aws:ebs/volume:Volume").inputs["snapshotId"] == snapshot


# ----------------------------------------------------------------- SSH key rotation


def test_a_new_ssh_key_does_not_replace_the_instance(vm: Rendered):
    rotated = render("vm", overrides={"docker.vm.sshPublicKey": KEY_B})
    before, after = vm.one(INSTANCE), rotated.one(INSTANCE)
    # keyName (the replaced key pair's name) is ignored; nothing else about the instance moves.
    assert "keyName" in after.ignore_changes and "ami" in after.ignore_changes
    assert {k: v for k, v in before.inputs.items() if k != "keyName"} == {
        k: v for k, v in after.inputs.items() if k != "keyName"}
    assert rotated.one("aws:ec2/keyPair:KeyPair").inputs["publicKey"] == KEY_B
    # The key reaches the VM over SSH instead, as the deploy's last step.
    deliver = rotated.one(COMMAND, "vm-authorized-key")
    assert KEY_B in deliver.inputs["create"] and KEY_A not in deliver.inputs["create"]
    containers = [r.urn for r in rotated.of_type("docker:index/container:Container")]
    assert containers and set(containers) <= set(deliver.dependencies)
    assert rotated.one(COMMAND, "vm-cloud-init").urn in deliver.dependencies


def test_authorized_key_script_for_real(tmp_path: Path):
    """Run as the SSH user would: the configured key becomes the only one, private modes."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text(KEY_A + "\n")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    for key in (KEY_B, KEY_B):  # twice: idempotent
        run = subprocess.run(["bash", "-c", cloud_init.authorized_key_script(key)], env=env,
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    keys = home / ".ssh" / "authorized_keys"
    assert keys.read_text() == KEY_B + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        cloud_init.authorized_key_script(KEY_A + "\n" + KEY_B)


# ----------------------------------------------------------------- readiness


def readiness(tmp_path: Path, *, mount_point: str, data_root: str, env: dict[str, str] | None = None):
    marker = tmp_path / "cloud-init.done"
    marker.write_text("2026-11-22T08:00:00Z\n")
    # This machine has cloud-init installed but never booted with it: its `status --wait`
    # would wait forever. Everything after the wait runs as rendered.
    script = cloud_init.readiness_script(mount_point=mount_point, data_root=data_root, marker=str(marker), wait="true")
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **(env or {})}
    return subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=60)


def test_the_deploy_runs_the_rendered_readiness_check(vm: Rendered):
    ready = vm.one(COMMAND, "vm-cloud-init")
    assert ready.inputs["create"] == cloud_init.readiness_script()
    for piece in (f"mountpoint -q {cloud_init.MOUNT_POINT}", "docker info", cloud_init.DOCKER_DATA_ROOT,
                  "findmnt", cloud_init.READY_MARKER):
        assert piece in ready.inputs["create"]
    assert subprocess.run(["bash", "-n"], input=ready.inputs["create"], text=True).returncode == 0


def test_readiness_fails_when_the_data_volume_is_not_mounted(tmp_path: Path):
    """The marker is there (it is on the root disk), but the data volume did not mount:
    a real `mountpoint` on a plain directory says so, and Docker is never asked."""
    plain = tmp_path / "srv-openhands"
    plain.mkdir()
    run = readiness(tmp_path, mount_point=str(plain), data_root=f"{plain}/docker")
    assert run.returncode == 1
    assert f"the data volume is not mounted at {plain}" in run.stderr
    assert "Docker" not in run.stderr


def test_readiness_fails_without_the_marker(tmp_path: Path):
    script = cloud_init.readiness_script(mount_point="/", data_root="/x", marker=str(tmp_path / "missing"), wait="true")
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "VM setup did not finish" in run.stderr


def _docker_root() -> tuple[str, str]:
    """This machine's Docker data-root and the mount it lives on (a real engine)."""
    from tests.harness.real_docker import engine

    root = engine().info()["DockerRootDir"]
    on = subprocess.run(["findmnt", "-n", "-o", "TARGET", "--target", root], capture_output=True, text=True,
                        check=True).stdout.strip()
    return root, on


def test_readiness_fails_when_docker_is_not_running(tmp_path: Path):
    """A real `docker info` against an engine that is not there."""
    run = readiness(tmp_path, mount_point="/", data_root="/var/lib/docker",
                    env={"DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"})
    assert run.returncode == 1 and "Docker is not running" in run.stderr


def test_readiness_with_a_real_engine(tmp_path: Path):
    root, on = _docker_root()
    ok = readiness(tmp_path, mount_point=on, data_root=root)
    assert ok.returncode == 0, ok.stderr
    assert f"data volume mounted at {on}, Docker up with data-root {root}" in ok.stdout
    # Docker up, but its data-root is not the one on the data volume.
    wrong = readiness(tmp_path, mount_point=on, data_root="/srv/openhands/docker")
    assert wrong.returncode == 1 and f"Docker's data-root is {root}" in wrong.stderr
    # Docker up on the right path, but that path is not on the data volume's mount: any other real
    # mount point stands in for the data volume (`/` when the data-root has its own mount, else /proc).
    other = "/" if on != "/" else "/proc"
    off = readiness(tmp_path, mount_point=other, data_root=root)
    assert off.returncode == 1, off.stdout
    assert f"Docker's data-root {root} is on {on}, not on the data volume ({other})" in off.stderr
