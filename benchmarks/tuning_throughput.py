"""Local Katib runner: trials per minute at parallelism 1 and 2, and the tuned model vs defaults.

The same Experiment (katib/experiment.yaml, random sampler with a fixed seed so both runs try the
same parameters, early stopping off so both run every trial to the end) runs with
parallelTrialCount 1 and 2 on a temporary DVC repo with the seeded 4000-row data version. Then
the full experiment (TPE, median stop) tunes, and the best parameters and the defaults are each
trained by the pipeline's train_and_log and scored on the pipeline's held-out split.

    .venv/bin/python benchmarks/tuning_throughput.py [--trials 6]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from mlstack.data import versions  # noqa: E402
from mlstack.settings import DEFAULTS  # noqa: E402
from mlstack.train.tracking import sqlite_store  # noqa: E402
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log  # noqa: E402
from mlstack.tune import spec  # noqa: E402
from mlstack.tune.run import tune_local  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    doc = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        repo = versions.seeded_repo(
            tmp_path / "repo",
            tmp_path / "remote",
            data_path=DEFAULTS.data_path,
            rows=DEFAULTS.data_rows,
            seed=DEFAULTS.data_seed,
        )
        uri = sqlite_store(tmp_path / "mlflow")

        rates = {}
        fixed = copy.deepcopy(doc)
        fixed["spec"]["algorithm"] = {
            "algorithmName": "random",
            "algorithmSettings": [{"name": "random_state", "value": "11"}],
        }
        fixed["spec"].pop("earlyStopping")
        fixed["spec"]["maxTrialCount"] = args.trials
        for parallel in (1, 2):
            exp = spec.parse(fixed)
            result = tune_local(
                exp,
                tracking_uri=uri,
                experiment_name="bench-tuning",
                repo=str(repo),
                data_rev="HEAD",
                parallel=parallel,
                progress=False,
            )
            ok = sum(t.status == "Succeeded" for t in result.trials)
            rates[parallel] = ok / result.seconds * 60
            print(
                f"parallel {parallel}: {ok} trials in {result.seconds:.1f}s = {rates[parallel]:.1f} trials/min"
            )

        tuned = tune_local(
            spec.parse(doc),
            tracking_uri=uri,
            experiment_name="bench-tuning",
            repo=str(repo),
            data_rev="HEAD",
            progress=False,
        )
        best = HyperParams.from_strings(tuned.best_parameters())
        data = tmp_path / "data.csv"
        version = versions.read_version(str(repo), DEFAULTS.data_path, rev="HEAD", out=data)
        lineage = TrainingLineage(version.md5, DEFAULTS.data_path, version.git_sha)
        scores = {}
        for label, params in (("defaults", HyperParams()), ("tuned", best)):
            r = train_and_log(
                data,
                params,
                lineage=lineage,
                tracking_uri=uri,
                experiment_name="bench-tuning",
                test_size=DEFAULTS.test_size,
                split_seed=DEFAULTS.split_seed,
            )
            scores[label] = r.metrics
        print()
        print(f"{os.cpu_count()} cores, {DEFAULTS.data_rows} rows, {args.trials} trials per run")
        print("| parallelTrialCount | trials/min | vs 1 |")
        print("|---|---|---|")
        for p, r in rates.items():
            print(f"| {p} | {r:.1f} | {r / rates[1]:.2f}× |")
        print()
        counts = {
            s: sum(t.status == s for t in tuned.trials)
            for s in ("Succeeded", "EarlyStopped", "Failed")
        }
        print(
            f"full experiment (tpe, medianstop, {len(tuned.trials)} trials: {counts}) in {tuned.seconds:.0f}s"
        )
        print(f"best parameters: {tuned.best_parameters()}")
        print("| model | held-out roc_auc | f1 | average_precision |")
        print("|---|---|---|---|")
        for label, m in scores.items():
            print(
                f"| {label} | {m['roc_auc']:.4f} | {m['f1']:.4f} | {m['average_precision']:.4f} |"
            )


if __name__ == "__main__":
    main()
