"""A private Docker daemon that a test may stop, crash and power-cycle (docs/faults.md, case 3).

The machine's dockerd is shared by the whole suite, so it is never signalled. This module starts a
second one, the same ``dockerd`` binary, with everything of its own under one temp dir
(``/tmp/ohpd-XXXX``, short because unix socket paths are capped at 108 bytes):

- ``data/`` (``--data-root``: images, containers, volumes; its managed containerd's root is
  ``data/containerd/daemon``), ``exec/`` (``--exec-root``: its managed containerd, started by dockerd
  with ``exec/containerd/containerd.toml`` and socket ``exec/containerd/containerd.sock``, so it never
  meets the machine's ``/run/containerd`` or ``/var/run/docker/containerd``), ``dockerd.pid``,
  ``docker.sock`` (``-H unix://...``), ``daemon.json`` (``--config-file``: the machine's
  ``/etc/docker/daemon.json`` is never read; it holds ``live-restore``, so a SIGHUP applies a change
  as ``systemctl reload docker`` would), ``dockerd.log``;
- ``netns``: a network namespace of its own (``unshare --net=<file>``, loopback up), in which dockerd and
  hence containerd, the shims and ``docker-proxy`` run. Its bridges (``docker0`` and one per network),
  its iptables rules (``--iptables`` on, as on a user's engine: DNAT, masquerade, isolation) and its
  published ports live there, so they cannot collide with the machine's daemon: on this host
  ``bridge-nf-call-iptables`` is 1 and the machine's FORWARD policy is DROP, which would drop traffic
  between two containers on a bridge whose rules the machine's dockerd does not know. Ports published on
  127.0.0.1 are the namespace's loopback; ``run(fn, ...)`` calls ``fn`` in a thread that joined the
  namespace (``os.setns``), so a test's HTTPS client reaches them. Nothing leaves loopback;
- ``--cgroup-parent /<name>``: the containers' cgroups are ``/sys/fs/cgroup/<controller>/<name>/<id>``,
  which is how a power loss finds the containers' processes (``cgroup.procs``).

dockerd runs under a small reaper of this module's (``REAPER``: a child subreaper, the role systemd has
on a user's machine), so what dockerd leaves behind when it dies is reaped and never mistaken for alive.

Every process is found and ended by PID: dockerd (as the reaper started it), containerd
(``exec/containerd/containerd.pid``), the shims (``-address <exec>/containerd/containerd.sock`` in
their command line), ``docker-proxy`` and anything else in the namespace (``/proc/<pid>/ns/net``), and
the containers' processes (the cgroups). ``close()`` kills them, unmounts whatever is mounted under
the temp dir (overlays, the containers' netns files, the namespace), removes the cgroups and the
shims' sockets in ``/run/containerd/s`` (containerd 1.6 puts every shim's socket there, named
``sha256(<containerd socket>/moby/<id>)``: the one path outside the temp dir), ends the reaper, then
removes the dir.

Images: ``load_images`` pipes ``docker save`` from the machine's engine into ``docker load`` here
(tests/harness/real_docker.py ``images()`` says which); nothing is cached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import docker

T = TypeVar("T")
TOOLS = ("dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker", "unshare", "nsenter", "ip")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6's fixed root of shim sockets
MNT_DETACH = 2


def missing() -> str | None:
    """Why a private daemon cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (Debian: docker.io, util-linux, iproute2)"
    if not hasattr(os, "setns"):
        return "os.setns is missing (Python >= 3.12)"
    return None


