"""A pod on this machine: a network holder container (the pause container's role) whose network
namespace every container of the pod joins, its declared ports published on 127.0.0.1 only,
the cluster's Service names resolving to the pod's own loopback. Stand-ins for the cluster's
services (S3, PostgreSQL, MLflow, GitHub's API) run as host processes entered into that
namespace (``with pod.inside(): ...``: sockets and child processes made inside belong to it),
so they listen on the pod's loopback at the ports the manifests name, and nothing listens
outside it. Needs root (podman rootful, ``setns``)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conftest import free_port
from tests.support.servers import call

CLONE_NEWNET = 0x40000000
PODMAN = "podman"


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}…: {out.stderr.strip()}")
    return out.stdout


class Pod:
    """Start with ``Pod(...)``, run containers with ``run(argv)``, end with ``close()``."""

    def __init__(
        self, image: str, ports: Sequence[int] = (), hosts: Sequence[str] = (), name: str = ""
    ) -> None:
        self.name = name or f"mlstack-test-{uuid.uuid4().hex[:8]}"
        self.holder = f"{self.name}-pause"
        self.containers: list[str] = []
        self.published = {port: free_port() for port in ports}
        argv = ["run", "--detach", "--pull", "never", "--name", self.holder]
        argv += ["--hostname", self.name, "--read-only", "--cap-drop", "ALL"]
        for port, host_port in self.published.items():
            argv += ["--publish", f"127.0.0.1:{host_port}:{port}"]
        for host in hosts:
            argv += ["--add-host", f"{host}:127.0.0.1"]
        try:
            podman(*argv, "--entrypoint", "sleep", image, "infinity")
            pid = json.loads(podman("inspect", self.holder, "--format", "{{json .State.Pid}}"))
        except BaseException:
            self.close()
            raise
        self.netns = f"/proc/{pid}/ns/net"

    @property
    def network(self) -> str:
        """The ``--network`` value for the pod's containers."""
        return f"container:{self.holder}"

    def url(self, port: int, path: str = "/") -> str:
        """The published address of a declared container port."""
        return f"http://127.0.0.1:{self.published[port]}{path}"

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This thread in the pod's network namespace for the block."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.netns, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the pod's network failed")
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # never leave this thread elsewhere
                raise OSError(ctypes.get_errno(), "setns back failed")
            os.close(own)
            os.close(target)

    def run(self, argv: Sequence[str]) -> str:
        """Start a container from a ``podman run`` argv (tests/support/podspec.run_argv)."""
        name = argv[argv.index("--name") + 1]
        self.containers.append(name)
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"podman run {name}: {out.stderr.strip()}")
        return name

    def state(self, name: str) -> dict:
        return json.loads(podman("inspect", name, "--format", "{{json .State}}"))

    def logs(self, name: str) -> str:
        out = subprocess.run([PODMAN, "logs", name], capture_output=True, text=True, timeout=60)
        return (out.stdout + out.stderr)[-4000:]

    def confinement(self, name: str) -> dict:
        """What a running container's process is allowed, read from inside it: uid and gid,
        whether its root filesystem is read-only (creating a file there fails with EROFS, not
        just EACCES), its capability bounding set, no_new_privs and its seccomp mode."""
        script = (
            "import errno, json, os\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "try:\n"
            "    open('/.mlstack-probe', 'x').close(); os.remove('/.mlstack-probe'); err = 0\n"
            "except OSError as e:\n"
            "    err = e.errno\n"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(),\n"
            "    'root_read_only': err == errno.EROFS, 'cap_bnd': int(status['CapBnd'], 16),\n"
            "    'no_new_privs': int(status['NoNewPrivs']), 'seccomp': int(status['Seccomp'])}))\n"
        )
        return json.loads(podman("exec", name, "python3", "-c", script))

    def wait_ready(self, name: str, port: int, path: str, timeout: float = 240) -> None:
        """Poll the published ``port`` at ``path`` until 200; fail with the logs when the
        container exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while call(self.url(port, path))[0] != 200:
            state = self.state(name)
            if not state.get("Running") or time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} not ready at {path} (exit {state.get('ExitCode')}):\n"
                    + self.logs(name)
                )
            time.sleep(0.5)

    def processes(self, name: str) -> list[tuple[int, str]]:
        """A running container's processes as host PIDs, each with its start time (field 22 of
        /proc/PID/stat), so that a PID reused later is not taken for one of them."""
        pids = [int(word) for word in podman("top", name, "hpid").split()[1:]]  # under HPID
        return [(pid, started) for pid in pids if (started := _start_time(pid))]

    def stop(self, name: str, grace: float = 60) -> int:
        """Stop a container as the kubelet does: its stop signal (SIGTERM unless the image says
        otherwise), SIGKILL once ``grace`` seconds have passed; returns its exit code (137 when
        it took the SIGKILL)."""
        podman("stop", "--time", str(int(grace)), name, timeout=grace + 120)
        return int(self.state(name)["ExitCode"])

    def wait_exit(self, name: str, timeout: float = 600) -> int:
        out = podman("wait", name, timeout=timeout)
        return int(out.strip().splitlines()[-1])

    def close(self) -> None:
        """Kill and remove every container of the pod, the holder last."""
        for name in [*reversed(self.containers), self.holder]:
            subprocess.run(
                [PODMAN, "rm", "--force", "--time", "0", name], capture_output=True, timeout=120
            )


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot; "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: after the name, fields start at 3


def alive(processes: Sequence[tuple[int, str]]) -> list[int]:
    """Which of ``processes`` (``Pod.processes``) still run."""
    return [pid for pid, started in processes if _start_time(pid) == started]
