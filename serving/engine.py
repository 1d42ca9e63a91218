"""The predictor's engine: the Pipeline's fitted preprocessing in numpy, then the classifier's
ONNX graph (written at training time, ``mlstack.train.onnx_export``) in onnxruntime.

sklearn's Pipeline costs milliseconds for one row (a ``ColumnTransformer`` over a DataFrame, then
one Cython call per tree). ``Preprocessing.from_pipeline`` reads the fitted values of the
preprocessing steps through their public attributes (the numeric imputer's medians and missing
indicators, the categorical imputer's fill value, the one-hot encoder's categories) and applies
them to a ``Batch`` with a few vectorised steps; onnxruntime runs the trees. ``load_recorded``
builds the engine from the graph alone (the preprocessing values and probe probabilities training
recorded in it), so a predictor starts without importing scikit-learn; ``load`` returns the
engine only when it gives the Pipeline's probabilities (to ``onnx_export.TOLERANCE``: the ONNX
trees are float32) on a probe batch with missing and unseen values, and None for a model shape it
does not know: the predictor then serves through sklearn and says so (``model_fast_path`` 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlstack.train import onnx_export
from serving.codec import CATEGORICAL, MISSING, NUMERIC, UNKNOWN, Batch

log = logging.getLogger(__name__)
# the codes below the categories' own, in a one-hot block's order
assert (UNKNOWN, MISSING) == (-2, -1)
_CODE_BASE = 2  # code + _CODE_BASE: the position in a block [UNKNOWN, MISSING, categories...]


@dataclass(frozen=True)
class Preprocessing:
    """The ColumnTransformer's output, from a Batch: imputed numbers, missing indicators, one-hot
    categories (in that order)."""

    medians: np.ndarray  # (n_numeric,)
    indicator_cols: np.ndarray  # numeric columns that get a missing indicator
    # the one-hot column of every category code, all categorical features in one table: feature
    # j's block starts at ``code_shift[j] - 2`` and holds [UNKNOWN, MISSING, its categories...]
    # (so ``code + code_shift[j]`` indexes it); a code with no column (an unseen category) gets
    # column 0, which the imputed first number overwrites
    onehot_table: np.ndarray
    code_shift: np.ndarray
    width: int

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> Preprocessing | None:
        """The preprocessing of the Pipeline ``mlstack.train.training.build_model`` makes; None
        for any other shape."""
        return cls.from_values(onnx_export.preprocessing_values(pipeline))

    @classmethod
    def from_values(cls, values: Any) -> Preprocessing | None:
        """From the fitted values ``onnx_export.preprocessing_values`` reads (what a graph's
        record carries); None when they are not that for this schema's features."""
        try:
            num_cols, cat_cols = list(values["numeric"]), list(values["categorical"])
            categories = [[str(c) for c in fitted] for fitted in values["categories"]]
            indicator_cols = np.asarray(values["indicator_features"], dtype=np.intp).reshape(-1)
            medians = np.asarray(values["medians"], dtype=np.float64)
            fill = str(values["fill_value"])
        except (KeyError, TypeError, ValueError):
            return None
        if (
            num_cols != [f.name for f in NUMERIC]
            or cat_cols != [f.name for f in CATEGORICAL]
            or medians.shape != (len(NUMERIC),)
            or len(categories) != len(CATEGORICAL)
            or not np.all((indicator_cols >= 0) & (indicator_cols < len(NUMERIC)))
        ):
            return None
        offset = len(NUMERIC) + indicator_cols.size
        blocks: list[list[int]] = []
        shifts = []
        for feature, fitted in zip(CATEGORICAL, categories, strict=True):
            column = {c: offset + k for k, c in enumerate(fitted)}
            shifts.append(sum(map(len, blocks)) + _CODE_BASE)
            # UNKNOWN (handle_unknown="ignore": no column), MISSING (the fill value's column),
            # then the schema's categories
            blocks.append([0, column.get(fill, 0), *(column.get(c, 0) for c in feature.categories)])
            offset += len(fitted)
        return cls(
            medians=medians,
            indicator_cols=indicator_cols,
            onehot_table=np.asarray([c for b in blocks for c in b], dtype=np.intp),
            code_shift=np.asarray(shifts, dtype=np.intp),
            width=offset,
        )

    def transform(self, batch: Batch) -> np.ndarray:
        """(n, width) float32: what the classifier's ONNX graph takes. A few whole-batch numpy
        calls, whatever the number of rows or features."""
        num = batch.numeric
        n = num.shape[0]
        x = np.zeros((n, self.width), dtype=np.float32)
        # the one-hot ones first: an unseen category's 1 lands in column 0, overwritten below
        cols = self.onehot_table[batch.category_codes() + self.code_shift]
        x.ravel()[cols + np.arange(0, n * self.width, self.width)[:, None]] = 1.0
        missing = np.isnan(num)
        x[:, : len(NUMERIC)] = np.where(missing, self.medians, num)
        x[:, len(NUMERIC) : len(NUMERIC) + self.indicator_cols.size] = missing[
            :, self.indicator_cols
        ]
        return x


