"""The project's one model loader (mlstack.train.artifacts.load_model) and evaluate's use of it:
skops only, the project's trusted types, the digest recorded at evaluation checked at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from mlstack.data import generate
from mlstack.errors import StackError
from mlstack.settings import Gates
from mlstack.train import artifacts, onnx_export
from mlstack.train.artifacts import CLIENT_ADDED_FILES, load_model, model_digest
from mlstack.train.evaluation import evaluate
from mlstack.train.tracking import sqlite_store
from mlstack.train.training import HyperParams, TrainingLineage, features, train_and_log
from serving.codec import Batch
from serving.model import ChurnModel
from tests.support.artifacts import (
    pickle_artifact,
    saved_model,
    tamper_threshold,
    trusting_artifact,
)
from tests.support.servers import train_and_register

MODEL = "loading-test"
LINEAGE = TrainingLineage("md5-load", "data/churn.csv", "b" * 40, "kfp-load")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return saved_model(tmp_path_factory.mktemp("good") / "model")


def test_a_pipeline_saved_as_training_logs_it_loads_and_serves(good, tmp_path):
    digest = model_digest(good)
    loaded = load_model(good, digest)
    assert loaded.digest == digest and loaded.digest.startswith("sha256:")
    assert type(loaded.pipeline).__name__ == "Pipeline"
    assert loaded.decision_threshold == 0.5 and loaded.metrics == {"roc_auc": 0.9}
    assert loaded.lineage == {"data_md5": "md5-test", "git_sha": "a" * 40}
    assert loaded.reference_profile is not None and "age" in loaded.reference_profile
    rows = generate.generate(50, 3)
    want = mlflow.sklearn.load_model(str(good)).predict_proba(features(rows))
    np.testing.assert_allclose(loaded.pipeline.predict_proba(features(rows)), want, atol=0)
    # the predictor's load: the same pipeline behind a V1 request
    served = ChurnModel("churn", good, "7", expected_digest=digest)
    assert served.load() and served.digest == digest and served.lineage.data_md5 == "md5-test"
    assert loaded.onnx is not None and served.engine_name == "onnxruntime"
    np.testing.assert_allclose(
        served.predict_proba(Batch.from_frame(rows)), want, atol=onnx_export.TOLERANCE
    )


@pytest.mark.reliability("pickle-model-refused")
def test_a_pickle_artifact_is_refused_and_its_command_never_runs(good, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    hostile = pickle_artifact(good, tmp_path / "pickle", marker)
    # the attack is real: MLflow's own loader runs the command (its default allows pickle)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.sklearn.load_model(str(hostile))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(StackError, match="serialization format 'pickle': only 'skops'"):
        load_model(hostile, None)
    with pytest.raises(StackError, match="serialization format 'pickle'"):
        ChurnModel("churn", hostile, "1").load()
    assert not marker.exists()


@pytest.mark.reliability("artifact-trusted-types-ignored")
def test_types_an_artifact_trusts_itself_are_refused(good, tmp_path, monkeypatch):
    hostile = trusting_artifact(good, tmp_path / "trusting")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    # MLflow's loader takes the artifact's own list: os.system is loaded as a pipeline step
    import os

    assert mlflow.sklearn.load_model(str(hostile)).steps[0][1].func is os.system
    with pytest.raises(StackError, match=r"untrusted types: .*posix\.system"):
        load_model(hostile, None)


def _edited(good: Path, dst: Path, edit) -> Path:
    shutil.copytree(good, dst)
    doc = yaml.safe_load((dst / "MLmodel").read_text())
    edit(doc)
    (dst / "MLmodel").write_text(yaml.safe_dump(doc))
    return dst


def _cloudpickle(doc):
    doc["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"


def _other_flavor(doc):
    doc["flavors"]["python_function"]["loader_module"] = "mlflow.pyfunc.model"


def _extra_flavor(doc):
    doc["flavors"]["keras"] = {"keras_version": "3"}


def _escaping_path(doc):
    doc["flavors"]["sklearn"]["pickled_model"] = "../../outside.skops"


def _code_path(doc):
    doc["flavors"]["sklearn"]["code"] = "code"


def _other_extra_file(doc):
    doc["flavors"]["sklearn"]["extra_files"] = [{"path": "../../outside.onnx"}]


def _threshold_not_a_number(doc):
    doc["metadata"]["decision_threshold"] = "half"


@pytest.mark.reliability("foreign-model-layout-refused")
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_cloudpickle, "serialization format 'cloudpickle'"),
        (_other_flavor, "python_function loader 'mlflow.pyfunc.model'"),
        (_extra_flavor, r"flavor\(s\) \['keras'\]"),
        (_escaping_path, "model file '../../outside.skops'"),
        (_code_path, "ships code paths"),
        (_other_extra_file, r"extra files \[\{'path': '../../outside.onnx'\}\]"),
        (_threshold_not_a_number, "unreadable MLmodel metadata"),
    ],
)
def test_any_other_format_flavor_loader_or_path_is_refused(good, tmp_path, edit, message):
    with pytest.raises(StackError, match=message):
        load_model(_edited(good, tmp_path / "edited", edit), None)


def test_yaml_tags_in_mlmodel_are_not_executed_and_links_are_refused(good, tmp_path):
    tagged = shutil.copytree(good, tmp_path / "tagged")
    marker = tmp_path / "tagged-ran"
    with (tagged / "MLmodel").open("a") as fh:
        fh.write(f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(StackError, match="MLmodel is not YAML"):
        load_model(tagged, None)
    assert not marker.exists()
    linked = shutil.copytree(good, tmp_path / "linked")
    (linked / "model.skops").unlink()
    (linked / "model.skops").symlink_to(good / "model.skops")
    with pytest.raises(StackError, match="symbolic link: model.skops"):
        load_model(linked, None)
    with pytest.raises(StackError, match="not sha256:<64 hex digits>"):
        load_model(good, "md5:abc")


@pytest.mark.reliability("onnx-graph-disagrees-served-by-sklearn")
def test_an_onnx_graph_that_is_not_the_pipelines_is_not_served(good, tmp_path):
    """Without an expected digest nothing ties the graph to the pipeline but the probe check: a
    graph onnxruntime refuses, or another model's, is not served; sklearn serves and says so."""
    from prometheus_client import REGISTRY

    from tests.support.artifacts import saved_model as another_model

    other = another_model(tmp_path / "other", rows=600)
    rows = generate.generate(40, 5)
    want = load_model(good, None).pipeline.predict_proba(features(rows))
    for case, graph in (
        ("broken", b"not an onnx graph"),
        ("another", (other / onnx_export.ONNX_PATH).read_bytes()),
    ):
        swapped = shutil.copytree(good, tmp_path / case)
        (swapped / onnx_export.ONNX_PATH).write_bytes(graph)
        served = ChurnModel("churn-swapped", swapped, case)
        assert served.load() and served.engine_name == "sklearn"
        labels = {"model_name": "churn-swapped", "model_version": case, "engine": "sklearn"}
        assert REGISTRY.get_sample_value("model_fast_path", labels) == 0.0
        np.testing.assert_allclose(served.predict_proba(Batch.from_frame(rows)), want, atol=0)


