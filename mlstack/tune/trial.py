"""The training entrypoint of a Katib trial: ``python -m mlstack.tune.trial --learning-rate … ``.

It runs the pipeline's own ``train_and_log`` on the training part of the data version (the
pipeline's held-out split stays unseen: the trial scores a validation split of the rest), logs an
MLflow run under the tuning parent run (``MLSTACK_PARENT_RUN_ID``), and prints its metrics as
Katib's StdOut collector reads them: timestamped ``name=value`` lines, one per boosting chunk,
so median-stop early stopping can compare trials step by step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mlstack.errors import exit_on_error
from mlstack.settings import load_settings

# the metrics a trial prints (Katib's objective and additional metric names come from these)
PRINTED = ("roc_auc", "f1", "average_precision")


def metric_line(iterations: int, metrics: dict[str, float]) -> str:
    """One line Katib's StdOut collector reads: a timestamp, the iterations, the metrics."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = " ".join(f"{k}={metrics[k]:.6f}" for k in PRINTED)
    return f"{stamp} iterations={iterations} {values}"


def build_parser() -> argparse.ArgumentParser:
    """The trial's arguments: the hyperparameters, and where its data comes from."""
    from mlstack.train.training import HyperParams

    d = HyperParams()
    p = argparse.ArgumentParser(prog="python -m mlstack.tune.trial", description=__doc__)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--max-iter", type=int, default=d.max_iter)
    p.add_argument("--max-depth", type=int, default=d.max_depth)
    p.add_argument("--l2-regularization", type=float, default=d.l2_regularization)
    p.add_argument("--class-weight", default=d.class_weight)
    p.add_argument("--dataset", help="a CSV file (else the DVC data version below)")
    p.add_argument("--repo", default=os.environ.get("MLSTACK_DATA_REPO", ""))
    p.add_argument("--data-rev", default=os.environ.get("MLSTACK_DATA_REV", "HEAD"))
    p.add_argument("--report-every", type=int, default=25, help="iterations between reports")
    return p


def run(args: argparse.Namespace) -> dict[str, float]:
    """Train one trial and print its metric lines; returns the final held-out metrics. Raises
    ``StackError`` when the data version cannot be read or the tracking server is unreachable."""
    from mlstack.data import versions
    from mlstack.train.training import HyperParams, TrainingLineage, split, train_and_log

    settings = load_settings()
    params = HyperParams(
        args.learning_rate, args.max_iter, args.max_depth, args.l2_regularization, args.class_weight
    )
    with tempfile.TemporaryDirectory(prefix="trial-") as tmp:
        lineage = TrainingLineage(kfp_run_id=os.environ.get("MLSTACK_KFP_RUN_ID", ""))
        dataset = Path(args.dataset) if args.dataset else Path(tmp) / "data.csv"
        if not args.dataset:
            version = versions.read_version(
                args.repo or str(settings.repo_root),
                settings.data_path,
                rev=args.data_rev,
                out=dataset,
                remote=settings.dvc_remote or None,
            )
            lineage = TrainingLineage(
                version.md5, settings.data_path, version.git_sha, lineage.kfp_run_id
            )
        import pandas as pd

        train, _held_out = split(pd.read_csv(dataset), settings.test_size, settings.split_seed)
        tuning_set = Path(tmp) / "tuning.csv"
        train.to_csv(tuning_set, index=False)
        result = train_and_log(
            tuning_set,
            params,
            lineage=lineage,
            tracking_uri=settings.mlflow_tracking_uri,
            experiment_name=os.environ.get("MLSTACK_EXPERIMENT_NAME", settings.experiment_name),
            test_size=settings.test_size,
            # another salt: the split by content hash would hold nothing out of the train part
            split_seed=settings.split_seed + 1,
            parent_run_id=os.environ.get("MLSTACK_PARENT_RUN_ID") or None,
            report=lambda it, m: print(metric_line(it, m), flush=True),
            report_every=args.report_every,
        )
    # the last report comes once the MLflow run is complete: early stopping never cuts it short
    print(metric_line(params.max_iter, result.metrics), flush=True)
    return result.metrics


def main(argv: list[str] | None = None) -> None:
    """The entry point (``python -m mlstack.tune.trial``): a refusal is one line and exit 1."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with exit_on_error():
        run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
