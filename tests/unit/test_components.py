"""Each component's own function (``python_func``), called as the runner calls it: its wiring (the
arguments it passes on, the outputs it writes, its one-line failure) without running a pipeline."""

import json
from pathlib import Path

import pytest
from kfp.dsl import Dataset, Metrics
from mlflow import MlflowClient

from components.evaluate import evaluate
from components.ingest import ingest
from components.register import register
from components.train import train
from components.tune import tune
from components.validate import validate
from mlstack.schema import columns
from mlstack.settings import DEFAULTS
from mlstack.train.training import HyperParams
from tests.conftest import git

HP = HyperParams(max_iter=40)


def artifact(kind, path: Path):  # type: ignore[no-untyped-def]
    return kind(name=path.stem, uri=str(path))


@pytest.fixture
def ingested(data_repo: Path, tmp_path: Path, monkeypatch) -> tuple[Dataset, str, str, str, str]:
    monkeypatch.setenv("MLSTACK_STATE_DIR", str(tmp_path / "state"))  # the feature store's files
    dataset = artifact(Dataset, tmp_path / "dataset.csv")
    md5, sha, source_md5, views = ingest.python_func(
        repo=str(data_repo), data_path=DEFAULTS.data_path, data_rev="HEAD", dataset=dataset
    )
    return dataset, md5, sha, source_md5, views


def test_ingest_writes_the_version_and_names_it(ingested, data_repo: Path, tmp_path: Path):
    dataset, md5, sha, source_md5, views = ingested
    assert sha == git(data_repo, "rev-parse", "HEAD")
    assert dataset.metadata == {
        "md5": md5, "git_sha": sha, "path": DEFAULTS.data_path,
        "feature_source_md5": source_md5, "feature_views": views,
    }  # fmt: skip
    header = Path(dataset.path).read_text().splitlines()[0].split(",")
    assert header == columns()
    # built through the feature store: its source and registry are in the state dir, and the
    # training set is the data version's rows (each label's own snapshot is the latest at its time)
    assert (tmp_path / "state" / "feast" / "customer_features.parquet").is_file()
    assert (tmp_path / "state" / "feast" / "registry.db").is_file()
    assert views.startswith("customer_features@") and len(source_md5) == 32
    assert Path(dataset.path).read_bytes() == (data_repo / DEFAULTS.data_path).read_bytes()


def test_ingest_of_a_bad_rev_is_one_error_line(data_repo: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ingest.python_func(
            repo=str(data_repo),
            data_path=DEFAULTS.data_path,
            data_rev="no-such-rev",
            dataset=artifact(Dataset, tmp_path / "d.csv"),
        )
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_validate_logs_the_summary_and_refuses_a_broken_file(ingested, tmp_path: Path, capsys):
    dataset, *_ = ingested
    report = artifact(Metrics, tmp_path / "report.json")
    validate.python_func(dataset=dataset, test_size=0.25, split_seed=42, report=report)
    assert report.metadata["rows"] > 0 and 0 < report.metadata["positive_share"] < 1
    broken = tmp_path / "broken.csv"
    broken.write_text(",".join(columns()) + "\n" + ",".join(["oops"] * len(columns())) + "\n")
    with pytest.raises(SystemExit):
        validate.python_func(
            dataset=artifact(Dataset, broken),
            test_size=0.25,
            split_seed=42,
            report=artifact(Metrics, tmp_path / "bad.json"),
        )
    assert capsys.readouterr().err.startswith("error: ")
    assert json.loads((tmp_path / "bad.json").read_text())["valid"] is False


def test_train_evaluate_register_pass_their_outputs_on(ingested, tracking_uri: str, tmp_path):
    dataset, md5, sha, source_md5, views = ingested
    metrics = artifact(Metrics, tmp_path / "metrics.json")
    run_id, model_uri = train.python_func(
        dataset=dataset, data_md5=md5, git_sha=sha, feature_source_md5=source_md5,
        feature_views=views, data_path=DEFAULTS.data_path,
        kfp_run_id="kfp-1", kfp_run_name="churn-training-x", tracking_uri=tracking_uri,
        experiment_name="components", test_size=0.25, split_seed=42,
        learning_rate=HP.learning_rate, max_iter=HP.max_iter, max_depth=HP.max_depth,
        l2_regularization=HP.l2_regularization, class_weight=HP.class_weight, metrics=metrics,
    )  # fmt: skip
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.tags["data_md5"] == md5 and run.data.tags["git_sha"] == sha
    assert run.data.tags["feature_source_md5"] == source_md5
    assert run.data.tags["feature_views"] == views
    assert run.data.params["max_iter"] == "40"
    assert json.loads(Path(metrics.path).read_text())["roc_auc"] == run.data.metrics["roc_auc"]
    assert metrics.metadata["mlflow_run_id"] == run_id

    comparison, decision = artifact(Metrics, tmp_path / "comparison.json"), tmp_path / "decision"
    passed = evaluate.python_func(
        dataset=dataset, mlflow_run_id=run_id, model_name="churn-components",
        tracking_uri=tracking_uri, experiment_name="components", test_size=0.25, split_seed=42,
        min_roc_auc=0.75, min_f1=0.4, max_regression=0.01, comparison=comparison,
        decision=str(decision),
    )  # fmt: skip
    assert passed is True
    assert comparison.metadata["gate_min_roc_auc"] == 1.0
    version, alias = register.python_func(
        mlflow_run_id=run_id, model_uri=model_uri, model_name="churn-components",
        decision=decision.read_text(), tracking_uri=tracking_uri, experiment_name="components",
    )  # fmt: skip
    assert (version, alias) == ("1", "champion")
    mv = MlflowClient(tracking_uri).get_model_version_by_alias("churn-components", "champion")
    assert mv.run_id == run_id


def test_tune_refuses_an_unknown_backend_in_one_line(capsys):
    with pytest.raises(SystemExit):
        tune.python_func(
            experiment_yaml=DEFAULTS.katib_experiment.read_text(), backend="laptop",
            namespace="", repo=".", data_rev="HEAD", tracking_uri="", experiment_name="e",
            data_path=DEFAULTS.data_path, test_size=0.25, split_seed=42, timeout_seconds=1,
        )  # fmt: skip
    assert capsys.readouterr().err == "error: backend must be 'cluster' or 'local', got 'laptop'\n"