def test_the_predictor_starts_on_the_graphs_record_without_importing_scikit_learn(good):
    """A fresh interpreter loads the model as the predictor's start does: the engine is built
    from the graph's record (preprocessing values, probe probabilities recorded at training),
    scikit-learn, scipy and skops are never imported and the Pipeline is not parsed."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from serving.model import ChurnModel\n"
        f"m = ChurnModel('churn-start', Path({str(good)!r}), '1')\n"
        "assert m.load()\n"
        "print(json.dumps({'engine': m.engine_name, 'pipeline': m.pipeline is not None,\n"
        "    'imported': sorted(k for k in ('sklearn', 'scipy', 'skops') if k in sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "engine": "onnxruntime",
        "pipeline": False,
        "imported": [],
    }


def test_a_graph_without_a_record_is_checked_against_the_pipeline(good, tmp_path):
    """A model logged before graphs carried their record (or whose MLmodel names no graph): the
    Pipeline is parsed and the graph checked against it, and the engine still serves."""
    pipeline = load_model(good, None).pipeline
    old = shutil.copytree(good, tmp_path / "old")
    (old / onnx_export.ONNX_PATH).write_bytes(onnx_export.classifier_onnx(pipeline))

    def forget_the_graph(doc: dict) -> None:
        del doc["metadata"][onnx_export.SHA256_METADATA]

    from tests.support.artifacts import _rewrite_mlmodel

    _rewrite_mlmodel(old, forget_the_graph)
    served = ChurnModel("churn-old", old, "1")
    assert served.load() and served.engine_name == "onnxruntime"
    assert served.pipeline is not None  # the fallback's check parsed it
    rows = generate.generate(60, 8, drift=True)
    np.testing.assert_allclose(
        served.predict_proba(Batch.from_frame(rows)),
        pipeline.predict_proba(features(rows)),
        atol=onnx_export.TOLERANCE,
    )


def test_the_onnx_engine_is_not_kserves_engine_flag_and_unload_works(good):
    """KServe's Model has an ``engine`` flag (a model with an engine server: ModelServer.start
    starts it, ModelRepository.unload stops it); the predictor's ONNX engine does not set it."""
    import asyncio

    from kserve.model_repository import ModelRepository

    served = ChurnModel("churn-unload", good, "1")
    assert served.load() and served.engine_name == "onnxruntime"
    assert served.engine is False
    registry = ModelRepository()
    registry.update(served)
    assert asyncio.run(registry.is_model_ready("churn-unload"))
    registry.unload("churn-unload")
    assert registry.get_model("churn-unload") is None


