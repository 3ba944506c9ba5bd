"""cloud-init user data for the Docker VM (pure functions, no Pulumi).

The first boot:

1. waits for the EBS data volume (it is attached only after the instance runs) and finds
   it by the volume id, which Nitro instances expose as the NVMe serial;
2. formats it only when it carries no filesystem or partition table at all, so a
   retained or restored volume is never wiped;
3. mounts it at ``MOUNT_POINT`` through fstab (``nofail``: a missing disk must not stop
   the boot, and Docker refuses to start without it instead);
4. installs Docker from the distribution (``docker.io``) with its data-root on that
   disk, so the named state volumes the Docker model creates live there;
5. turns on unattended security upgrades and writes ``READY_MARKER``.

User data is readable by anyone allowed ``ec2:DescribeInstanceAttribute`` and from the
instance metadata service, so it carries no secret: keys reach the containers over SSH
through the Docker API.
"""

from __future__ import annotations

import json
import re
import shlex

import yaml

from components import contract

MOUNT_POINT = "/srv/openhands"
DOCKER_DATA_ROOT = f"{MOUNT_POINT}/docker"
FS_LABEL = "openhands-data"
# The attachment's device name. Nitro instances ignore it and show an NVMe device whose
# serial is the volume id; Xen instances (t2, m4) show it as /dev/xvdf.
DEVICE_NAME = "/dev/sdf"
READY_MARKER = "/var/lib/openhands/cloud-init.done"
SETUP_SCRIPT = "/usr/local/sbin/openhands-setup"
ATTACH_WAIT_SECONDS = 600

_VOLUME_ID_RE = re.compile(r"^vol-[0-9a-f]{8,17}$")


def nvme_by_id(volume_id: str) -> str:
    """The udev path of an EBS volume on a Nitro instance (serial = id without the dash)."""
    if not _VOLUME_ID_RE.match(volume_id):
        raise ValueError(f"{volume_id!r} is not an EBS volume id")
    return f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"


def setup_script(*, volume_id: str, ssh_user: str, mount_point: str = MOUNT_POINT) -> str:
    """The first-boot script: data disk, Docker on it, then the ready marker."""
    q = shlex.quote
    xen = "/dev/xvd" + DEVICE_NAME.removeprefix("/dev/sd")
    return f"""#!/bin/bash
# Rendered by openhands-deploy. Runs once per instance from cloud-init's runcmd.
set -euo pipefail
VOLUME_ID={q(volume_id)}
MOUNT={q(mount_point)}
CANDIDATES=({q(nvme_by_id(volume_id))} {q(xen)} {q(DEVICE_NAME)})

# 1. The volume is attached after the instance starts: wait for it.
dev=""
for _ in $(seq 1 {ATTACH_WAIT_SECONDS // 2}); do
  for c in "${{CANDIDATES[@]}}"; do
    if [ -b "$c" ]; then dev=$(readlink -f "$c"); break 2; fi
  done
  sleep 2
done
if [ -z "$dev" ]; then
  echo "openhands: data volume $VOLUME_ID is not attached after {ATTACH_WAIT_SECONDS}s" >&2
  exit 1
fi

# 2. Format only a blank disk. blkid -p exits 0 when it finds any filesystem or
#    partition table, 2 when it finds nothing; anything else is an error: stop.
set +e
blkid -p "$dev" >/dev/null 2>&1
rc=$?
set -e
case $rc in
  0) echo "openhands: keeping the existing data on $dev ($VOLUME_ID)" ;;
  2) echo "openhands: formatting the blank data volume $dev ($VOLUME_ID)"
     mkfs.ext4 -q -L {q(FS_LABEL)} "$dev" ;;
  *) echo "openhands: blkid failed ($rc) on $dev; refusing to format it" >&2; exit 1 ;;
esac

# 3. Mount through fstab, by UUID; nofail so a missing disk cannot stop the boot.
uuid=$(blkid -s UUID -o value "$dev")
mkdir -p "$MOUNT"
if ! grep -q "^UUID=$uuid " /etc/fstab; then
  echo "UUID=$uuid $MOUNT ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2" >> /etc/fstab
fi
systemctl daemon-reload
mountpoint -q "$MOUNT" || mount "$MOUNT"
mkdir -p {q(DOCKER_DATA_ROOT)}

# 4. Docker from the distribution, its data-root (daemon.json) on the data disk.
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3 4 5; do
  if apt-get update -q && apt-get install -y -q -o Dpkg::Options::=--force-confold docker.io; then break; fi
  [ "$attempt" = 5 ] && exit 1
  sleep 15
done
usermod -aG docker {q(ssh_user)}
systemctl enable --now docker
# The oldest engine the containers run on (the contract's): a too-old docker.io fails the boot
# clearly instead of the first container create.
api=$(docker version --format '{{{{.Server.APIVersion}}}}')
if [ "$(printf '%s\\n' {contract.DOCKER_MIN_API} "$api" | sort -V | head -n1)" != {contract.DOCKER_MIN_API} ]; then
  echo "openhands: docker.io speaks API $api; the containers need >= {contract.DOCKER_MIN_API} (Docker 20.10+)" >&2
  exit 1
fi
root=$(docker info --format '{{{{.DockerRootDir}}}}')
if [ "$root" != {q(DOCKER_DATA_ROOT)} ]; then
  echo "openhands: Docker data-root is $root, not the data volume" >&2
  exit 1
fi

# 5. Done: the deploy waits for this file.
mkdir -p "$(dirname {q(READY_MARKER)})"
date -u +%Y-%m-%dT%H:%M:%SZ > {q(READY_MARKER)}
echo "openhands: data volume $VOLUME_ID on $MOUNT, Docker API $api ready"
"""


