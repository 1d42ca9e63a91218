"""The ``mlstack`` command line as a user runs it: a subprocess, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys


def cli_argv(*args: str) -> list[str]:
    """The command line of ``mlstack ARGS`` in this environment (for a process a test manages)."""
    return [sys.executable, "-m", "mlstack.cli", *args]


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mlstack ARGS`` to its end; ``env`` is added to this process's environment."""
    return subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        input=input,
    )