@pytest.mark.reliability("tampered-model-refused-at-load")
def test_one_changed_byte_is_refused_with_both_digests_named(good, tmp_path):
    digest = model_digest(good)
    tampered = shutil.copytree(good, tmp_path / "tampered")
    tamper_threshold(tampered)
    actual = model_digest(tampered)
    with pytest.raises(StackError) as info:
        load_model(tampered, digest)
    message = str(info.value)
    assert "\n" not in message and digest in message and actual in message
    with pytest.raises(StackError, match="changed since evaluation"):
        ChurnModel("churn", tampered, "1", expected_digest=digest).load()


def test_the_excluded_file_is_the_one_mlflow_adds_to_a_registry_download():
    from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME

    assert frozenset({REGISTERED_MODEL_META_FILE_NAME}) == CLIENT_ADDED_FILES


@pytest.fixture
def store(tmp_path) -> str:
    """A sqlite store with v1 of MODEL trained on ``train.csv``, evaluated (the repository's
    gates) and registered as @champion."""
    uri = sqlite_store(tmp_path / "mlflow")
    data = tmp_path / "train.csv"
    generate.write_csv(generate.generate(1500, 7), data)
    train_and_register(
        data,
        params=HyperParams(max_iter=40),
        lineage=LINEAGE,
        model=MODEL,
        tracking_uri=uri,
        experiment="tests",
        gates=Gates(),
    )
    return uri


def _evaluate(uri: str, run_id: str, data: Path):
    return evaluate(
        data,
        run_id,
        model_name=MODEL,
        tracking_uri=uri,
        experiment_name="tests",
        gates=Gates(),
        test_size=0.25,
        split_seed=42,
    )


def _stored_dir(uri: str) -> Path:
    """Where the version's files live in the store (what KServe's storage initializer copies)."""
    client = MlflowClient(uri)
    source = client.get_model_version_download_uri(MODEL, "1")
    local = mlflow.artifacts.download_artifacts(source)  # a local store: the directory itself
    return Path(local)


@pytest.mark.slow
@pytest.mark.reliability("registry-download-digest-agrees")
def test_evaluate_records_the_digest_a_registry_download_and_the_bucket_agree_on(store, tmp_path):
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    mv = client.get_model_version(MODEL, "1")
    recorded = client.get_run(mv.run_id).data.tags["model_digest"]
    assert mv.tags["model_digest"] == recorded  # registration copies it to the version
    downloaded = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(tmp_path / "dl"))
    )
    assert (downloaded / "registered_model_meta").is_file()  # what MLflow's client adds
    assert model_digest(downloaded) == recorded
    assert model_digest(_stored_dir(store)) == recorded
    assert load_model(downloaded, recorded).digest == recorded


@pytest.mark.slow
@pytest.mark.reliability("tampered-model-refused-by-evaluate")
def test_evaluate_refuses_a_champion_or_a_retried_run_whose_files_changed(store, tmp_path):
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    first = client.get_model_version(MODEL, "1").run_id
    data = tmp_path / "train.csv"  # the store's training data
    tamper_threshold(_stored_dir(store))
    second = train_and_log(
        data,
        HyperParams(max_iter=40),
        lineage=LINEAGE,
        tracking_uri=store,
        experiment_name="tests",
        test_size=0.25,
        split_seed=42,
    )
    with pytest.raises(StackError, match="changed since evaluation"):
        _evaluate(store, second.run_id, data)
    assert "gates_passed" not in client.get_run(second.run_id).data.tags
    with pytest.raises(StackError, match="changed since evaluation"):
        _evaluate(store, first, data)  # a retried evaluate of the champion's own run


def test_load_logged_model_names_an_unknown_uri_in_one_line(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    with pytest.raises(StackError, match="cannot download the model runs:/0123/model"):
        artifacts.load_logged_model("runs:/0123/model", None)
