"""The predictor as users meet it: `python -m serving` on 127.0.0.1, called over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from mlstack.data import generate
from mlstack.train.onnx_export import TOLERANCE
from mlstack.train.training import TrainingLineage
from serving.codec import NAMES, Batch
from tests.conftest import free_port
from tests.support.cli import cli_argv
from tests.support.servers import call, registered_model, running, stop

MODEL = "churn-test"
MAX_BATCH = 64
WINDOW = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    uri = registered_model(
        tmp, MODEL, TrainingLineage("md5-abc", "data/churn.csv", "a" * 40, "kfp-1")
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(
        [sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}@champion",
         "--model_name", MODEL, "--host", "127.0.0.1", "--http_port", str(port),
         "--enable_grpc", "false", "--max_batch_size", str(MAX_BATCH),
         "--drift_window", str(WINDOW)],
        tmp / "server.log",
        f"{base}/v2/health/ready",
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    ):  # fmt: skip
        mlflow.set_tracking_uri(uri)
        model = mlflow.sklearn.load_model(f"models:/{MODEL}@champion")
        yield base, model, port, uri


def _up(base: str) -> bool:
    return call(f"{base}/v2/health/live")[0] == 200


ROWS = generate.generate(20, 31)


def rows_as_objects(df=ROWS) -> list[dict]:
    out = []
    for rec in df[NAMES].to_dict(orient="records"):
        out.append(
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        )
    return [
        {k: (int(v) if hasattr(v, "item") and float(v).is_integer() else v) for k, v in r.items()}
        for r in out
    ]


def expected(model, df=ROWS) -> np.ndarray:
    return model.predict_proba(Batch.from_frame(df).to_frame())


def test_v1_objects_lists_probabilities_and_version_header(server):
    base, model, _, _ = server
    objects = rows_as_objects()
    status, headers, body = call(
        f"{base}/v1/models/{MODEL}:predict",
        {"instances": objects, "parameters": {"probabilities": True}},
    )
    assert status == 200, body
    assert headers["x-model-version"] == "1"
    got = json.loads(body)
    want = expected(model)
    np.testing.assert_allclose(got["probabilities"], want, atol=TOLERANCE)
    assert got["predictions"] == (want[:, 1] >= 0.5).astype(int).tolist()
    lists = [[r[n] for n in NAMES] for r in objects]
    status, _, body = call(f"{base}/v1/models/{MODEL}:predict", {"instances": lists})
    assert status == 200 and json.loads(body)["predictions"] == got["predictions"]
    assert "probabilities" not in json.loads(body)


def test_v2_named_inputs_matrix_and_output_selection(server):
    base, model, _, _ = server
    objects = rows_as_objects()
    inputs = [
        {
            "name": n,
            "shape": [len(objects)],
            "datatype": "BYTES"
            if n in ("contract", "payment_method", "internet_service")
            else "FP64",
            "data": [r[n] for r in objects],
        }
        for n in NAMES
    ]
    status, headers, body = call(f"{base}/v2/models/{MODEL}/infer", {"inputs": inputs})
    assert status == 200, body
    assert headers["x-model-version"] == "1"
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    want = expected(model)
    np.testing.assert_allclose(
        np.reshape(out["probabilities"]["data"], (-1, 2)), want, atol=TOLERANCE
    )
    assert out["probabilities"]["shape"] == [len(objects), 2]
    flat = ["" if r[n] is None else str(r[n]) for r in objects for n in NAMES]
    status, _, body = call(
        f"{base}/v2/models/{MODEL}/infer",
        {
            "inputs": [
                {"name": "input-0", "shape": [len(objects), 8], "datatype": "BYTES", "data": flat}
            ],
            "outputs": [{"name": "predict"}],
        },
    )
    assert status == 200, body
    outputs = json.loads(body)["outputs"]
    assert [o["name"] for o in outputs] == ["predict"]
    assert outputs[0]["data"] == out["predict"]["data"]


def test_metadata_liveness_readiness(server):
    base, _, _, _ = server
    assert call(f"{base}/v2/health/live")[0] == 200
    assert call(f"{base}/v2/health/ready")[0] == 200
    assert json.loads(call(f"{base}/v1/models/{MODEL}")[2]) == {"name": MODEL, "ready": True}
    meta = json.loads(call(f"{base}/v2/models/{MODEL}")[2])
    assert [i["name"] for i in meta["inputs"]] == NAMES
    assert {o["name"] for o in meta["outputs"]} == {"predict", "probabilities"}
    assert json.loads(call(f"{base}/v2")[2])["name"] == "kserve"


GOOD = rows_as_objects()[0]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("v1", {"instances": [{k: v for k, v in GOOD.items() if k != "age"}]}, 400, "'age'"),
        ("v1", {"instances": [{**GOOD, "shoe_size": 44}]}, 400, "shoe_size"),
        ("v1", {"instances": [{**GOOD, "monthly_charges": "cheap"}]}, 400, "monthly_charges"),
        ("v1", {"instances": [{**GOOD, "contract": None}]}, 400, "'contract' must not be null"),
        ("v1", {"instances": [[1, 2, 3]]}, 400, "expected 8 values"),
        ("v1", {"instances": []}, 400, "empty batch"),
        ("v1", {"instances": [GOOD] * (MAX_BATCH + 1)}, 400, f"limit of {MAX_BATCH}"),
        ("v1", {"instances": [GOOD], "extra": 1}, 400, "extra"),
        ("v1", b'{"instances": [', 400, "Unrecognized request format"),
        ("v1", {"instances": [GOOD], "parameters": [1]}, 400, "'parameters' must be an object"),
        (
            "v1",
            {"instances": [GOOD], "parameters": {"probabilities": "false"}},
            400,
            "true or false",
        ),
        ("v1", {"instances": [{**GOOD, "contract": "Two-Year"}]}, 400, "not one of"),
        ("v1-text", b'{"instances": [', 400, "not JSON"),
        (
            "v2",
            {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [3]}]},
            400,
            "missing input",
        ),
        (
            "v2",
            {
                "inputs": [
                    {"name": "m", "shape": [1, 3], "datatype": "BYTES", "data": ["1", "2", "3"]}
                ]
            },
            400,
            "[n, 8]",
        ),
        ("unknown", {"instances": [GOOD]}, 404, "nope"),
    ],
)
def test_bad_input_is_4xx_naming_the_problem_and_server_keeps_serving(
    server, path, body, status, needle
):
    base, _, _, _ = server
    url = {
        "v1": f"{base}/v1/models/{MODEL}:predict",
        "v1-text": f"{base}/v1/models/{MODEL}:predict",
        "v2": f"{base}/v2/models/{MODEL}/infer",
        "unknown": f"{base}/v1/models/nope:predict",
    }[path]
    got, _, text = call(url, body, "text/plain" if path == "v1-text" else "application/json")
    assert got == status, text
    assert needle in text.decode()
    assert call(f"{base}/v1/models/{MODEL}:predict", {"instances": [GOOD]})[0] == 200


def metrics(base: str) -> dict[str, float]:
    out = {}
    for line in call(f"{base}/metrics")[2].decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_prediction_mix_errors_info_and_drift(server):
    base, _, _, _ = server
    calm = rows_as_objects(generate.generate(WINDOW, 77))
    for i in range(0, WINDOW, 50):
        assert call(f"{base}/v1/models/{MODEL}:predict", {"instances": calm[i : i + 50]})[0] == 200
    before = metrics(base)
    counted = f'model_input_errors_total{{model_name="{MODEL}",reason="out_of_range"}}'
    call(f"{base}/v1/models/{MODEL}:predict", {"instances": [{**GOOD, "age": 200}]})
    m = metrics(base)
    assert m[counted] == before.get(counted, 0) + 1
    classes = [k for k in m if k.startswith("model_predictions_total{")]
    assert sum(m[k] for k in classes) >= WINDOW
    info = [k for k in m if k.startswith("model_info{")]
    assert len(info) == 1 and 'model_version="1"' in info[0] and 'data_md5="md5-abc"' in info[0]
    assert f'git_sha="{"a" * 40}"' in info[0]
    assert any(k.startswith("request_predict_seconds_bucket") for k in m)  # KServe's own
    # by version: canary analysis compares the score histograms of two versions
    score = f'model_prediction_score_count{{model_name="{MODEL}",model_version="1"}}'
    assert m[score] >= WINDOW
    # the pipeline's model is served by onnxruntime, never by the sklearn fallback
    assert m[f'model_fast_path{{engine="onnxruntime",model_name="{MODEL}",model_version="1"}}'] == 1
    psi = f'model_feature_drift_psi{{feature="monthly_charges",model_name="{MODEL}"}}'
    # 200-row windows of the training population measure 0.03-0.14 (sampling noise, seeds 60-99);
    # ChurnFeatureDrift fires above 0.25, which drifted windows pass by far (0.55 and more)
    assert m[psi] < 0.25
    drifted = rows_as_objects(generate.generate(WINDOW, 78, drift=True))
    for i in range(0, WINDOW, 50):
        assert (
            call(f"{base}/v1/models/{MODEL}:predict", {"instances": drifted[i : i + 50]})[0] == 200
        )
    assert metrics(base)[psi] > 0.25


def test_tritonclient_gets_correct_answers(server):
    import tritonclient.http as httpclient

    base, model, port, _ = server
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_model_ready(MODEL)
    assert [i["name"] for i in client.get_model_metadata(MODEL)["inputs"]] == NAMES
    batch = Batch.from_frame(ROWS)
    batch.categorical[0, 1] = None  # a missing payment method
    batch.numeric[1, 2] = np.nan  # a missing total
    inputs = []
    for j, name in enumerate(NAMES[:5]):
        inp = httpclient.InferInput(name, [len(ROWS)], "FP64")
        inp.set_data_from_numpy(batch.numeric[:, j].copy())
        inputs.append(inp)
    for j, name in enumerate(NAMES[5:]):
        values = np.array([(v or "").encode() for v in batch.categorical[:, j]], dtype=object)
        inp = httpclient.InferInput(name, [len(ROWS)], "BYTES")
        inp.set_data_from_numpy(values)
        inputs.append(inp)
    result = client.infer(MODEL, inputs, outputs=[httpclient.InferRequestedOutput("probabilities")])
    got = result.as_numpy("probabilities").reshape(-1, 2)
    # BYTES cannot hold null: the empty string sent for the missing category reads as missing
    np.testing.assert_allclose(got, model.predict_proba(batch.to_frame()), atol=TOLERANCE)


def test_mlstack_serve_binds_loopback_only(server):
    """`mlstack serve` runs the same predictor on 127.0.0.1 (KServe alone would bind 0.0.0.0)."""
    import socket

    *_, uri = server
    port = free_port()
    proc = subprocess.Popen(
        cli_argv("serve", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLSTACK_MODEL_NAME": MODEL},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _up(base):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.3)
        status, headers, _ = call(f"{base}/v1/models/{MODEL}:predict", {"instances": [GOOD]})
        assert status == 200 and headers["x-model-version"] == "1"
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass
    finally:
        stop(proc)


def test_a_refused_request_is_counted_in_both_counters(server):
    """KServe times every predict call, refused or not (the predictor refuses inside predict), so
    request_predict_seconds_count counts all requests and model_input_errors_total the refused
    ones among them: the refusal ratio is errors / count (manifests/monitoring/rules.yaml).
    Requests refused before predict are in neither."""
    base, _, _, _ = server
    v1, v2 = f"{base}/v1/models/{MODEL}:predict", f"{base}/v2/models/{MODEL}/infer"
    count = f'request_predict_seconds_count{{model_name="{MODEL}"}}'

    def errors(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items() if k.startswith("model_input_errors_total{"))

    def deltas(url: str, body, content_type: str = "application/json") -> tuple[int, float, float]:
        before = metrics(base)
        status = call(url, body, content_type)[0]
        after = metrics(base)
        return status, after[count] - before.get(count, 0), errors(after) - errors(before)

    assert deltas(v1, {"instances": [GOOD]}) == (200, 1, 0)
    refused_in_predict = [
        (v1, {"instances": [{**GOOD, "age": 200}]}, "application/json"),
        (v1, {"instances": [GOOD], "parameters": [1]}, "application/json"),
        (v1, b'{"instances": [', "text/plain"),  # decoded by the model: not JSON
        (v2, {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [1]}]},
         "application/json"),
    ]  # fmt: skip
    for url, body, content_type in refused_in_predict:
        assert deltas(url, body, content_type) == (400, 1, 1), body
    # refused by KServe before the model: counted in neither
    assert deltas(v1, b'{"instances": [')[1:] == (0, 0)
    assert deltas(f"{base}/v1/models/nope:predict", {"instances": [GOOD]}) == (404, 0, 0)
