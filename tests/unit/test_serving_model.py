"""The ONNX engine equals sklearn and the pipeline's own model is served by it; drift windows,
PSI and the score histogram behave."""

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mlstack.data import generate
from mlstack.data import profile as profiles
from mlstack.schema import TARGET
from mlstack.train import onnx_export
from mlstack.train.training import HyperParams, build_model, features
from serving import engine
from serving.codec import Batch
from serving.monitoring import DriftWindow, ScoreHistogram


@pytest.fixture(scope="module")
def fitted():
    df = generate.generate(1500, 7)
    model = build_model(HyperParams(max_iter=60, max_depth=5))
    model.fit(features(df), df[TARGET])
    return df, model


@pytest.fixture(scope="module")
def graph(fitted):
    return onnx_export.classifier_onnx(fitted[1])


def test_the_engine_matches_sklearn_with_missing_and_unknown_values(fitted, graph):
    _, model = fitted
    probe = Batch.from_frame(onnx_export.probe_frame())
    served = engine.load(model, graph, probe, threads=1)
    assert served is not None
    batch = Batch.from_frame(generate.generate(800, 3, drift=True))
    batch.categorical[0, 0] = "never-seen"
    batch.categorical[1, 1] = None
    batch.numeric[2, :] = np.nan
    want = model.predict_proba(batch.to_frame())
    got = served.predict_proba(batch)
    assert got.dtype == np.float64 and got.shape == (800, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=onnx_export.TOLERANCE)
    # the numpy preprocessing is the ColumnTransformer's output, column for column
    np.testing.assert_allclose(
        served.preprocessing.transform(batch), model[:-1].transform(batch.to_frame()), atol=1e-4
    )


def test_the_probe_has_missing_numbers_and_missing_and_unseen_categories():
    probe = Batch.from_frame(onnx_export.probe_frame())
    codes = probe.category_codes()
    assert np.isnan(probe.numeric[0]).all()
    for j in range(codes.shape[1]):
        assert {-1, -2} <= set(codes[:, j].tolist())


def test_other_models_and_wrong_graphs_are_served_by_sklearn(fitted, graph):
    df, model = fitted
    probe = Batch.from_frame(onnx_export.probe_frame())
    other = build_model(HyperParams(max_iter=20))
    other.fit(features(df), df[TARGET])
    assert engine.load(other, graph, probe, threads=1) is None  # the graph is another model's
    assert engine.load(model, None, probe, threads=1) is None  # logged without a graph
    assert engine.load(model, b"not an onnx graph", probe, threads=1) is None
    assert engine.Preprocessing.from_pipeline(object()) is None


def test_the_engine_serves_from_the_graphs_record_as_sklearn_does(fitted, tmp_path):
    """The graph training writes carries the preprocessing values and the probe's sklearn
    probabilities: the engine made from it alone equals the Pipeline."""
    _, model = fitted
    recorded = onnx_export.write(model, tmp_path).read_bytes()
    served = engine.load_recorded(recorded, onnx_export.sha256(recorded), threads=1)
    assert served is not None
    batch = Batch.from_frame(generate.generate(800, 4, drift=True))
    batch.categorical[0, 1] = "never-seen"
    batch.categorical[1, 0] = None
    batch.numeric[2, :] = np.nan
    np.testing.assert_allclose(
        served.predict_proba(batch),
        model.predict_proba(batch.to_frame()),
        rtol=0,
        atol=onnx_export.TOLERANCE,
    )
    from_pipeline = engine.Preprocessing.from_pipeline(model)
    assert from_pipeline is not None
    np.testing.assert_array_equal(
        served.preprocessing.transform(batch), from_pipeline.transform(batch)
    )


def _with_record(model: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    import json

    import onnx

    graph = onnx.load_from_string(model)
    [prop] = [p for p in graph.metadata_props if p.key == onnx_export.RECORD_KEY]
    record = json.loads(prop.value)
    edit(record)
    prop.value = json.dumps(record)
    return graph.SerializeToString()


def test_a_graph_is_taken_at_its_record_only_when_named_and_agreeing(fitted, graph, tmp_path):
    _, model = fitted
    recorded = onnx_export.write(model, tmp_path).read_bytes()

    def wrong_probability(record: dict) -> None:
        record["probe"]["probabilities"][3] = [0.5, 0.5]

    def other_medians(record: dict) -> None:
        record["preprocessing"]["medians"] = [m + 10 for m in record["preprocessing"]["medians"]]

    def other_columns(record: dict) -> None:
        record["preprocessing"]["numeric"] = record["preprocessing"]["numeric"][::-1]

    assert engine.load_recorded(recorded, "0" * 64, threads=1) is None  # not the named graph
    assert engine.load_recorded(recorded, None, threads=1) is None  # MLmodel names no graph
    assert engine.load_recorded(graph, onnx_export.sha256(graph), threads=1) is None  # no record
    for edit in (wrong_probability, other_medians, other_columns):
        edited = _with_record(recorded, edit)
        assert engine.load_recorded(edited, onnx_export.sha256(edited), threads=1) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_threads_are_the_cpu_budget(graph, threads):
    options = onnx_export.session(graph, threads).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, threads)