CLOUD_INIT_WAIT = "cloud-init status --wait"


def readiness_script(
    *,
    mount_point: str = MOUNT_POINT,
    data_root: str = DOCKER_DATA_ROOT,
    marker: str = READY_MARKER,
    wait: str = CLOUD_INIT_WAIT,
) -> str:
    """What the deploy runs over SSH before it talks to Docker: fails unless cloud-init
    finished, the data volume is mounted *now* and Docker is up with its data-root on it.

    The marker alone is not enough: it lives on the root disk, so a data volume that did
    not mount on a later boot (fstab ``nofail``) would still pass, and the containers would
    start on an empty root-disk directory."""
    q = shlex.quote
    return f"""set -u
{wait} >/dev/null 2>&1 || true
fail() {{
  echo "openhands: $1" >&2
  echo "openhands: the end of /var/log/cloud-init-output.log:" >&2
  sudo -n tail -n 40 /var/log/cloud-init-output.log >&2 2>/dev/null || true
  exit 1
}}
[ -f {q(marker)} ] || fail "VM setup did not finish (no {marker})"
mountpoint -q {q(mount_point)} || fail "the data volume is not mounted at {mount_point}"
root=$(docker info --format '{{{{.DockerRootDir}}}}' 2>/dev/null) || fail "Docker is not running (docker info failed)"
[ "$root" = {q(data_root)} ] || fail "Docker's data-root is $root, not {data_root}"
on=$(findmnt -n -o TARGET --target "$root") || fail "findmnt cannot place $root"
[ "$on" = {q(mount_point)} ] || fail "Docker's data-root $root is on $on, not on the data volume ({mount_point})"
echo "openhands: data volume mounted at {mount_point}, Docker up with data-root $root (setup $(cat {q(marker)}))"
"""


def authorized_key_script(public_key: str) -> str:
    """Make ``public_key`` the only key the SSH user accepts (run over SSH as that user).

    The instance's EC2 key pair reaches ``authorized_keys`` only at its first boot, and a
    new key pair would replace the instance; so the key is delivered here instead, and a
    rotation needs no new instance."""
    key = public_key.strip()
    if not key or "\n" in key:
        raise ValueError("an SSH public key is one line")
    return f"""set -eu
umask 077
mkdir -p ~/.ssh
printf '%s\n' {shlex.quote(key)} > ~/.ssh/authorized_keys.openhands
mv ~/.ssh/authorized_keys.openhands ~/.ssh/authorized_keys
echo "openhands: authorized_keys holds the configured key only"
"""


def daemon_json() -> str:
    return json.dumps(
        {
            "data-root": DOCKER_DATA_ROOT,
            # Containers keep running while dockerd restarts (e.g. a security upgrade of docker.io).
            "live-restore": True,
            "log-driver": "json-file",
            "log-opts": {"max-size": "10m", "max-file": "5"},
        },
        indent=2,
    ) + "\n"


# Docker must never start on an empty root-disk directory where the data disk should be.
DOCKER_DROP_IN = f"""[Unit]
RequiresMountsFor={MOUNT_POINT}
"""

AUTO_UPGRADES = """APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
"""

class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the user data reads like the files it writes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def user_data(*, volume_id: str, ssh_user: str, mount_point: str = MOUNT_POINT) -> str:
    """The ``#cloud-config`` document for the VM."""
    doc = {
        "package_update": True,
        # Security fixes come from unattended-upgrades (its default origins are the
        # security pockets); a full upgrade at boot would only slow the first deploy.
        "package_upgrade": False,
        "packages": ["unattended-upgrades", "ca-certificates"],
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            {"path": "/etc/docker/daemon.json", "permissions": "0644", "content": daemon_json()},
            {
                "path": "/etc/systemd/system/docker.service.d/10-openhands-data.conf",
                "permissions": "0644",
                "content": DOCKER_DROP_IN,
            },
            {"path": "/etc/apt/apt.conf.d/20auto-upgrades", "permissions": "0644", "content": AUTO_UPGRADES},
            {
                "path": SETUP_SCRIPT,
                "permissions": "0755",
                "content": setup_script(volume_id=volume_id, ssh_user=ssh_user, mount_point=mount_point),
            },
        ],
        "runcmd": [[SETUP_SCRIPT]],
        "final_message": "openhands: cloud-init finished in $UPTIME s (marker " + READY_MARKER + ")",
    }
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)
