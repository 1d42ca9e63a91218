"""What a client can reach on the predictor, over HTTP: no model lifecycle routes, versioned V2
routes for the served version, readiness that means the model answers, and no 5xx anywhere in
its own OpenAPI (schemathesis)."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from mlstack.data import generate
from mlstack.settings import Gates
from mlstack.train.tracking import sqlite_store
from mlstack.train.training import HyperParams, TrainingLineage
from serving.codec import NAMES, Batch
from tests.conftest import free_port
from tests.support.servers import call, running, train_and_register

MODEL = "churn-surface"
SERVED = "1"
EXAMPLES = 100  # per operation and generation mode: ~800 requests


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("surface")
    uri = sqlite_store(tmp / "mlflow")
    data = tmp / "train.csv"
    generate.write_csv(generate.generate(1500, 7), data)
    train_and_register(
        data,
        params=HyperParams(max_iter=80),
        lineage=TrainingLineage("md5-abc", "data/churn.csv", "b" * 40, ""),
        model=MODEL,
        tracking_uri=uri,
        experiment="tests",
        gates=Gates(),  # the repository's own gates: version 1 becomes @champion
    )
    return tmp, uri


@pytest.fixture(scope="module")
def server(store):
    tmp, uri = store
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(
        [sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}@champion",
         "--model_name", MODEL, "--host", "127.0.0.1", "--http_port", str(port),
         "--enable_grpc", "false", "--enable_latency_logging", "false"],  # as the image
        tmp / "server.log",
        f"{base}/v2/health/ready",
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    ):  # fmt: skip
        yield base


def one_row_v2() -> dict:
    batch = Batch.from_frame(generate.generate(3, 41))
    rows = batch.to_frame()[NAMES].astype(object).where(batch.to_frame()[NAMES].notna(), "")
    flat = [str(v) for v in rows.to_numpy().ravel()]
    return {
        "inputs": [{"name": "rows", "shape": [len(rows), 8], "datatype": "BYTES", "data": flat}]
    }


def predicts(base: str) -> bool:
    status, _, body = call(f"{base}/v2/models/{MODEL}/infer", one_row_v2())
    assert status in (200, 404, 503), body
    return status == 200


@pytest.mark.reliability("unload-by-client")
def test_no_client_request_can_unload_or_load_the_model(server):
    base = server
    assert predicts(base)
    for action in ("unload", "load"):
        for body in (b"", {"parameters": {}}):
            status, _, text = call(f"{base}/v2/repository/models/{MODEL}/{action}", body)
            assert status == 404, text  # not mounted
        assert call(f"{base}/v2/repository/models/{MODEL}/{action}")[0] == 404
    assert call(f"{base}/v2/repository/index", {})[0] == 404
    status, _, text = call(f"{base}/v1/models/{MODEL}:explain", {"instances": []})
    assert status == 405, text  # no explainer: not mounted (KServe would answer 501)
    paths = json.loads(call(f"{base}/openapi.json")[2])["paths"]
    assert not [p for p in paths if "repository" in p or ":explain" in p], sorted(paths)
    assert json.loads(call(f"{base}/v2")[2])["extensions"] == []
    # still serving, still ready
    assert predicts(base)
    assert call(f"{base}/v2/health/ready")[0] == 200
    assert call(f"{base}/v2/models/{MODEL}/ready")[0] == 200


@pytest.mark.reliability("versioned-route")
def test_versioned_routes_answer_for_the_served_version_and_404_for_others(server):
    base = server
    versioned = f"{base}/v2/models/{MODEL}/versions/{SERVED}"
    status, _, meta = call(versioned)
    assert status == 200, meta
    assert json.loads(meta) == json.loads(call(f"{base}/v2/models/{MODEL}")[2])
    assert json.loads(meta)["versions"] == [SERVED]
    assert json.loads(call(f"{versioned}/ready")[2]) == {"name": MODEL, "ready": True}
    status, headers, body = call(f"{versioned}/infer", one_row_v2())
    assert status == 200, body
    assert headers["x-model-version"] == SERVED
    assert json.loads(body)["model_version"] == SERVED
    plain = json.loads(call(f"{base}/v2/models/{MODEL}/infer", one_row_v2())[2])
    assert json.loads(body)["outputs"] == plain["outputs"]
    want = f"Model {MODEL} has no version '2' here: this server serves version '{SERVED}'"
    for url, payload in (
        (f"{base}/v2/models/{MODEL}/versions/2", None),
        (f"{base}/v2/models/{MODEL}/versions/2/ready", None),
        (f"{base}/v2/models/{MODEL}/versions/2/infer", one_row_v2()),
        (f"{base}/v2/models/{MODEL}?model_version=2", None),  # KServe's query form
        (f"{base}/v2/models/{MODEL}/ready?model_version=2", None),
        (f"{base}/v2/models/{MODEL}/infer?model_version=2", one_row_v2()),
    ):
        status, _, text = call(url, payload)
        assert status == 404, (url, text)
        assert want in json.loads(text)["error"], text
    status, _, text = call(f"{base}/v2/models/nope/versions/{SERVED}/ready")
    assert status == 404 and "nope" in text.decode()
    assert call(f"{base}/v2/models/{MODEL}/infer?model_version={SERVED}", one_row_v2())[0] == 200


class _InProcess:
    """The predictor's REST server (serving.surface) in a thread of this process, so the test can
    take the model away or break it the way a crash would, then ask over HTTP."""

    def __init__(self, model, port: int):
        from kserve.model_repository import ModelRepository

        from serving import surface

        class Local(surface.SurfaceRESTServer):
            host = "127.0.0.1"

        self.registry = ModelRepository()
        self.registry.update(model)
        model.start()
        dataplane = surface.ServingDataPlane(self.registry, [model.name])
        self.rest = Local(
            "kserve.model_server:app",
            dataplane,
            surface.SealedRepository(self.registry),
            port,
        )
        self.thread = threading.Thread(target=self.rest.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.rest._server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def _until(check, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def in_process(store, tmp_path_factory):
    """The served version in this process behind serving.surface, counting the batch sizes its
    model predicts (readiness probes included)."""
    from serving.model import ChurnModel

    class Counting(ChurnModel):
        sizes: list[int] = []

        def predict_proba(self, batch):
            self.sizes.append(len(batch))
            return super().predict_proba(batch)

    _, uri = store
    mlflow.set_tracking_uri(uri)
    model_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}/{SERVED}", dst_path=str(tmp_path_factory.mktemp("inproc"))
    )
    model = Counting(MODEL, Path(model_dir), SERVED)
    model.load()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _InProcess(model, port) as served:
        assert _until(lambda: call(f"{base}/v2/health/ready")[0] == 200)
        yield base, model, served


@pytest.mark.reliability("readiness-after-unload")
def test_readiness_follows_whether_the_model_answers(in_process):
    base, model, served = in_process
    probes = (
        f"{base}/v2/health/ready",
        f"{base}/v2/models/{MODEL}/ready",
        f"{base}/v1/models/{MODEL}",
    )
    assert predicts(base) and [call(p)[0] for p in probes] == [200, 200, 200]
    # broken: the model no longer answers (its fitted objects gone)
    pipeline, engine = model.pipeline, model.onnx_engine
    model.pipeline = model.onnx_engine = None
    assert [call(p)[0] for p in probes] == [503, 503, 503]
    model.pipeline, model.onnx_engine = pipeline, engine
    assert [call(p)[0] for p in probes] == [200, 200, 200]
    # unloaded (what KServe's repository extension did for any client): not ready, not found
    served.registry.unload(MODEL)
    try:
        assert not predicts(base)
        status, _, text = call(probes[0])
        assert status == 503, text
        assert [call(p)[0] for p in probes[1:]] == [404, 404]
    finally:
        model.load()  # unloading stopped it: loaded and registered again for the next test
        served.registry.update(model)
    assert _until(lambda: call(probes[0])[0] == 200)


def _fuzz(op, mode, base: str, statuses: collections.Counter, errors: list[str]) -> None:
    """One operation, one generation mode: ``EXAMPLES`` examples from a fixed seed, each sent to
    ``base`` with the real model name and served version in the path."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    params = {"model_name": MODEL, "model_version": SERVED}
    params = {k: v for k, v in params.items() if f"{{{k}}}" in op.path}

    @seed(20240)
    @settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(op.as_strategy(mode, path_parameters=params))
    def exercise(case):
        response = case.call(base_url=base, timeout=30)
        statuses[f"{op.method.upper()} {op.path} {response.status_code}"] += 1
        if response.status_code >= 500:
            errors.append(f"{case.as_curl_command()} -> {response.text[:300]}")

    try:
        exercise()
    except Unsatisfiable:
        # nothing to make invalid (no parameters, no body): only the positive cases exist
        assert mode is GenerationMode.NEGATIVE, op.path


