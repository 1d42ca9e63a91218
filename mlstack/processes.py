"""Several local servers run as one command (``mlstack serve --transformer-port``: the predictor
and the transformer in front of it)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import FrameType


def run_together(
    commands: Sequence[Sequence[str]], env: Mapping[str, str] | None = None, grace: float = 30
) -> int:
    """Start every command, wait until one of them exits or this process gets SIGTERM or SIGINT,
    then stop the others (SIGTERM, SIGKILL after ``grace`` seconds). Returns the exit status of
    the first to exit (0 when stopped by a signal)."""
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in commands:
            procs.append(subprocess.Popen(list(argv), env=dict(env) if env is not None else None))
        status = 0
        while not stopping:
            ended = [p for p in procs if p.poll() is not None]
            if ended:
                status = ended[0].returncode or 0
                break
            time.sleep(0.2)
        return status
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
