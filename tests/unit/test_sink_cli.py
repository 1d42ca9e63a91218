"""``mlstack capture show`` as a user runs it: what is captured, per environment and version."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlstack.data import generate
from mlstack.monitor import capture
from tests.support.cli import run_cli


def test_show_counts_rows_and_requests_per_environment_and_version(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    frame = generate.generate(3, seed=2).drop(columns=["churned"])
    frame["id"], frame["row"] = ["a", "a", "b"], [0, 1, 0]
    frame["model_name"], frame["model_version"] = "churn-classifier", "5"
    frame["environment"], frame["received_at"] = "ml-staging", pd.Timestamp("2026-12-02T10:00Z")
    frame["score"], frame["prediction"] = [0.1, 0.9, 0.4], [0, 1, 0]
    capture.write_captures(root, frame)
    done = run_cli("capture", "show", "--root", str(root), "--since", "2026-12-02")
    assert done.returncode == 0, done.stderr
    [line] = [row for row in done.stdout.splitlines() if row.startswith("ml-staging")]
    assert line.split()[:5] == ["ml-staging", "churn-classifier", "5", "3", "2"]


def test_an_environment_that_is_not_a_kubernetes_name_is_one_error_line(tmp_path: Path) -> None:
    done = run_cli("capture", "show", "--root", str(tmp_path), "--env", "../etc")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: environment '../etc' is not a Kubernetes name (lower-case letters, digits and "
        "'-', at most 63 characters, starting and ending with a letter or digit)"
    ]


def test_a_negative_live_quality_cache_is_one_error_line(tmp_path: Path) -> None:
    done = run_cli(
        "capture", "sink", "--wal", str(tmp_path / "wal"), "--port", "0",
        "--live-quality-cache", "-1",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: --live-quality-cache must be a number of seconds, 0 or more"
    ]