@pytest.mark.slow
@pytest.mark.reliability("schemathesis-no-5xx")
def test_schemathesis_over_the_predictors_openapi_finds_no_5xx(server):
    """Every operation of the server's own /openapi.json, positive and negative cases from a
    fixed seed, with the real model name and the served version in the path: no answer is 5xx."""
    import schemathesis
    from schemathesis import GenerationMode

    base = server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=30)
    statuses: collections.Counter = collections.Counter()
    errors: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, base, statuses, errors)
    total = sum(statuses.values())
    print(f"{len(operations)} operations, {total} requests:", json.dumps(statuses, indent=1))
    assert not errors, "\n".join(errors[:20])
    assert len(operations) >= 14 and total >= 600
    assert "POST /v2/models/{model_name}/versions/{model_version}/infer 400" in statuses


def test_an_inference_predicts_once_without_a_readiness_probe(in_process):
    """KServe's data plane ran the model's health check (a probe prediction) before every
    inference; here a request costs its own prediction only, V1 and V2 alike."""
    base, model, _ = in_process
    body = one_row_v2()
    rows = len(body["inputs"][0]["data"]) // len(NAMES)
    model.sizes.clear()
    assert call(f"{base}/v2/models/{MODEL}/infer", body)[0] == 200
    assert model.sizes == [rows]
    model.sizes.clear()
    row = Batch.from_frame(generate.generate(1, 5)).to_frame()[NAMES].iloc[0]
    good = dict(zip(NAMES, row, strict=True))
    good = {k: (None if v != v else v) for k, v in good.items()}  # NaN -> null
    status, _, text = call(f"{base}/v1/models/{MODEL}:predict", {"instances": [good, good]})
    assert status == 200, text
    assert model.sizes == [2]