# The engine's init: a child subreaper (what systemd is to a user's dockerd). dockerd is started as its
# child, so whatever dockerd leaves behind when it dies (containerd, the shims, docker-proxy) is re-parented
# to it and reaped, never left a zombie: dockerd takes a live PID in ``containerd.pid`` for a running
# containerd ("libcontainerd: containerd is still running") and then waits for it in vain. One JSON line
# on stdin (argv, log) starts a process and answers its PID; EOF ends it.
REAPER = r"""
import ctypes, json, os, subprocess, sys, threading, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

def reap():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)

threading.Thread(target=reap, daemon=True).start()
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "ab") as log:
        p = subprocess.Popen(job["argv"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    print(p.pid, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


class PrivateDockerd:
    """One private engine (see the module's docstring). ``start``/``stop``/``crash``/``power_loss``
    may be called any number of times; ``close`` ends it for good."""

    def __init__(self, parent: str = "/tmp"):
        self.root = Path(tempfile.mkdtemp(prefix="ohpd-", dir=parent))
        self.name = self.root.name
        self.data = self.root / "data"
        self.exec_root = self.root / "exec"
        self.sock = self.root / "docker.sock"
        self.config = self.root / "daemon.json"
        self.netns = self.root / "netns"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self.cgroup_parent = f"/{self.name}"
        self.pid: int | None = None  # dockerd's
        self._reaper: subprocess.Popen | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._clients: list[docker.DockerClient] = []
        self.data.mkdir()
        self.exec_root.mkdir()
        self.netns.touch()
        subprocess.run(["unshare", f"--net={self.netns}", "true"], check=True, capture_output=True)
        subprocess.run(["nsenter", f"--net={self.netns}", "ip", "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        self._netns_ino = os.stat(self.netns).st_ino

    # ------------------------------------------------------------------ the daemon

    @property
    def base_url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def containerd_sock(self) -> Path:
        return self.exec_root / "containerd" / "containerd.sock"

    def client(self, version: str | None = None, timeout: int = 300) -> docker.DockerClient:
        c = docker.DockerClient(base_url=self.base_url, version=version or "auto", timeout=timeout)
        self._clients.append(c)
        return c

    def start(self, live_restore: bool = False, budget: float = 90) -> float:
        """Start dockerd (``live-restore`` as given) and wait until it answers; seconds taken."""
        assert self.dockerd_pid is None, "dockerd is running"
        self.config.write_text(json.dumps({"live-restore": live_restore}))
        cmd = ["nsenter", f"--net={self.netns}", "--", "dockerd", "--config-file", str(self.config),
               "--data-root", str(self.data), "--exec-root", str(self.exec_root), "--pidfile", str(self.pidfile),
               "-H", self.base_url, "--cgroup-parent", self.cgroup_parent]
        t0 = time.monotonic()
        # nsenter execs dockerd: the PID is dockerd's. Its own session: no terminal signal reaches it.
        self.pid = self._spawn(cmd)
        probe = docker.APIClient(base_url=self.base_url, version="1.41", timeout=5)
        try:
            while True:
                if not _alive(self.pid):
                    raise RuntimeError(f"private dockerd exited:\n{self.log_tail()}")
                with contextlib.suppress(Exception):
                    if probe.ping():
                        return time.monotonic() - t0
                if time.monotonic() - t0 > budget:
                    raise RuntimeError(f"private dockerd not answering after {budget}s:\n{self.log_tail()}")
                time.sleep(0.1)
        finally:
            probe.close()

    def _spawn(self, argv: list[str]) -> int:
        if self._reaper is None or self._reaper.poll() is not None:
            self._reaper = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self._reaper.stdin is not None and self._reaper.stdout is not None
        self._reaper.stdin.write(json.dumps({"argv": argv, "log": str(self.log)}) + "\n")
        self._reaper.stdin.flush()
        return int(self._reaper.stdout.readline())

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def dockerd_pid(self) -> int | None:
        return self.pid if self.pid is not None and _alive(self.pid) else None

    def containerd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
            if _alive(pid) and str(self.exec_root / "containerd" / "containerd.toml") in _cmdline(pid):
                return pid
        return None

    def shim_pids(self) -> list[int]:
        address = str(self.containerd_sock)
        out = []
        for pid in _pids():
            cmd = _cmdline(pid)
            if cmd and "containerd-shim" in os.path.basename(cmd[0]) and address in cmd:
                out.append(pid)
        return out

    def netns_pids(self) -> list[int]:
        """Every process in the private namespace: dockerd, containerd, the shims, docker-proxy."""
        out = []
        for pid in _pids():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == self._netns_ino and pid != os.getpid():
                    out.append(pid)
        return out

    def _cgroup_dirs(self) -> list[Path]:
        """This engine's cgroup directories, deepest first, in every v1 controller (or the v2 tree)."""
        bases = [d / self.name for d in CGROUP_ROOT.iterdir() if (d / self.name).is_dir()]
        if (CGROUP_ROOT / self.name).is_dir():
            bases.append(CGROUP_ROOT / self.name)
        dirs = [p for b in bases for p, _, _ in os.walk(b)]
        return sorted((Path(d) for d in dirs), key=lambda p: len(p.parts), reverse=True)

    def container_pids(self) -> list[int]:
        """The containers' processes, from their cgroups (``--cgroup-parent``)."""
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return sorted(pids)

    def _wait_gone(self, pids: Iterable[int], budget: float) -> None:
        pids = list(pids)
        deadline = time.monotonic() + budget
        while any(_alive(p) for p in pids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"still alive after {budget}s: {[p for p in pids if _alive(p)]}")
            time.sleep(0.05)

    def stop(self, budget: float = 90) -> float:
        """A graceful stop (SIGTERM, what ``systemctl stop docker`` sends); seconds until dockerd exited."""
        pid = self.dockerd_pid
        assert pid is not None, "dockerd is not running"
        t0 = time.monotonic()
        _kill([pid], signal.SIGTERM)
        self._wait_gone([pid], budget)
        return time.monotonic() - t0

    def crash(self) -> None:
        """SIGKILL to dockerd alone, as a crash (containerd is its child: whether it lives is dockerd's
        business, see docs/faults.md)."""
        pid = self.dockerd_pid
        assert pid is not None, "dockerd is not running"
        _kill([pid])
        self._wait_gone([pid], 30)

    def power_loss(self) -> dict[str, list[int]]:
        """Everything of this engine dies at once, by PID: dockerd first (so that nothing records
        the containers' exits), then containerd, the shims, the rest of the namespace (docker-proxy)
        and every process in the containers' cgroups. What was killed, by kind."""
        # Every PID first: containerd dies with dockerd (its parent-death signal), the shims do not.
        dockerd, containerd = self.dockerd_pid, self.containerd_pid()
        killed: dict[str, list[int]] = {"dockerd": [dockerd] if dockerd else [],
                                        "containerd": [containerd] if containerd else [],
                                        "shims": self.shim_pids(), "containers": [], "other": []}
        for kind in ("dockerd", "containerd", "shims"):
            _kill(killed[kind])
        # A container can fork while we read its cgroup: repeat until every cgroup is empty.
        deadline = time.monotonic() + 30
        while pids := self.container_pids():
            _kill(pids)
            killed["containers"].extend(p for p in pids if p not in killed["containers"])
            assert time.monotonic() < deadline, f"container processes survive SIGKILL: {pids}"
            time.sleep(0.02)
        known = {p for v in killed.values() for p in v}
        killed["other"] = [p for p in self.netns_pids() if p not in known]
        _kill(killed["other"])
        self._wait_gone([p for v in killed.values() for p in v], 30)
        return killed

    def reload(self, live_restore: bool, budget: float = 30) -> None:
        """Change ``live-restore`` in the config file and SIGHUP dockerd (``systemctl reload docker``)."""
        pid = self.dockerd_pid
        assert pid is not None, "dockerd is not running"
        self.config.write_text(json.dumps({"live-restore": live_restore}))
        _kill([pid], signal.SIGHUP)
        api = docker.APIClient(base_url=self.base_url, version="1.41", timeout=10)
        try:
            deadline = time.monotonic() + budget
            while api.info().get("LiveRestoreEnabled") is not live_restore:
                assert time.monotonic() < deadline, f"live-restore still not {live_restore}:\n{self.log_tail()}"
                time.sleep(0.1)
        finally:
            api.close()

    def load_images(self, refs: Iterable[str], budget: float = 600) -> float:
        """``docker save`` from the machine's engine (DOCKER_HOST or the default socket) piped into
        ``docker load`` here; seconds taken."""
        refs = list(refs)
        t0 = time.monotonic()
        save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        env = {**os.environ, "DOCKER_HOST": self.base_url}
        load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, capture_output=True, text=True,
                              env=env, timeout=budget)
        assert save.stdout is not None
        save.stdout.close()
        save_err = save.communicate(timeout=60)[1]
        if save.returncode != 0 or load.returncode != 0:
            raise RuntimeError(f"docker save | docker load failed: {save_err.decode(errors='replace')[-1000:]}"
                               f" {load.stderr[-1000:]}")
        return time.monotonic() - t0

    # ------------------------------------------------------------------ the network namespace

    def _enter(self) -> None:
        fd = os.open(self.netns, os.O_RDONLY)
        try:
            os.setns(fd, os.CLONE_NEWNET)
        finally:
            os.close(fd)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread inside the private network namespace (its loopback is where
        the containers' ports are published)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix=self.name,
                                                               initializer=self._enter)
        return self._pool.submit(fn, *args, **kwargs).result()

    # ------------------------------------------------------------------ the end

    def _shim_sockets(self) -> list[Path]:
        tasks = self.exec_root / "containerd" / "daemon" / "io.containerd.runtime.v2.task"
        ids: set[tuple[str, str]] = set()
        with contextlib.suppress(OSError):
            for ns in tasks.iterdir():
                ids.update((ns.name, b.name) for b in ns.iterdir())
        for pid in self.shim_pids():
            cmd = _cmdline(pid)
            with contextlib.suppress(ValueError, IndexError):
                ids.add((cmd[cmd.index("-namespace") + 1], cmd[cmd.index("-id") + 1]))
        return [SHIM_SOCKETS / hashlib.sha256(f"{self.containerd_sock}/{ns}/{cid}".encode()).hexdigest()
                for ns, cid in ids]

    def _unmount_all(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        prefix = str(self.root) + "/"
        for _ in range(5):
            mounts = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    mounts.append(point)
            if not mounts:
                return
            for point in sorted(set(mounts), key=len, reverse=True):
                libc.umount2(point.encode(), MNT_DETACH)

    def close(self) -> None:
        """Kill everything this engine runs (by PID), unmount, remove its cgroups, sockets and dir."""
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        sockets = self._shim_sockets()
        with contextlib.suppress(Exception):
            self.power_loss()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._wait_gone(self.netns_pids() + self.container_pids(), 10)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.unlink()
        self._unmount_all()
        for d in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                d.rmdir()
        if self._reaper is not None:
            with contextlib.suppress(Exception):
                self._reaper.stdin.close()  # type: ignore[union-attr]
                self._reaper.wait(5)
            if self._reaper.poll() is None:
                self._reaper.kill()
                self._reaper.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)
