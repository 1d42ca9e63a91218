"""The predictor's engine: the Pipeline's fitted preprocessing in numpy, then the classifier's
ONNX graph (written at training time, ``mlstack.train.onnx_export``) in onnxruntime.

sklearn's Pipeline costs milliseconds for one row (a ``ColumnTransformer`` over a DataFrame, then
one Cython call per tree). ``Preprocessing.from_pipeline`` reads the fitted values of the
preprocessing steps through their public attributes (the numeric imputer's medians and missing
indicators, the categorical imputer's fill value, the one-hot encoder's categories) and applies
them to a ``Batch`` with a few vectorised steps; onnxruntime runs the trees. ``load`` returns the
engine only when it gives the Pipeline's probabilities (to ``onnx_export.TOLERANCE``: the ONNX
trees are float32) on a probe batch with missing and unseen values, and None for a model shape it
does not know: the predictor then serves through sklearn and says so (``model_fast_path`` 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlstack.train import onnx_export
from serving.codec import CATEGORICAL, MISSING, NUMERIC, UNKNOWN, Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """The ColumnTransformer's output, from a Batch: imputed numbers, missing indicators, one-hot
    categories (in that order)."""

    medians: np.ndarray  # (n_numeric,)
    indicator_cols: np.ndarray  # numeric columns that get a missing indicator
    # per categorical feature: code -> one-hot column, or -1 for none (an unseen category)
    onehot_cols: list[np.ndarray]
    width: int

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> Preprocessing | None:
        """The preprocessing of the Pipeline ``mlstack.train.training.build_model`` makes; None
        for any other shape."""
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
                and num_cols == [f.name for f in NUMERIC]
                and cat_cols == [f.name for f in CATEGORICAL]
                and type(num_imputer).__name__ == "SimpleImputer"
                and num_imputer.strategy == "median"
                and cat_imputer.strategy == "constant"
                and type(onehot).__name__ == "OneHotEncoder"
                and onehot.drop_idx_ is None
                and onehot.handle_unknown == "ignore"
                and len(onehot.categories_) == len(CATEGORICAL)
            )
            if not shape_known:
                return None
            indicator = num_imputer.indicator_
            indicator_cols = (
                np.asarray(indicator.features_, dtype=np.intp)
                if indicator is not None
                else np.array([], dtype=np.intp)
            )
            fill = cat_imputer.fill_value
            offset = len(NUMERIC) + indicator_cols.size
            onehot_cols = []
            for feature, fitted in zip(CATEGORICAL, onehot.categories_, strict=True):
                column = {str(c): offset + k for k, c in enumerate(fitted)}
                table = np.full(len(feature.categories) + 2, -1, dtype=np.intp)
                for code, value in enumerate(feature.categories):
                    table[code] = column.get(value, -1)
                table[UNKNOWN] = -1
                table[MISSING] = column.get(str(fill), -1)
                onehot_cols.append(table)
                offset += len(fitted)
            return cls(
                medians=np.asarray(num_imputer.statistics_, dtype=np.float64),
                indicator_cols=indicator_cols,
                onehot_cols=onehot_cols,
                width=offset,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def transform(self, batch: Batch) -> np.ndarray:
        """(n, width) float32: what the classifier's ONNX graph takes."""
        num = batch.numeric
        n = num.shape[0]
        missing = np.isnan(num)
        x = np.zeros((n, self.width), dtype=np.float32)
        x[:, : len(NUMERIC)] = np.where(missing, self.medians, num)
        x[:, len(NUMERIC) : len(NUMERIC) + self.indicator_cols.size] = missing[
            :, self.indicator_cols
        ]
        codes = batch.category_codes()
        rows = np.arange(n)
        for j, table in enumerate(self.onehot_cols):
            cols = table[codes[:, j]]
            hit = cols >= 0  # an unseen category stays all-zero (handle_unknown="ignore")
            x[rows[hit], cols[hit]] = 1.0
        return x


@dataclass(frozen=True)
class OnnxEngine:
    preprocessing: Preprocessing
    session: Any  # onnxruntime.InferenceSession

    def predict_proba(self, batch: Batch) -> np.ndarray:
        """(n, 2) float64 class probabilities."""
        return onnx_export.run(self.session, self.preprocessing.transform(batch))


def load(pipeline: Any, model: bytes | None, probe: Batch, threads: int) -> OnnxEngine | None:
    """The engine for ``pipeline`` with its classifier's ONNX ``model`` on ``threads`` threads,
    when it gives the Pipeline's probabilities on ``probe``; None (and why, in the log)
    otherwise."""
    if model is None:
        log.warning("the model has no ONNX classifier (%s)", onnx_export.ONNX_PATH)
        return None
    preprocessing = Preprocessing.from_pipeline(pipeline)
    if preprocessing is None:
        log.warning("the model's preprocessing is not the shape the engine knows")
        return None
    try:
        engine = OnnxEngine(preprocessing, onnx_export.session(model, threads))
        got = engine.predict_proba(probe)
    except Exception:  # a graph onnxruntime refuses or one of another shape: served by sklearn
        log.exception("onnxruntime could not run the model's ONNX classifier")
        return None
    want = pipeline.predict_proba(probe.to_frame())
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not diff <= onnx_export.TOLERANCE:
        log.warning(
            "the ONNX engine differs from the Pipeline by %.3g on the probe (allowed %g)",
            diff,
            onnx_export.TOLERANCE,
        )
        return None
    return engine
