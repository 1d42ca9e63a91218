"""The KServe predictor: the registered MLflow churn model behind V1 and V2 endpoints."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kserve import Model
from kserve.errors import InvalidInput
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME, get_labels
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from mlstack.data import generate
from mlstack.data import profile as profiles
from mlstack.errors import StackError
from mlstack.schema import DECISION_THRESHOLD
from mlstack.train import artifacts, onnx_export
from serving import codec, engine, monitoring
from serving.codec import Batch, InputError

log = logging.getLogger(__name__)

VERSION_HEADER = "x-model-version"
V2_OUTPUTS = ("predict", "probabilities")
_V1_KEYS = {"instances", "inputs", "parameters"}


@dataclass(frozen=True)
class ModelLineage:
    model_version: str
    data_md5: str = ""
    git_sha: str = ""
    mlflow_run_id: str = ""
    kfp_run_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class ListsResponse(InferResponse):
    """A V2 response whose outputs hold JSON lists already (``predict`` makes them with numpy's
    ``tolist``). Its REST form is the protocol's JSON object made from those lists; KServe's own
    ``to_rest`` turns each list into an array and back, one ``.item()`` per value (the largest
    cost of a 256-row response). No binary outputs: this predictor never offers them."""

    def to_rest(self) -> tuple[dict[str, Any], None]:
        outputs = [
            {"name": o.name, "shape": o.shape, "datatype": o.datatype, "data": o.data}
            for o in self.outputs
        ]
        body = {
            "id": self.id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": outputs,
        }
        return body, None


@functools.cache
def _probe() -> Batch:
    """One fixed row for the readiness probe."""
    return Batch.from_frame(generate.generate(1, seed=20240))


class ChurnModel(Model):
    """Loads an MLflow sklearn model directory (MLmodel + files): ``/mnt/models`` in the cluster
    (KServe's storage initializer fills it from ``storageUri``), a downloaded registry version
    locally."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        model_version: str,
        max_batch_size: int = 256,
        drift_window: int = 1000,
        expected_digest: str | None = None,
        threads: int = 1,
    ):
        super().__init__(name, return_response_headers=True)
        self.model_dir = model_dir
        # the model_digest evaluate recorded (MODEL_DIGEST / --model_digest); None: not checked
        self.expected_digest = expected_digest
        self.digest = ""
        self.model_version = model_version
        self.max_batch_size = max_batch_size
        self.drift_window_size = drift_window
        # onnxruntime's intra- and inter-op threads: the container's CPU budget (__main__.py)
        self.threads = threads
        self.threshold = DECISION_THRESHOLD
        # the scikit-learn Pipeline: parsed only when the ONNX engine cannot serve (the fallback)
        self.pipeline: Any = None
        # not ``engine``: KServe's Model has an ``engine`` flag of its own (a model that starts
        # an engine server, which ModelServer.start and ModelRepository.unload act on)
        self.onnx_engine: engine.OnnxEngine | None = None
        self.drift: monitoring.DriftWindow | None = None
        self.lineage: ModelLineage | None = None
        # this model's series of the prediction mix (class 0, class 1) and of the score
        # histogram, resolved once: label look-ups are not per request
        self._predicted = (
            monitoring.PREDICTIONS.labels(name, model_version, "0"),
            monitoring.PREDICTIONS.labels(name, model_version, "1"),
        )
        self._scores = monitoring.SCORE.series(name, model_version)
        # KServe's latency histograms of this model, resolved once (``__call__``)
        self._latency = tuple(
            h.labels(**get_labels(name)) for h in (PRE_HIST_TIME, PREDICT_HIST_TIME, POST_HIST_TIME)
        )

    def load(self) -> bool:
        """Load through the project's loader (``mlstack.train.artifacts.load_model``: skops only,
        the project's trusted types, the digest checked when one is expected); ``StackError``
        for anything it refuses, before the server starts."""
        if not self.expected_digest:
            log.warning(
                "no expected model digest (MODEL_DIGEST / --model_digest): the files in %s are "
                "not checked against the ones evaluated",
                self.model_dir,
            )
        loaded = artifacts.load_model(self.model_dir, self.expected_digest or None, lazy=True)
        self.digest = loaded.digest
        # the graph checked against the probe probabilities recorded with it at training: no
        # scikit-learn imported, no Pipeline parsed (the start of a pod, docs/serving.md "Image")
        self.onnx_engine = engine.load_recorded(loaded.onnx, loaded.onnx_sha256, self.threads)
        if self.onnx_engine is None:
            # the fallback: the Pipeline parsed (skops, trusted types), the graph checked
            # against it, else the Pipeline serves
            self.pipeline = loaded.pipeline
            probe = Batch.from_frame(onnx_export.probe_frame())
            self.onnx_engine = engine.load(self.pipeline, loaded.onnx, probe, self.threads)
        if self.onnx_engine is None:
            log.warning(
                "the ONNX engine is unavailable for this model: serving through sklearn "
                "(model_fast_path 0)"
            )
        if loaded.reference_profile is not None:
            try:
                reference = profiles.from_dict(loaded.reference_profile)
            except (KeyError, TypeError, ValueError) as exc:
                raise StackError(
                    f"the model in {self.model_dir} has an unreadable reference_profile: {exc!r}"
                ) from None
            self.drift = monitoring.DriftWindow(reference, self.drift_window_size)
            monitoring.DRIFT.windows[self.name] = self.drift
        if loaded.decision_threshold is not None:
            self.threshold = loaded.decision_threshold
        lineage = loaded.lineage
        self.lineage = ModelLineage(
            model_version=self.model_version,
            data_md5=lineage.get("data_md5", ""),
            git_sha=lineage.get("git_sha", ""),
            mlflow_run_id=lineage.get("mlflow_run_id", ""),
            kfp_run_id=lineage.get("kfp_run_id", ""),
        )
        monitoring.MODEL_INFO.labels(
            self.name,
            self.model_version,
            self.lineage.data_md5,
            self.lineage.git_sha,
            self.lineage.mlflow_run_id,
            self.lineage.kfp_run_id,
        ).set(1)
        monitoring.FAST_PATH.labels(self.name, self.model_version, self.engine_name).set(
            1 if self.onnx_engine is not None else 0
        )
        for metric, value in loaded.metrics.items():
            monitoring.TRAINING_METRIC.labels(self.name, self.model_version, metric).set(value)
        self.ready = True
        return self.ready

    @property
    def engine_name(self) -> str:
        """What serves: ``onnxruntime`` (after the numpy preprocessing) or ``sklearn``."""
        return "onnxruntime" if self.onnx_engine is not None else "sklearn"

    async def healthy(self) -> bool:
        """Ready means answering: loaded and registered, and a probe row gets two finite
        probabilities (what ``/v2/health/ready``, ``/v2/models/<name>/ready`` and
        ``/v1/models/<name>`` report)."""
        if not self.ready:
            return False
        try:
            proba = np.asarray(self.predict_proba(_probe()))
        except Exception:
            log.exception("readiness probe: the model did not answer")
            return False
        return proba.shape == (1, 2) and bool(np.isfinite(proba).all())

    def predict_proba(self, batch: Batch) -> np.ndarray:
        if self.onnx_engine is not None:
            return self.onnx_engine.predict_proba(batch)
        return np.asarray(self.pipeline.predict_proba(batch.to_frame()), dtype=np.float64)

    def _refuse(self, exc: InputError) -> InvalidInput:
        monitoring.INPUT_ERRORS.labels(self.name, exc.reason).inc()
        return InvalidInput(str(exc))

    def _json(self, payload: Any) -> Any:
        """A JSON body sent without a JSON content-type reaches the model undecoded."""
        if not isinstance(payload, bytes | str):
            return payload
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise self._refuse(InputError("malformed_json", f"body is not JSON: {exc}")) from None

    def _decode(self, payload: Any) -> tuple[Batch, bool]:
        try:
            if isinstance(payload, InferRequest):
                return codec.from_v2(payload.inputs, self.max_batch_size), True
            if isinstance(payload, dict):
                unknown = sorted(set(payload) - _V1_KEYS)
                if unknown:
                    raise InputError("wrong_shape", f"unknown request field(s) {unknown}")
            return codec.from_v1(payload, self.max_batch_size), False
        except InputError as exc:
            raise self._refuse(exc) from None

    def _probabilities_option(self, payload: dict) -> bool:
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise self._refuse(InputError("wrong_type", "'parameters' must be an object"))
        unknown = sorted(set(params) - {"probabilities"})
        if unknown:
            raise self._refuse(InputError("wrong_shape", f"unknown parameter(s) {unknown}"))
        value = params.get("probabilities", False)
        if not isinstance(value, bool):
            raise self._refuse(
                InputError("wrong_type", "'parameters.probabilities' must be true or false")
            )
        return value

    def _v2_requested(self, payload: InferRequest) -> list[str]:
        wanted = [o.name for o in (payload.request_outputs or [])] or list(V2_OUTPUTS)
        unknown = [w for w in wanted if w not in V2_OUTPUTS]
        if unknown:
            message = f"unknown output(s) {unknown}; this model has {list(V2_OUTPUTS)}"
            raise self._refuse(InputError("unknown_output", message))
        return wanted

    def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        payload = self._json(payload)
        batch, v2 = self._decode(payload)
        wanted = self._v2_requested(payload) if v2 else []
        with_probabilities = False if v2 else self._probabilities_option(payload)
        proba = self.predict_proba(batch)
        labels = (proba[:, 1] >= self.threshold).astype(np.int64)
        self._observe(batch, proba, labels)
        if response_headers is not None:
            response_headers[VERSION_HEADER] = self.model_version
        if not v2:
            body: dict[str, Any] = {"predictions": labels.tolist()}
            if with_probabilities:
                body["probabilities"] = proba.tolist()
            return body
        outputs = []
        if "predict" in wanted:
            outputs.append(InferOutput("predict", [len(batch)], "INT64", labels.tolist()))
        if "probabilities" in wanted:
            outputs.append(
                InferOutput("probabilities", [len(batch), 2], "FP64", proba.ravel().tolist())
            )
        return ListsResponse(
            response_id=payload.id or "",
            model_name=self.name,
            model_version=self.model_version,
            infer_outputs=outputs,
        )

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> tuple[Any, dict[str, str]]:
        """KServe's ``Model.__call__`` for a prediction: ``preprocess``, ``validate``, ``predict``
        (with the response headers), ``postprocess``, each step timed in KServe's
        ``request_preprocess_seconds``, ``request_predict_seconds`` and
        ``request_postprocess_seconds`` as KServe times them (its histograms, observed also when
        the step raises). The same steps and series, without KServe's per-request label look-ups
        and coroutine checks (this class's ``predict`` is plain, its ``preprocess`` and
        ``postprocess`` KServe's coroutines). Anything else (another verb, KServe's latency log
        line) is KServe's own ``__call__``."""
        if verb is not InferenceVerb.PREDICT or self.enable_latency_logging:
            return await super().__call__(body, headers, verb)
        pre, predict, post = self._latency
        response_headers: dict[str, str] = {}
        with pre.time():
            payload = await self.preprocess(body, headers)
        payload = self.validate(payload)
        with predict.time():
            response = self.predict(payload, headers, response_headers)
        with post.time():
            response = await self.postprocess(response, headers, response_headers)
        return response, response_headers

    def _observe(self, batch: Batch, proba: np.ndarray, labels: np.ndarray) -> None:
        positives = int(np.count_nonzero(labels))
        if positives:
            self._predicted[1].inc(positives)
        if len(labels) - positives:
            self._predicted[0].inc(len(labels) - positives)
        self._scores.observe(proba[:, 1])
        if self.drift is not None:
            self.drift.update(batch)

    def get_input_types(self) -> list[dict]:
        """One input per feature, in schema order (numbers as FP64, null where allowed)."""
        return [
            {
                "name": f.name,
                "datatype": "FP64" if f.kind == "numeric" else "BYTES",
                "shape": [-1],
            }
            for f in codec.FEATURES
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
        ]
