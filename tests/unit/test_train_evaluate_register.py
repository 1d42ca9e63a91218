"""train → evaluate → register against a real (sqlite) MLflow store in tmp_path."""

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlstack.errors import StackError
from mlstack.settings import Gates
from mlstack.train import registry
from mlstack.train.evaluation import evaluate
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log

EXP, MODEL = "test-exp", "test-model"
LINEAGE = TrainingLineage("abc123", "data/churn.csv", "f" * 40, "kfp-id-1", "churn-training-x")


def train(dataset: Path, uri: str, **hp) -> str:
    return train_and_log(
        dataset,
        HyperParams(**hp),
        lineage=LINEAGE,
        tracking_uri=uri,
        experiment_name=EXP,
        test_size=0.25,
        split_seed=42,
    )


@pytest.fixture
def first(dataset_csv: Path, tracking_uri: str):
    return train(dataset_csv, tracking_uri, max_iter=60)


def test_train_logs_params_metrics_lineage_and_model(first, tracking_uri):
    run = MlflowClient(tracking_uri).get_run(first.run_id)
    assert run.data.params["max_iter"] == "60"
    assert run.data.params["learning_rate"] == "0.1"
    for key in ("roc_auc", "f1", "precision_churned", "recall_retained", "f1_retained"):
        assert key in run.data.metrics
    assert run.data.metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    assert run.data.tags["data_md5"] == "abc123"
    assert run.data.tags["git_sha"] == "f" * 40
    assert run.data.tags["kfp_run_id"] == "kfp-id-1"
    info = mlflow.models.get_model_info(first.model_uri)
    assert info.signature is not None
    assert [c["name"] for c in info.signature.inputs.to_dict()][:2] == [
        "tenure_months",
        "monthly_charges",
    ]
    assert info.saved_input_example_info is not None
    # the artifacts of a sqlite store live beside it, not in the working directory
    assert (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").is_dir()
    assert not Path("mlruns").exists()


def test_bad_hyperparameters_are_refused():
    with pytest.raises(StackError, match="class_weight"):
        HyperParams(class_weight="heavy")
    with pytest.raises(StackError, match="learning_rate"):
        HyperParams(learning_rate=0)


def evaluate_run(dataset, run_id, uri, gates=Gates()):
    return evaluate(
        dataset,
        run_id,
        model_name=MODEL,
        tracking_uri=uri,
        experiment_name=EXP,
        gates=gates,
        test_size=0.25,
        split_seed=42,
    )


def test_first_model_becomes_champion_then_challenger(first, dataset_csv, tracking_uri):
    decision = evaluate_run(dataset_csv, first.run_id, tracking_uri)
    assert decision.passed and decision.champion is None
    reg = registry.register(
        first.run_id,
        first.model_uri,
        model_name=MODEL,
        decision=decision,
        tracking_uri=tracking_uri,
        experiment_name=EXP,
    )
    assert (reg.version, reg.alias, reg.created) == ("1", "champion", True)
    mv = MlflowClient(tracking_uri).get_model_version(MODEL, "1")
    assert mv.tags["data_md5"] == "abc123" and mv.tags["kfp_run_id"] == "kfp-id-1"
    assert mv.tags["mlflow_run_id"] == first.run_id
    # the bootstrap champion says so (docs/lifecycle.md): no canary made it the champion
    assert mv.tags["champion.bootstrap"] == "true" and first.run_id in mv.tags["champion.by"]

    # registering the same run again changes nothing
    again = registry.register(
        first.run_id,
        first.model_uri,
        model_name=MODEL,
        decision=decision,
        tracking_uri=tracking_uri,
        experiment_name=EXP,
    )
    assert (again.version, again.created) == ("1", False)

    second = train(dataset_csv, tracking_uri, max_iter=80)
    d2 = evaluate_run(dataset_csv, second.run_id, tracking_uri)
    assert d2.champion_version == "1"
    assert d2.champion["roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    assert d2.passed
    reg2 = registry.register(
        second.run_id,
        second.model_uri,
        model_name=MODEL,
        decision=d2,
        tracking_uri=tracking_uri,
        experiment_name=EXP,
    )
    assert (reg2.version, reg2.alias) == ("2", "challenger")
    client = MlflowClient(tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert "champion.bootstrap" not in client.get_model_version(MODEL, "2").tags
    run = client.get_run(second.run_id)
    assert run.data.metrics["champion_roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    assert run.data.tags["gates_passed"] == "true"


def test_failed_gates_register_nothing(first, dataset_csv, tracking_uri):
    decision = evaluate_run(dataset_csv, first.run_id, tracking_uri, Gates(min_roc_auc=0.999))
    assert not decision.passed
    with pytest.raises(StackError, match="gates failed \\(min_roc_auc\\)"):
        registry.register(
            first.run_id,
            first.model_uri,
            model_name=MODEL,
            decision=decision,
            tracking_uri=tracking_uri,
            experiment_name=EXP,
        )
    assert MlflowClient(tracking_uri).search_model_versions(f"name='{MODEL}'") == []
    assert MlflowClient(tracking_uri).get_run(first.run_id).data.tags["gates_passed"] == "false"


def test_alias_failure_leaves_no_half_registered_version(
    first, dataset_csv, tracking_uri, monkeypatch
):
    decision = evaluate_run(dataset_csv, first.run_id, tracking_uri)

    def refuse(*args, **kwargs):
        raise ConnectionError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(ConnectionError):
        registry.register(
            first.run_id,
            first.model_uri,
            model_name=MODEL,
            decision=decision,
            tracking_uri=tracking_uri,
            experiment_name=EXP,
        )
    monkeypatch.undo()
    client = MlflowClient(tracking_uri)
    assert client.search_model_versions(f"name='{MODEL}'") == []
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")


def test_failed_alias_move_keeps_the_previous_challenger(
    first, dataset_csv, tracking_uri, monkeypatch
):
    decision = evaluate_run(dataset_csv, first.run_id, tracking_uri)
    registry.register(
        first.run_id,
        first.model_uri,
        model_name=MODEL,
        decision=decision,
        tracking_uri=tracking_uri,
        experiment_name=EXP,
    )  # v1 champion
    second = train(dataset_csv, tracking_uri, max_iter=70)
    registry.register(
        second.run_id,
        second.model_uri,
        model_name=MODEL,
        decision=evaluate_run(dataset_csv, second.run_id, tracking_uri),
        tracking_uri=tracking_uri,
        experiment_name=EXP,
    )  # v2
    third = train(dataset_csv, tracking_uri, max_iter=90)
    decision = evaluate_run(dataset_csv, third.run_id, tracking_uri)  # against champion v1
    original = MlflowClient.set_registered_model_alias

    def fails_for_v3(self, name, alias, version):
        if str(version) == "3":
            raise ConnectionError("registry went away")
        return original(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fails_for_v3)
    with pytest.raises(ConnectionError):
        registry.register(
            third.run_id,
            third.model_uri,
            model_name=MODEL,
            decision=decision,
            tracking_uri=tracking_uri,
            experiment_name=EXP,
        )
    monkeypatch.undo()
    client = MlflowClient(tracking_uri)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")) == [
        "1",
        "2",
    ]
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "2"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_held_out_rows_stay_held_out_in_later_data_versions():
    import pandas as pd

    from mlstack.data import generate
    from mlstack.train.training import split

    v1 = generate.generate(1000, 7)
    v2 = pd.concat([v1, generate.generate(600, 8)], ignore_index=True).sample(
        frac=1, random_state=3
    )
    train_v1, _ = split(v1, 0.25, 42)
    _, held_v2 = split(v2, 0.25, 42)
    both = train_v1.merge(held_v2, how="inner")
    assert both.empty  # the champion is never scored on rows it was trained on
    assert 0.2 < len(held_v2) / len(v2) < 0.3