def _named_inputs(rows: int) -> list[dict]:
    batch = Batch.from_frame(generate.generate(rows, 43))
    inputs = [
        {"name": n, "shape": [rows], "datatype": "FP64", "data": batch.numeric[:, j].tolist()}
        for j, n in enumerate(NAMES[:5])
    ]
    inputs += [
        {"name": n, "shape": [rows, 1], "datatype": "BYTES",
         "data": [v or "" for v in batch.categorical[:, j]]}
        for j, n in enumerate(NAMES[5:])
    ]  # fmt: skip
    return inputs


@pytest.mark.reliability("v2-plain-route-as-kserve")
def test_plain_v2_route_answers_byte_for_byte_as_kserves_validated_one(in_process):
    """A V2 request with content-type application/json is decoded by orjson and answered
    directly (serving.surface.plain_infer_request, response_body); the same request with a
    charset goes through KServe's pydantic route. Status, body bytes and the version header are
    the same, for good requests and for ones the model or KServe's schema refuses."""
    base, *_ = in_process
    inputs = _named_inputs(4)
    missing = [i for i in inputs if i["name"] != "age"]
    bodies = [
        one_row_v2(),
        {"inputs": inputs},
        {"id": "r-1", "inputs": inputs, "outputs": [{"name": "predict"}]},
        {"inputs": inputs, "parameters": {"a": 1, "b": "x"}, "outputs": []},
        {"inputs": missing},  # the model refuses: 400 naming the input
        {"inputs": inputs, "outputs": [{"name": "nope"}]},  # 400 naming the output
        {"inputs": [{**inputs[0], "shape": ["4"]}, *inputs[1:]]},  # pydantic coerces "4"
        {"inputs": [{**inputs[0], "datatype": "FP16"}, *inputs[1:]]},  # KServe refuses FP16
        {"inputs": inputs, "id": 3},  # 422 from the schema
        {"outputs": []},  # 422: no inputs
        [inputs],  # 422: not an object
        {"inputs": inputs, "extra": {"ignored": True}},  # KServe ignores unknown fields
    ]
    routes = [
        f"{base}/v2/models/{MODEL}/infer",
        f"{base}/v2/models/{MODEL}/versions/{SERVED}/infer",
        f"{base}/v2/models/{MODEL}/versions/2/infer",
        f"{base}/v2/models/nope/infer",
    ]
    statuses = set()
    for url in routes:
        for body in bodies:
            plain = call(url, body)
            validated = call(url, body, "application/json; charset=utf-8")
            assert plain[0] == validated[0] and plain[2] == validated[2], (url, body, plain)
            assert plain[1].get("x-model-version") == validated[1].get("x-model-version")
            statuses.add(plain[0])
    assert statuses == {200, 400, 404, 422}
    status, headers, text = call(routes[0], {"id": "r-1", "inputs": inputs})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(text)
    assert list(answer) == ["model_name", "model_version", "id", "parameters", "outputs"]
    assert answer["id"] == "r-1" and [o["name"] for o in answer["outputs"]] == [
        "predict",
        "probabilities",
    ]
    assert answer["outputs"][1]["shape"] == [4, 2] and len(answer["outputs"][1]["data"]) == 8


