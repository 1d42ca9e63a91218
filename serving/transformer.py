"""The Feast transformer: KServe's transformer in front of the churn predictor, whose
``preprocess`` turns a request that carries only customer ids into the predictor's feature
request, with the ids' online features (KServe's Feast transformer pattern,
docs/samples/v1beta1/transformer/feast in kserve/kserve).

- V1 ``{"instances": [{"customer_id": "C000001"}, …]}`` becomes ``{"instances": [<features>, …]}``
  (``parameters`` kept); V2 with one ``BYTES`` input named ``customer_id`` (shape ``[n]`` or
  ``[n, 1]``) becomes one input per feature (``FP64`` numbers with null for missing, ``BYTES``
  categories with "" for missing; ``id``, ``parameters`` and ``outputs`` kept). The feature request
  goes to the predictor in the protocol it came in, and the predictor's answer (with its
  ``x-model-version``) comes back unchanged.
- Any other request (raw features) is forwarded unchanged: the predictor answers or refuses it.
- Ids the online store does not know: 404 naming them (``unknown customer_id(s) [...]``), nothing
  forwarded. A malformed id request: 400 naming the field. A refusal of the predictor keeps its
  status and message.

The look-up is ``mlstack.features.online.lookup`` (one call to the online store per request).
Metrics on ``/metrics``, beside KServe's ``request_*_seconds``: ``transformer_lookup_seconds``,
``transformer_entities_total{result}``, ``transformer_requests_total{protocol,kind}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from fastapi.responses import JSONResponse
from kserve import Model
from kserve.errors import InvalidInput
from kserve.inference_client import RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from kserve.utils.inference_client_factory import InferenceClientFactory
from prometheus_client import Counter, Histogram

from mlstack.features import online
from mlstack.schema import ENTITY, FEATURES
from serving.model import VERSION_HEADER

log = logging.getLogger(__name__)

LOOKUP_SECONDS = Histogram(
    "transformer_lookup_seconds",
    "Time of one online-store look-up (all the ids of a request)",
    ["model_name"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
)
ENTITIES = Counter(
    "transformer_entities_total",
    "Entity ids looked up, by result (found, unknown)",
    ["model_name", "result"],
)
REQUESTS = Counter(
    "transformer_requests_total",
    "Requests by protocol (v1, v2) and kind (entity_ids: looked up; features: passed through)",
    ["model_name", "protocol", "kind"],
)
# the predictor's response headers that describe its own HTTP message, not the answer: the
# transformer's server writes its own
_OWN_HEADERS = frozenset(
    {"content-length", "content-type", "date", "server", "transfer-encoding", "connection"}
)
# a probe id for readiness: any answer (known or not) means the store answers
_PROBE_ID = "readiness-probe"


class TransformerError(Exception):
    """Refused with ``status`` and ``{"error": message}`` (a 4xx of the transformer's own, or the
    predictor's refusal passed on)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UnknownEntities(TransformerError):
    def __init__(self, ids: Sequence[str]):
        super().__init__(404, f"unknown {ENTITY}(s) {list(ids)}: no online features")
        self.ids = list(ids)


async def error_response(_: Any, exc: Exception) -> JSONResponse:
    """The HTTP answer to a ``TransformerError`` (registered on the transformer's app)."""
    assert isinstance(exc, TransformerError)
    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


def _ids_v1(instances: list[Any], max_batch_size: int) -> list[str]:
    """The ids of a V1 id request (each instance ``{ENTITY: "<id>"}``); 400 naming the field."""
    if len(instances) > max_batch_size:
        raise InvalidInput(f"batch of {len(instances)} ids is over the limit of {max_batch_size}")
    ids = []
    for k, row in enumerate(instances):
        if not isinstance(row, dict) or set(row) != {ENTITY}:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise InvalidInput(
                f"instances[{k}]: an id request carries only '{ENTITY}' in every instance, "
                f"got {keys}"
            )
        value = row[ENTITY]
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"instances[{k}].{ENTITY} must be a non-empty string, got {value!r}")
        ids.append(value)
    return ids


def _ids_v2(request: InferRequest, max_batch_size: int) -> list[str]:
    """The ids of a V2 id request (one BYTES input ``ENTITY``); 400 naming the field."""
    names = [i.name for i in request.inputs]
    if names != [ENTITY]:
        raise InvalidInput(f"an id request has one input, '{ENTITY}'; got inputs {names}")
    [tensor] = request.inputs
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{ENTITY}' must be BYTES, got {tensor.datatype}")
    data = tensor.data
    if not isinstance(data, list):
        try:
            data = tensor.as_numpy().ravel().tolist()  # binary tensor data
        except Exception as exc:
            raise InvalidInput(f"input '{ENTITY}': unreadable data ({exc})") from None
    n = len(data)
    if list(tensor.shape) not in ([n], [n, 1]):
        raise InvalidInput(
            f"input '{ENTITY}' has shape {list(tensor.shape)} for {n} values: use [{n}] or [{n}, 1]"
        )
    if n == 0:
        raise InvalidInput(f"input '{ENTITY}' is empty: send at least one id")
    if n > max_batch_size:
        raise InvalidInput(f"batch of {n} ids is over the limit of {max_batch_size}")
    ids = []
    for k, value in enumerate(data):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"input '{ENTITY}'[{k}] must be a non-empty string, got {value!r}")
        ids.append(value)
    return ids