def test_the_score_histogram_counts_a_batch_as_prometheus_buckets_do():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    hist = ScoreHistogram("score_test", "test", buckets=(0.1, 0.5, 1.0))
    registry.register(hist)
    hist.series("m", "1").observe(np.array([0.05, 0.1, 0.3, 0.5, 0.9, 1.0]))
    hist.series("m", "1").observe(np.array([0.2]))  # the same series again
    labels = {"model_name": "m", "model_version": "1"}
    got = {
        le: registry.get_sample_value("score_test_bucket", {**labels, "le": le})
        for le in ("0.1", "0.5", "1.0", "+Inf")
    }
    assert got == {"0.1": 2.0, "0.5": 5.0, "1.0": 7.0, "+Inf": 7.0}
    assert registry.get_sample_value("score_test_count", labels) == 7.0
    assert registry.get_sample_value("score_test_sum", labels) == pytest.approx(3.05)
    assert REGISTRY.get_sample_value("score_test_count", labels) is None  # its own registry


def test_profile_round_trip_and_psi(fitted):
    df, _ = fitted
    ref = profiles.build(df)
    assert profiles.from_dict(profiles.to_dict(ref)) == ref
    for p in ref.values():
        assert sum(p.expected) == pytest.approx(1.0)
    same = DriftWindow(ref, 1000)
    same.update(Batch.from_frame(generate.generate(1000, 99)))
    drifted = DriftWindow(ref, 1000)
    drifted.update(Batch.from_frame(generate.generate(1000, 99, drift=True)))
    calm, moved = same.psi(), drifted.psi()
    assert max(calm.values()) < 0.1
    assert moved["monthly_charges"] > 0.25 and moved["support_calls"] > 0.25
    assert moved["age"] < 0.1  # not drifted by the generator


def test_drift_window_slides(fitted):
    df, _ = fitted
    window = DriftWindow(profiles.build(df), 300)
    window.update(Batch.from_frame(generate.generate(250, 5, drift=True)))
    assert window.filled == 250
    for seed in range(4):  # 400 calm rows push every drifted row out
        window.update(Batch.from_frame(generate.generate(100, 50 + seed)))
    assert window.filled == 300
    assert window.psi()["monthly_charges"] < 0.1
    # bigger than the window
    window.update(Batch.from_frame(generate.generate(1000, 9, drift=True)))
    assert window.filled == 300 and window.psi()["monthly_charges"] > 0.25


def test_the_repository_extension_handed_to_kserve_refuses_load_and_unload():
    """What a gRPC RepositoryModelLoad/Unload reaches (REST does not mount them at all)."""
    import asyncio

    from kserve import Model
    from kserve.model_repository import ModelRepository

    from serving.surface import SealedRepository

    registry = ModelRepository()
    model = Model("served")
    model.load()
    registry.update(model)
    sealed = SealedRepository(registry)
    for action in (sealed.unload, sealed.load):
        with pytest.raises(NotImplementedError, match="not offered here"):
            asyncio.run(action("served"))
    assert registry.get_model("served") is model and asyncio.run(registry.is_model_ready("served"))


@pytest.mark.slow
def test_the_pipelines_own_model_is_served_by_onnxruntime(tmp_path):
    """The model the pipeline trains (its data and hyperparameter defaults), logged by the train
    step and loaded by the predictor as the cluster does: never the sklearn fallback."""
    from pathlib import Path

    import mlflow

    from mlstack.settings import DEFAULTS
    from mlstack.train.artifacts import load_model
    from mlstack.train.tracking import sqlite_store
    from mlstack.train.training import TrainingLineage, train_and_log
    from serving.model import ChurnModel

    uri = sqlite_store(tmp_path / "mlflow")
    data = tmp_path / "churn.csv"
    generate.write_csv(generate.generate(DEFAULTS.data_rows, DEFAULTS.data_seed), data)
    trained = train_and_log(
        data,
        HyperParams(),
        lineage=TrainingLineage(),
        tracking_uri=uri,
        experiment_name="onnx",
        test_size=DEFAULTS.test_size,
        split_seed=DEFAULTS.split_seed,
    )
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(trained.model_uri, dst_path=str(tmp_path)))
    assert (local / onnx_export.ONNX_PATH).is_file()
    served = ChurnModel("churn-own", local, "3")
    assert served.load()
    assert served.engine_name == "onnxruntime", "the pipeline's model fell back to sklearn"
    # served from the graph's record: not even the fallback's check against the Pipeline ran
    assert served.pipeline is None, "the graph's record did not verify: the Pipeline was parsed"
    labels = {"model_name": "churn-own", "model_version": "3", "engine": "onnxruntime"}
    assert REGISTRY.get_sample_value("model_fast_path", labels) == 1.0
    rows = generate.generate(300, 11, drift=True)
    np.testing.assert_allclose(
        served.predict_proba(Batch.from_frame(rows)),
        load_model(local, None).pipeline.predict_proba(features(rows)),
        rtol=0,
        atol=onnx_export.TOLERANCE,
    )
