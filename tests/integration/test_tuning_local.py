"""The Katib Experiment run locally with the real training entrypoint, and the tuning pipeline."""

import copy
import io
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mlstack.pipeline.local import run_pipeline
from mlstack.settings import DEFAULTS
from mlstack.tune import spec
from mlstack.tune.run import tune_local
from mlstack.tune.trial import metric_line

MANIFEST = yaml.safe_load(DEFAULTS.katib_experiment.read_text())


def small(max_trials: int, parallel: int) -> dict:
    doc = copy.deepcopy(MANIFEST)
    doc["spec"].update(maxTrialCount=max_trials, parallelTrialCount=parallel)
    for p in doc["spec"]["parameters"]:
        if p["name"] == "max_iter":  # short trials
            p["feasibleSpace"].update(min="50", max="100")
    return doc


def test_metric_line_is_what_the_collector_reads():
    line = metric_line(50, {"roc_auc": 0.81, "f1": 0.6, "average_precision": 0.7, "accuracy": 0.9})
    got = dict(spec.parse_metrics(line, (spec.DEFAULT_METRICS_FORMAT,), ("roc_auc", "f1")))
    assert got == {"roc_auc": 0.81, "f1": 0.6}
    assert line[:4].isdigit() and line[19] == "Z"  # timestamped, for early stopping


def test_local_experiment_with_the_training_entrypoint(data_repo: Path, tracking_uri: str):
    exp = spec.parse(small(max_trials=3, parallel=2))
    result = tune_local(
        exp,
        tracking_uri=tracking_uri,
        experiment_name="tuning-test",
        repo=str(data_repo),
        data_rev="HEAD",
        progress=False,
    )
    assert [t.status for t in result.trials].count("Succeeded") >= 2
    best = result.best
    assert 0.5 < best.observation["roc_auc"] <= 1.0
    assert set(best.assignments) == {p.name for p in exp.parameters}
    # each trial reported several steps (chunks of 25 iterations) and logged a nested MLflow run
    assert all(len(t.reports["roc_auc"]) >= 2 for t in result.trials if t.status == "Succeeded")
    client = MlflowClient(tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name("tuning-test").experiment_id],
        f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(children) == len(result.trials)
    assert {c.data.tags["data_md5"] for c in children} != {""}
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["best_roc_auc"] == pytest.approx(best.observation["roc_auc"])
    assert "Succeeded" in result.render() and "best trial" in result.render()


@pytest.mark.slow
def test_tuning_pipeline_runs_locally(settings):
    out = io.StringIO()
    summary = run_pipeline(
        settings,
        arguments={"tune_backend": "local", "experiment_yaml": yaml.safe_dump(small(2, 2))},
        out=out,
        ir_path=settings.tuning_ir_path,
    )
    assert "tune" in summary.executed and "train" in summary.executed
    # the tuning is not silent: each trial's end is shown as it happens, inside the tune step
    shown = out.getvalue()
    trials = [line.strip() for line in shown.splitlines() if line.strip().startswith("trial ")]
    assert sorted(t.split()[1] for t in trials) == ["1/2", "2/2"], shown
    assert shown.index("▶ tune") < shown.index(trials[0]) < shown.index("✓ tune")
    assert summary.model_version == "1"
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(summary.mlflow_run_id)
    assert int(run.data.params["max_iter"]) in (50, 100)  # the tuned value, not the default 200
