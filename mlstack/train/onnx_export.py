"""The model's gradient-boosting part as ONNX, for the predictor's onnxruntime engine.

Only the fitted classifier is converted, never the whole Pipeline: skl2onnx drops
``SimpleImputer(add_indicator=True)``'s indicator columns without an error and refuses a
NaN-missing categorical imputer, so the preprocessing stays the project's (sklearn's at training,
its numpy equivalent in ``serving/engine.py``). The converted trees compare in float32, so the
check against sklearn allows ``TOLERANCE`` on each probability.

The file travels in the MLflow model directory as an ``extra_files`` entry of the sklearn flavor
(``ONNX_PATH``), so the model digest covers it; ``mlstack.train.artifacts.load_model`` reads it
from that fixed path only.

The graph also carries, in its ``metadata_props`` (``RECORD_KEY``, JSON), what the predictor needs
to serve and check it without scikit-learn: the fitted preprocessing's values
(``preprocessing_values``: medians, missing-indicator columns, the categorical fill value and
one-hot categories) and the probe rows with sklearn's probabilities for them, recorded at training.
MLmodel's metadata names the graph's sha256 (``model_metadata``), so a graph swapped into another
model's directory is not taken at its word.
"""

from __future__ import annotations

import hashlib
import json
import math
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
# the graph's metadata_props key of the engine's record (JSON: preprocessing values and the probe)
RECORD_KEY = "mlstack.engine"
# MLmodel metadata: the sha256 of the graph logged with the model
SHA256_METADATA = "onnx_sha256"


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


def preprocessing_values(pipeline: Pipeline) -> dict[str, Any] | None:
    """The fitted values of the preprocessing ``mlstack.train.training.build_model`` makes, read
    through public attributes, as plain JSON values: ``numeric`` and ``categorical`` (column
    names), ``medians``, ``indicator_features`` (numeric columns with a missing indicator),
    ``fill_value`` (the categorical imputer's) and ``categories`` (the one-hot encoder's, per
    categorical column). None for a Pipeline of any other shape."""
    try:
        pre = pipeline.named_steps["preprocess"]
        transformers = [(name, est, list(cols)) for name, est, cols in pre.transformers_]
        (num_name, num_imputer, num_cols), (cat_name, cat_pipe, cat_cols) = [
            t for t in transformers if t[0] != "remainder" or t[1] != "drop"
        ]
        cat_imputer = cat_pipe.named_steps["impute"]
        onehot = cat_pipe.named_steps["onehot"]
        shape_known = (
            (num_name, cat_name) == ("num", "cat")
            and type(num_imputer).__name__ == "SimpleImputer"
            and num_imputer.strategy == "median"
            and cat_imputer.strategy == "constant"
            and type(onehot).__name__ == "OneHotEncoder"
            and onehot.drop_idx_ is None
            and onehot.handle_unknown == "ignore"
            and len(onehot.categories_) == len(cat_cols)
        )
        if not shape_known:
            return None
        indicator = num_imputer.indicator_
        return {
            "numeric": [str(c) for c in num_cols],
            "categorical": [str(c) for c in cat_cols],
            "medians": [float(v) for v in num_imputer.statistics_],
            "indicator_features": []
            if indicator is None
            else [int(i) for i in indicator.features_],
            "fill_value": str(cat_imputer.fill_value),
            "categories": [[str(c) for c in fitted] for fitted in onehot.categories_],
        }
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _json_value(value: Any) -> Any:
    """A probe cell as JSON: NaN and missing as null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def record(pipeline: Pipeline, frame: pd.DataFrame) -> dict[str, Any]:
    """The engine's record (``RECORD_KEY``): the preprocessing values and the ``frame``'s rows
    (schema features, null for missing) with sklearn's probabilities for them."""
    from mlstack.schema import categorical_features, numeric_features
    from mlstack.train.training import features

    numeric, categorical = numeric_features(), categorical_features()
    proba = pipeline.predict_proba(features(frame))
    return {
        "preprocessing": preprocessing_values(pipeline),
        "probe": {
            "numeric": [[_json_value(float(v)) for v in row] for row in frame[numeric].to_numpy()],
            "categorical": [[_json_value(v) for v in row] for row in frame[categorical].to_numpy()],
            "probabilities": [[float(p) for p in row] for row in proba],
        },
    }


def recorded(sess: Any) -> dict[str, Any] | None:
    """The engine's record a graph carries (``RECORD_KEY``), or None when it has none or it is
    not a JSON object."""
    text = sess.get_modelmeta().custom_metadata_map.get(RECORD_KEY)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def sha256(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def model_metadata(onnx_file: Path) -> dict[str, str]:
    """What MLmodel's metadata says about the graph written to ``onnx_file``: its sha256."""
    return {SHA256_METADATA: sha256(onnx_file.read_bytes())}


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
    sklearn is not logged. The graph carries the engine's record (``record``) of the probe."""
    import onnx

    model = classifier_onnx(pipeline)
    frame = probe_frame()
    diff = max_difference(pipeline, model, frame)
    if not diff <= TOLERANCE:
        raise StackError(
            f"the ONNX classifier differs from sklearn by {diff:.3g} on the probe rows (allowed "
            f"{TOLERANCE:g}): not logging a model the predictor would serve through sklearn"
        )
    graph = onnx.load_from_string(model)
    onnx.helper.set_model_props(graph, {RECORD_KEY: json.dumps(record(pipeline, frame))})
    path = directory / ONNX_FILE
    path.write_bytes(graph.SerializeToString())
    return path
