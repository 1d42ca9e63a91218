"""The model's gradient-boosting part as ONNX, for the predictor's onnxruntime engine.

Only the fitted classifier is converted, never the whole Pipeline: skl2onnx drops
``SimpleImputer(add_indicator=True)``'s indicator columns without an error and refuses a
NaN-missing categorical imputer, so the preprocessing stays the project's (sklearn's at training,
its numpy equivalent in ``serving/engine.py``). The converted trees compare in float32, so the
check against sklearn allows ``TOLERANCE`` on each probability.

The file travels in the MLflow model directory as an ``extra_files`` entry of the sklearn flavor
(``ONNX_PATH``), so the model digest covers it; ``mlstack.train.artifacts.load_model`` reads it
from that fixed path only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlstack.errors import StackError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

ONNX_FILE = "classifier.onnx"
# where mlflow.sklearn.save_model/log_model(extra_files=[...]) puts it in the model directory
ONNX_PATH = f"extra_files/{ONNX_FILE}"
# the largest difference in a probability allowed between onnxruntime (float32 trees and sums)
# and sklearn (float64) on the probe
TOLERANCE = 1e-5
INPUT_NAME = "X"
PROBABILITIES = "probabilities"


def probe_frame(rows: int = 500) -> pd.DataFrame:
    """Schema rows (drifted, so spread beyond the training ranges) with every kind of value the
    engine must handle: missing numbers (a whole row of them), missing and unseen categories."""
    from mlstack.data import generate
    from mlstack.schema import categorical_features, numeric_features

    df = generate.generate(rows, seed=12345, drift=True)
    numeric, categorical = numeric_features(), categorical_features()
    df[numeric] = df[numeric].astype("float64")
    df.loc[df.index[0], numeric] = np.nan
    df[categorical] = df[categorical].astype(object)
    for j, name in enumerate(categorical):
        df.loc[df.index[1 + j], name] = "never-seen"
        df.loc[df.index[1 + len(categorical) + j], name] = None
    return df


def classifier_onnx(pipeline: Pipeline) -> bytes:
    """The Pipeline's last step converted by skl2onnx: input ``X`` (float32, n × the features the
    preprocessing makes), output ``probabilities`` (n × 2). ``StackError`` when skl2onnx cannot
    convert it."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    clf = pipeline.steps[-1][1]
    width = int(clf.n_features_in_)
    try:
        onnx_model = to_onnx(
            clf,
            initial_types=[(INPUT_NAME, FloatTensorType([None, width]))],
            options={id(clf): {"zipmap": False}},
        )
    except Exception as exc:  # noqa: BLE001 (skl2onnx raises many types; one line for all)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise StackError(
            f"cannot convert the {type(clf).__name__} to ONNX ({reason}): the predictor needs it"
        ) from None
    data: bytes = onnx_model.SerializeToString()
    return data


def session(model: bytes, threads: int = 1) -> Any:
    """An onnxruntime session on ``model`` with ``threads`` intra- and inter-op threads (the
    container's CPU budget), sequential, no spinning threads burning the other cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray) -> np.ndarray:
    """(n, 2) float64 probabilities for the preprocessed matrix ``x``."""
    (proba,) = sess.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(proba, dtype=np.float64)


def max_difference(pipeline: Pipeline, model: bytes, frame: pd.DataFrame) -> float:
    """The largest difference between sklearn's probabilities for ``frame`` (schema rows) and
    the ONNX classifier's on sklearn's own preprocessing of them."""
    from mlstack.train.training import features

    x = features(frame)
    want = pipeline.predict_proba(x)
    got = run(session(model), pipeline[:-1].transform(x))
    return float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")


def write(pipeline: Pipeline, directory: Path) -> Path:
    """Convert the classifier, check it against sklearn on ``probe_frame()`` and write it to
    ``directory/ONNX_FILE`` (for ``extra_files``). ``StackError`` when the conversion fails or
    the check finds a difference over ``TOLERANCE``: a model the predictor would serve through
    sklearn is not logged."""
    model = classifier_onnx(pipeline)
    diff = max_difference(pipeline, model, probe_frame())
    if not diff <= TOLERANCE:
        raise StackError(
            f"the ONNX classifier differs from sklearn by {diff:.3g} on the probe rows (allowed "
            f"{TOLERANCE:g}): not logging a model the predictor would serve through sklearn"
        )
    path = directory / ONNX_FILE
    path.write_bytes(model)
    return path
