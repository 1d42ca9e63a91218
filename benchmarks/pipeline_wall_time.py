"""Wall time of the local training pipeline: cold run, fully cached rerun, and the in-process floor.

The floor (baseline) is the same plain step functions called one after another in this process,
with no KFP: what the pipeline costs over it is subprocess start-up, imports and artifact passing.
Everything runs in a temporary DVC repo and MLflow store; nothing in the checkout is touched.

    .venv/bin/python benchmarks/pipeline_wall_time.py [--rows 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from mlstack.data import (
    validate,  # noqa: E402
    versions,  # noqa: E402
)
from mlstack.pipeline.local import run_pipeline  # noqa: E402
from mlstack.settings import DEFAULTS, Settings  # noqa: E402
from mlstack.train import (
    evaluation,  # noqa: E402
    registry,  # noqa: E402
    training,  # noqa: E402
)
from mlstack.train.tracking import sqlite_store  # noqa: E402


def floor(repo: Path, uri: str, work: Path) -> float:
    """ingest → validate → train → evaluate → register as plain calls in one process."""
    started = time.perf_counter()
    data = work / "data.csv"
    version = versions.read_version(str(repo), DEFAULTS.data_path, rev="HEAD", out=data)
    validate.validate_file(data)
    lineage = training.TrainingLineage(version.md5, DEFAULTS.data_path, version.git_sha)
    result = training.train_and_log(
        data,
        training.HyperParams(),
        lineage=lineage,
        tracking_uri=uri,
        experiment_name="bench-floor",
        test_size=0.25,
        split_seed=42,
    )
    decision = evaluation.evaluate(
        data,
        result.run_id,
        model_name="bench-floor",
        tracking_uri=uri,
        experiment_name="bench-floor",
        gates=DEFAULTS.gates,
        test_size=0.25,
        split_seed=42,
    )
    registry.register(
        result.run_id,
        result.model_uri,
        model_name="bench-floor",
        decision=decision,
        tracking_uri=uri,
        experiment_name="bench-floor",
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=DEFAULTS.data_rows)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    cold, cached, floors, cli_cold, cli_cached = [], [], [], [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            repo = versions.seeded_repo(
                tmp_path / "repo",
                tmp_path / "remote",
                data_path=DEFAULTS.data_path,
                rows=args.rows,
                seed=DEFAULTS.data_seed,
            )
            uri = sqlite_store(tmp_path / "mlflow")
            settings = Settings(repo_root=repo, state_dir=tmp_path / "state", tracking_uri=uri)

            floors.append(floor(repo, uri, tmp_path))
            t = time.perf_counter()
            first = run_pipeline(settings, out=io.StringIO())
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            second = run_pipeline(settings, out=io.StringIO())
            cached.append(time.perf_counter() - t)
            assert second.executed == [] and second.mlflow_run_id == first.mlflow_run_id
            # the same through the command line a user types (interpreter start-up included)
            env = {
                **os.environ,
                "MLSTACK_REPO_ROOT": str(repo),
                "MLFLOW_TRACKING_URI": uri,
                "MLSTACK_STATE_DIR": str(tmp_path / "cli-state"),
            }
            for bucket in (cli_cold, cli_cached):
                t = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "mlstack.cli", "pipeline", "run"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                bucket.append(time.perf_counter() - t)
            print(
                f"round {i + 1}: floor {floors[-1]:.1f}s, cold {cold[-1]:.1f}s, "
                f"cached {cached[-1]:.2f}s"
            )

    f, c, h, cc, ch = (statistics.median(x) for x in (floors, cold, cached, cli_cold, cli_cached))
    print()
    print(f"rows={args.rows}, {os.cpu_count()} cores, median of {args.repeat}")
    print("| run | wall time | vs in-process floor |")
    print("|---|---|---|")
    print(f"| in-process floor (plain functions, no KFP) | {f:.1f} s | 1.00× |")
    print(f"| cold local pipeline (kfp.local, 5 steps) | {c:.1f} s | {c / f:.2f}× |")
    print(f"| fully cached rerun | {h:.2f} s | {h / f:.2f}× |")
    print(f"| `mlstack pipeline run`, cold (new store and cache) | {cc:.1f} s | {cc / f:.2f}× |")
    print(f"| `mlstack pipeline run`, fully cached | {ch:.1f} s | {ch / f:.2f}× |")


if __name__ == "__main__":
    main()