def test_timing_line_names_as_kserves_route_matching(in_process):
    """KServe's TimingMiddleware names each request's kserve.trace line by matching it against
    every route; the predictor keeps those names per method and path: the same names."""
    from kserve import model_server
    from timing_asgi import TimingMiddleware
    from timing_asgi.integrations import StarletteScopeToName

    from serving.surface import CachedRouteNames

    app = model_server.app
    (timing,) = [m for m in app.user_middleware if m.cls is TimingMiddleware]
    cached = timing.kwargs["metric_namer"]
    assert isinstance(cached, CachedRouteNames)
    kserves = StarletteScopeToName(prefix="kserve.io", starlette_app=app)
    paths = [
        ("POST", f"/v2/models/{MODEL}/infer"),
        ("POST", f"/v2/models/{MODEL}/versions/{SERVED}/infer"),
        ("GET", f"/v2/models/{MODEL}/ready"),
        ("POST", f"/v1/models/{MODEL}:predict"),
        ("GET", "/v2/health/ready"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ]
    for _ in range(2):  # computed, then kept
        for method, path in paths:
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            assert cached(scope) == kserves(scope), path
    assert all((method, "", path) in cached.names for method, path in paths)
    assert "infer" in cached({"type": "http", "method": "POST", "path": paths[0][1]})


@pytest.mark.reliability("inference-lane-as-kserve")
def test_the_inference_lane_answers_as_kserves_app(in_process):
    """Inference requests are answered by the inference lane in front of KServe's app
    (serving.lane), and what they get is what KServe's app answers when the lane is closed (here:
    KServe's kserve.trace logger logging INFO, which the lane would skip): status, body bytes,
    content-type and the version header, for good requests, ones the model or a route refuses,
    ones the lane leaves to KServe (a charset, a query, a CloudEvent), V1 and V2. A refused
    request is counted once and a good one predicts once."""
    import logging

    from kserve.logging import trace_logger

    base, model, served = in_process
    inputs = _named_inputs(3)
    good_v1 = {"instances": [[None if v == "" else v for v in row] for row in _v1_rows(3)]}
    requests = [
        (f"/v2/models/{MODEL}/infer", {"inputs": inputs}, "application/json"),
        (f"/v2/models/{MODEL}/versions/{SERVED}/infer", one_row_v2(), "application/json"),
        (
            f"/v2/models/{MODEL}/infer",
            {"id": "x", "inputs": inputs, "outputs": [{"name": "predict"}]},
            "application/json",
        ),  # noqa: E501
        (f"/v1/models/{MODEL}:predict", good_v1, "application/json"),
        (
            f"/v1/models/{MODEL}:predict",
            {**good_v1, "parameters": {"probabilities": True}},
            "application/json",
        ),  # noqa: E501
        (f"/v2/models/{MODEL}/infer", {"inputs": inputs[1:]}, "application/json"),  # 400
        (f"/v1/models/{MODEL}:predict", {"instances": [[1, 2]]}, "application/json"),  # 400
        (f"/v1/models/{MODEL}:predict", b"{not json", "application/json"),  # 400 (KServe's)
        (f"/v2/models/{MODEL}/versions/9/infer", {"inputs": inputs}, "application/json"),  # 404
        ("/v2/models/nope/infer", {"inputs": inputs}, "application/json"),  # 404
        ("/v1/models/nope:predict", good_v1, "application/json"),  # 404
        (f"/v2/models/{MODEL}/infer", {"inputs": inputs, "id": 3}, "application/json"),  # 422
        (f"/v2/models/{MODEL}/infer", {"inputs": inputs}, "application/json; charset=utf-8"),
        (
            f"/v2/models/{MODEL}/infer?model_version={SERVED}",
            {"inputs": inputs},
            "application/json",
        ),  # noqa: E501
    ]

    def answers() -> list[tuple]:
        out = []
        for path, body, content_type in requests:
            status, headers, text = call(f"{base}{path}", body, content_type)
            out.append((status, text, headers.get("content-type"), headers.get("x-model-version")))
        return out

    served.rest.lane.recheck_seconds = 0  # the logger's level is seen at once
    refused = f'model_input_errors_total{{model_name="{MODEL}",reason="wrong_shape"}}'
    before = _metric(base, refused)
    answered = served.rest.lane.answered
    model.sizes.clear()
    through_lane = answers()
    assert served.rest.lane.answered - answered == 5  # the good plain requests
    assert model.sizes == [3] * 7  # one prediction each good request, none for the refused
    assert _metric(base, refused) - before == 1  # the 1-value V1 row, counted once
    level = trace_logger.level
    trace_logger.setLevel(logging.INFO)
    try:
        answered = served.rest.lane.answered
        through_kserve = answers()
        assert served.rest.lane.answered == answered  # closed: every request went to KServe
    finally:
        trace_logger.setLevel(level)
    assert [a[0] for a in through_lane] == [200] * 5 + [400] * 3 + [404] * 3 + [422, 200, 200]
    for request, lane_answer, kserve_answer in zip(
        requests, through_lane, through_kserve, strict=True
    ):
        assert lane_answer == kserve_answer, request


def _v1_rows(rows: int) -> list[list]:
    batch = Batch.from_frame(generate.generate(rows, 43))
    return [
        [*batch.numeric[i].tolist(), *(v or "" for v in batch.categorical[i])] for i in range(rows)
    ]


def _metric(base: str, name: str) -> float:
    _, _, text = call(f"{base}/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_kserves_latency_histograms_time_each_step_once(in_process):
    """ChurnModel.__call__ times preprocess, predict and postprocess in KServe's histograms as
    KServe's own __call__ does: each step once per request, the predict step also when the model
    refuses the request (and then no postprocess)."""
    base, *_ = in_process
    steps = ("preprocess", "predict", "postprocess")

    def counts() -> list[float]:
        return [
            _metric(base, f'request_{step}_seconds_count{{model_name="{MODEL}"}}') for step in steps
        ]

    inputs = _named_inputs(2)
    before = counts()
    assert call(f"{base}/v2/models/{MODEL}/infer", {"inputs": inputs})[0] == 200
    assert [b - a for a, b in zip(before, counts(), strict=True)] == [1, 1, 1]
    before = counts()
    assert call(f"{base}/v2/models/{MODEL}/infer", {"inputs": inputs[1:]})[0] == 400
    assert [b - a for a, b in zip(before, counts(), strict=True)] == [1, 1, 0]