def _v2_feature_inputs(rows: list[dict[str, Any]]) -> list[InferInput]:
    """One V2 input per contract feature: FP64 numbers (null for missing), BYTES categories (""
    for missing: a BYTES tensor cannot hold null)."""
    n = len(rows)
    inputs = []
    for f in FEATURES:
        if f.kind == "numeric":
            data = [None if r[f.name] is None else float(r[f.name]) for r in rows]
            inputs.append(InferInput(f.name, [n], "FP64", data))
        else:
            data = ["" if r[f.name] is None else str(r[f.name]) for r in rows]
            inputs.append(InferInput(f.name, [n], "BYTES", data))
    return inputs


class FeastTransformer(Model):
    """``preprocess`` looks up the online features of an id request; ``predict`` forwards to the
    predictor (``--predictor_host``) in the request's protocol."""

    def __init__(
        self,
        name: str,
        store: online.OnlineStore,
        refs: Sequence[str],
        max_batch_size: int = 256,
    ):
        super().__init__(name, return_response_headers=True)
        self.store = store
        self.refs = list(refs)
        self.max_batch_size = max_batch_size
        self.ready = False
        # one REST client per protocol for the server's life, made on first use: KServe's
        # RESTConfig builds an HTTP transport with a TLS context (the CA bundle read) every time
        # it is constructed, even when the factory then hands back its cached client; one per
        # request cost ~60-100 ms each (benchmarks/features.py)
        self._clients: dict[str, Any] = {}

    def load(self) -> bool:
        """Ready once the online store answers a look-up."""
        online.lookup(self.store, [_PROBE_ID], self.refs)
        self.ready = True
        return self.ready

    async def healthy(self) -> bool:
        """The online store answers (``/v2/health/ready``): a look-up of a probe id."""
        if not self.ready:
            return False
        try:
            online.lookup(self.store, [_PROBE_ID], self.refs)
        except Exception:
            log.exception("readiness probe: the online store did not answer")
            return False
        return True

    def _features(self, ids: list[str]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        found = online.lookup(self.store, ids, self.refs)
        LOOKUP_SECONDS.labels(self.name).observe(time.perf_counter() - start)
        ENTITIES.labels(self.name, "found").inc(len(ids) - sum(r is None for r in found.rows))
        if found.unknown:
            ENTITIES.labels(self.name, "unknown").inc(sum(r is None for r in found.rows))
            raise UnknownEntities(found.unknown)
        return [row for row in found.rows if row is not None]

    async def preprocess(
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferRequest:
        if isinstance(payload, bytes | str):  # a JSON body sent without a JSON content-type
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"body is not JSON: {exc}") from None
        if isinstance(payload, InferRequest):
            if ENTITY not in [i.name for i in payload.inputs]:
                REQUESTS.labels(self.name, "v2", "features").inc()
                return payload
            REQUESTS.labels(self.name, "v2", "entity_ids").inc()
            rows = self._features(_ids_v2(payload, self.max_batch_size))
            return InferRequest(
                model_name=self.name,
                infer_inputs=_v2_feature_inputs(rows),
                request_id=payload.id,
                parameters=payload.parameters,
                request_outputs=payload.request_outputs,
            )
        if not isinstance(payload, dict):
            raise InvalidInput(f"body must be a JSON object, got {type(payload).__name__}")
        instances = payload.get("instances")
        if not (
            isinstance(instances, list)
            and any(isinstance(row, dict) and ENTITY in row for row in instances)
        ):
            REQUESTS.labels(self.name, "v1", "features").inc()
            return payload
        REQUESTS.labels(self.name, "v1", "entity_ids").inc()
        rows = self._features(_ids_v1(instances, self.max_batch_size))
        return {**payload, "instances": rows}

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        """The predictor's answer to ``payload`` in its protocol (V2 for an ``InferRequest``, V1
        for a dict). Its refusal (4xx) keeps its status and message; a predictor that cannot be
        reached or fails is a 502."""
        config = self.predictor_config
        if config is None or not config.predictor_host:
            raise TransformerError(500, "no --predictor_host: the transformer has no predictor")
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        client = self._clients.get(protocol)
        if client is None:
            client = InferenceClientFactory().get_rest_client(
                RESTConfig(protocol=protocol, timeout=config.timeout, retries=config.retries)
            )
            self._clients[protocol] = client
        answer_headers: dict[str, str] = {}
        forwarded = {"content-type": "application/json"}
        for key in ("x-request-id", "x-b3-traceid", "traceparent"):
            if headers and key in headers:
                forwarded[key] = headers[key]
        try:
            answer = await client.infer(
                config.predictor_base_url,
                model_name=self.name,
                data=payload,
                headers=forwarded,
                response_headers=answer_headers,
            )
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            try:
                message = str(orjson.loads(exc.response.content)["error"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = exc.response.text[:500]
            raise TransformerError(status if status < 500 else 502, message) from None
        except httpx.HTTPError as exc:
            raise TransformerError(502, f"the predictor did not answer: {exc!r}") from None
        if isinstance(answer, InferResponse) and answer.model_version is None:
            # KServe's client drops the body's model_version (InferResponse.from_bytes): the
            # predictor's version header carries the same value
            answer.model_version = answer_headers.get(VERSION_HEADER)
        if response_headers is not None:
            response_headers.update(
                {k: v for k, v in answer_headers.items() if k.lower() not in _OWN_HEADERS}
            )
        return answer
