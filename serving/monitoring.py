"""Prometheus metrics of the predictor, beside KServe's own latency histograms.

- ``model_predictions_total{model_name, model_version, predicted_class}``: the prediction mix
- ``model_prediction_score{model_name, model_version}``: histogram of the churn probability
  (by version: canary analysis compares the two versions of a canary), counted a batch at a time
  (``ScoreHistogram``)
- ``model_input_errors_total{model_name, reason}``: refused requests by reason
- ``model_info{model_name, model_version, data_md5, git_sha, mlflow_run_id, kfp_run_id} 1``
- ``model_feature_drift_psi{model_name, feature}``: PSI of the last N rows against the training
  profile, computed when scraped (the request path only copies the rows' values into a ring)
- ``model_drift_window_rows{model_name}``: how many rows that window holds
- ``model_training_metric{model_name, model_version, metric}``: the model's held-out metrics
- ``model_fast_path{model_name, model_version, engine}``: 1 when the model is served by
  onnxruntime after the numpy preprocessing, 0 when it fell back to the sklearn Pipeline
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mlstack.data import profile as profiles
from mlstack.data.profile import FeatureProfile
from serving.codec import CATEGORICAL, MISSING, NUMERIC, UNKNOWN, Batch

PREDICTIONS = Counter(
    "model_predictions",
    "Predictions served, by predicted class",
    ["model_name", "model_version", "predicted_class"],
)


class ScoreSeries:
    """One (model_name, model_version) series of a ``ScoreHistogram``."""

    def __init__(self, bounds: np.ndarray):
        self.bounds = bounds
        self.counts = np.zeros(bounds.size + 1, dtype=np.int64)  # per bucket, not cumulative
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, scores: np.ndarray) -> None:
        # bucket i counts the scores <= bounds[i] and > bounds[i - 1]; the last, the rest (+Inf)
        counts = np.bincount(
            np.searchsorted(self.bounds, scores, side="left"), minlength=self.bounds.size + 1
        )
        total = float(np.sum(scores))
        with self._lock:
            self.counts += counts
            self.total += total

    def snapshot(self) -> tuple[np.ndarray, float]:
        """Cumulative bucket counts and the sum."""
        with self._lock:
            return self.counts.cumsum(), self.total


class ScoreHistogram(Collector):
    """A Prometheus histogram per (model_name, model_version) that counts a whole batch of
    scores with one numpy call (prometheus_client's ``Histogram.observe`` takes one value and a
    lock per call: per row on the request path)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, str], ScoreSeries] = {}
        self._lock = threading.Lock()

    def series(self, model_name: str, model_version: str) -> ScoreSeries:
        """The series of these labels (made on first use), to observe without a look-up."""
        with self._lock:
            series = self._series.get((model_name, model_version))
            if series is None:
                series = self._series[(model_name, model_version)] = ScoreSeries(self.bounds)
            return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=["model_name", "model_version"]
        )
        with self._lock:
            series = list(self._series.items())
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, one in series:
            cumulative, total = one.snapshot()
            family.add_metric(
                list(labels),
                [(le, float(c)) for le, c in zip(les, cumulative, strict=True)],
                sum_value=total,
            )
        yield family


SCORE = ScoreHistogram(
    "model_prediction_score",
    "Predicted probability of the positive class",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
REGISTRY.register(SCORE)
INPUT_ERRORS = Counter(
    "model_input_errors", "Requests refused as bad input, by reason", ["model_name", "reason"]
)
MODEL_INFO = Gauge(
    "model_info",
    "The model being served and its lineage (value is always 1)",
    ["model_name", "model_version", "data_md5", "git_sha", "mlflow_run_id", "kfp_run_id"],
)
FAST_PATH = Gauge(
    "model_fast_path",
    "1: served by onnxruntime after the numpy preprocessing; 0: by the sklearn Pipeline",
    ["model_name", "model_version", "engine"],
)
TRAINING_METRIC = Gauge(
    "model_training_metric",
    "The served model's held-out metrics from its training run",
    ["model_name", "model_version", "metric"],
)


class DriftWindow:
    """The last ``size`` rows' numeric values and category codes, in a ring buffer. A request
    only copies its batch in (two slice assignments); the rows are binned against the reference
    profile when Prometheus scrapes (``psi``)."""

    def __init__(self, reference: dict[str, FeatureProfile], size: int):
        if size < 1:
            raise ValueError("drift window size must be at least 1")
        self.numeric = [reference[f.name] for f in NUMERIC]
        self.categorical = [reference[f.name] for f in CATEGORICAL]
        self.size = size
        # per categorical feature: code -> bin (the last two: UNKNOWN, MISSING)
        self.category_bins = []
        for f, p in zip(CATEGORICAL, self.categorical, strict=True):
            table = np.empty(len(f.categories) + 2, dtype=np.int16)
            table[: len(f.categories)] = [p.bin_category(c) for c in f.categories]
            table[UNKNOWN] = p.n_bins - 2
            table[MISSING] = p.n_bins - 1
            self.category_bins.append(table)
        self.values = np.zeros((size, len(NUMERIC)), dtype=np.float64)
        self.codes = np.zeros((size, len(CATEGORICAL)), dtype=np.int8)
        self.filled = 0
        self.pos = 0
        self._lock = threading.Lock()

    def update(self, batch: Batch) -> None:
        values, codes = batch.numeric, batch.category_codes()
        n = len(batch)
        if n >= self.size:
            values, codes, n = values[-self.size :], codes[-self.size :], self.size
        with self._lock:
            end = self.pos + n
            if end <= self.size:
                self.values[self.pos : end] = values
                self.codes[self.pos : end] = codes
            else:
                first = self.size - self.pos
                self.values[self.pos :] = values[:first]
                self.values[: n - first] = values[first:]
                self.codes[self.pos :] = codes[:first]
                self.codes[: n - first] = codes[first:]
            self.pos = end % self.size
            self.filled = min(self.size, self.filled + n)

    def psi(self) -> dict[str, float]:
        with self._lock:
            values = self.values[: self.filled].copy()
            codes = self.codes[: self.filled].copy()
        out = {}
        for j, p in enumerate(self.numeric):
            counts = np.bincount(p.bin_numeric(values[:, j]), minlength=p.n_bins)
            out[p.name] = profiles.psi(p.expected, counts)
        for j, (p, table) in enumerate(zip(self.categorical, self.category_bins, strict=True)):
            counts = np.bincount(table[codes[:, j]], minlength=p.n_bins)
            out[p.name] = profiles.psi(p.expected, counts)
        return out


class DriftCollector(Collector):
    """Computes the PSI gauges at scrape time for every registered model's window."""

    def __init__(self) -> None:
        self.windows: dict[str, DriftWindow] = {}

    def collect(self) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "model_feature_drift_psi",
            "Population stability index of recent inputs against the training profile",
            labels=["model_name", "feature"],
        )
        rows = GaugeMetricFamily(
            "model_drift_window_rows", "Rows in the drift window", labels=["model_name"]
        )
        for model_name, window in list(self.windows.items()):
            rows.add_metric([model_name], window.filled)
            for feature, value in window.psi().items():
                psi.add_metric([model_name, feature], value)
        yield psi
        yield rows


DRIFT = DriftCollector()
REGISTRY.register(DRIFT)