@dataclass(frozen=True)
class OnnxEngine:
    preprocessing: Preprocessing
    session: Any  # onnxruntime.InferenceSession

    def predict_proba(self, batch: Batch) -> np.ndarray:
        """(n, 2) float64 class probabilities."""
        return onnx_export.run(self.session, self.preprocessing.transform(batch))


def _probe(record: dict[str, Any]) -> tuple[Batch, np.ndarray]:
    """The probe rows and sklearn's probabilities for them, as a graph's record carries them."""
    probe = record["probe"]
    numeric = np.array(
        [[math.nan if v is None else float(v) for v in row] for row in probe["numeric"]],
        dtype=np.float64,
    ).reshape(-1, len(NUMERIC))
    categorical = np.array(probe["categorical"], dtype=object).reshape(-1, len(CATEGORICAL))
    want = np.asarray(probe["probabilities"], dtype=np.float64)
    return Batch(numeric, categorical), want


def _agrees(engine: OnnxEngine, probe: Batch, want: np.ndarray, against: str) -> bool:
    got = engine.predict_proba(probe)
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not diff <= onnx_export.TOLERANCE:
        log.warning(
            "the ONNX engine differs from %s by %.3g on the probe (allowed %g)",
            against,
            diff,
            onnx_export.TOLERANCE,
        )
        return False
    return True


def load_recorded(model: bytes | None, sha256: str | None, threads: int) -> OnnxEngine | None:
    """The engine from the graph alone, without scikit-learn: the preprocessing values and the
    probe its record carries (``onnx_export.record``, written at training), when the graph is the
    one MLmodel names (``sha256``) and reproduces the Pipeline's probabilities recorded for the
    probe rows; None (and why, in the log) otherwise, and ``load`` checks it against the
    Pipeline itself."""
    if model is None or sha256 is None:
        return None
    if onnx_export.sha256(model) != sha256:
        log.warning("the ONNX graph is not the one the model's MLmodel names (sha256)")
        return None
    try:
        session = onnx_export.session(model, threads)
        record = onnx_export.recorded(session)
        if record is None:
            log.warning("the ONNX graph carries no record of its preprocessing and probe")
            return None
        preprocessing = Preprocessing.from_values(record.get("preprocessing"))
        if preprocessing is None:
            log.warning("the graph's recorded preprocessing is not the shape the engine knows")
            return None
        engine = OnnxEngine(preprocessing, session)
        probe, want = _probe(record)
        return engine if _agrees(engine, probe, want, "the recorded probabilities") else None
    except Exception:  # a graph onnxruntime refuses or a record of another shape
        log.exception("onnxruntime could not run the model's ONNX classifier on its record")
        return None


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
        want = pipeline.predict_proba(probe.to_frame())
        return engine if _agrees(engine, probe, want, "the Pipeline") else None
    except Exception:  # a graph onnxruntime refuses or one of another shape: served by sklearn
        log.exception("onnxruntime could not run the model's ONNX classifier")
        return None
