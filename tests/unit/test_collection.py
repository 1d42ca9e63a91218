"""Collecting the tests runs nothing: no kubectl at import time (a module renders when a test
first asks, through ``tests.support.kube.rendered``)."""

import os
import subprocess
import sys
from pathlib import Path

from mlstack.settings import code_root


def test_collecting_every_test_runs_no_kubectl(tmp_path: Path):
    calls = tmp_path / "calls"
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    stub.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/unit", "tests/integration"],
        cwd=code_root(),
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not calls.exists(), calls.read_text()
    # the stub is what a collection-time kubectl would have met: a failing render
    assert subprocess.run(["kubectl", "version"], env={"PATH": str(stub.parent)}).returncode == 1
    assert calls.exists()
