"""The fast path equals sklearn; drift windows and PSI behave."""

import numpy as np
import pytest

from mlstack.data import generate
from mlstack.data import profile as profiles
from mlstack.schema import TARGET
from mlstack.train.training import HyperParams, build_model, features
from serving.codec import Batch
from serving.compiled import compile_model, verify
from serving.monitoring import DriftWindow


@pytest.fixture(scope="module")
def fitted():
    df = generate.generate(1500, 7)
    model = build_model(HyperParams(max_iter=60, max_depth=5))
    model.fit(features(df), df[TARGET])
    return df, model


def test_fast_path_matches_sklearn_with_missing_and_unknown_values(fitted):
    _, model = fitted
    compiled = compile_model(model)
    assert compiled is not None
    probe = Batch.from_frame(generate.generate(800, 3, drift=True))
    probe.categorical[0, 0] = "never-seen"
    probe.categorical[1, 1] = None
    probe.numeric[2, :] = np.nan
    want = model.predict_proba(probe.to_frame())
    np.testing.assert_allclose(compiled.predict_proba(probe), want, rtol=0, atol=1e-12)
    assert verify(compiled, model, probe)


def test_unknown_model_shapes_are_not_compiled(fitted):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    _, model = fitted
    other = Pipeline(
        [("preprocess", model.named_steps["preprocess"]), ("classifier", LogisticRegression())]
    )
    assert compile_model(other) is None
    assert compile_model(object()) is None


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
