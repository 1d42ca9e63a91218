"""The Feast transformer as users meet it: the predictor (`python -m serving`) and the transformer
(`python -m serving.transformer_main`) on 127.0.0.1, a Feast repository on the embedded default
(SQLite online store) materialized from a data version's snapshots, called over HTTP.

A request carrying only customer ids is answered with the probabilities the predictor gives for
the raw-feature request of each customer's latest snapshot (V1 and V2); unknown ids are a 404
naming them; raw-feature requests pass through unchanged (answers and refusals); a malformed id
request is a 400 naming the field; the look-ups are on /metrics. Consistency: after
materialization, the online features of every customer equal the offline store's latest values
(`get_historical_features` at now) and the source's latest row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mlstack.data import generate
from mlstack.schema import ENTITY, EVENT_TIME, FEATURES, feature_names
from mlstack.settings import load_settings
from mlstack.train.training import TrainingLineage
from tests.conftest import free_port
from tests.support.cli import cli_argv
from tests.support.servers import call, registered_model, running, stop

pytestmark = pytest.mark.slow

MODEL = "churn-test"
CATEGORICAL = {f.name for f in FEATURES if f.kind == "categorical"}
NAMES = feature_names()


def latest_rows(data: pd.DataFrame) -> pd.DataFrame:
    """Each customer's latest snapshot (the values materialization puts online), by id."""
    frame = data.assign(**{EVENT_TIME: pd.to_datetime(data[EVENT_TIME], utc=True)})
    return frame.sort_values(EVENT_TIME).groupby(ENTITY).tail(1).set_index(ENTITY)


def as_json_row(row: pd.Series) -> dict:
    """A raw-feature V1 instance: ints as ints, missing as null."""
    out = {}
    for name in NAMES:
        value = row[name]
        if pd.isna(value):
            out[name] = None
        elif name in CATEGORICAL:
            out[name] = str(value)
        else:
            number = float(value)
            out[name] = int(number) if number.is_integer() else number
    return out


def v2_raw(rows: list[dict]) -> dict:
    return {
        "inputs": [
            {
                "name": n,
                "shape": [len(rows)],
                "datatype": "BYTES" if n in CATEGORICAL else "FP64",
                "data": [
                    ("" if r[n] is None else r[n]) if n in CATEGORICAL else r[n] for r in rows
                ],
            }
            for n in NAMES
        ]
    }


def materialized(data: pd.DataFrame, state: Path):
    """The embedded feature store under ``state`` holding ``data``'s snapshots, materialized up
    to now: the Parquet source written, the definitions applied, the online store filled."""
    from mlstack.features import repo
    from mlstack.features.sources import source_frame, write_source

    settings = load_settings(state_dir=state, feast_config="")
    store = repo.open_store(settings)
    source = Path(settings.feature_source)
    source.parent.mkdir(parents=True, exist_ok=True)
    write_source(source_frame(data), str(source))
    repo.apply(store, str(source))
    store.materialize_incremental(end_date=pd.Timestamp.now(tz="UTC"))
    return store


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A model trained on a data version and the version's snapshots materialized into the
    embedded feature store of a temporary state directory; the predictor and the transformer in
    front of it. Yields a dict: transformer and predictor URLs, the latest rows by id, the store,
    the state directory and the tracking URI."""
    tmp = tmp_path_factory.mktemp("transformer")
    uri = registered_model(tmp, MODEL, TrainingLineage("md5", "data/churn.csv", "a" * 40, "kfp"))
    data = generate.generate(400, 23)
    state = tmp / "state"
    store = materialized(data, state)
    env = {**os.environ, "MLSTACK_STATE_DIR": str(state)}
    env.pop("MLSTACK_FEAST_CONFIG", None)
    pport, tport = free_port(), free_port()
    predictor, transformer = f"http://127.0.0.1:{pport}", f"http://127.0.0.1:{tport}"
    with (
        running(
            [sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}@champion",
             "--model_name", MODEL, "--host", "127.0.0.1", "--http_port", str(pport),
             "--enable_grpc", "false"],
            tmp / "predictor.log",
            f"{predictor}/v2/health/ready",
            env={**env, "MLFLOW_TRACKING_URI": uri},
        ),
        running(
            [sys.executable, "-m", "serving.transformer_main", "--model_name", MODEL,
             "--predictor_host", f"127.0.0.1:{pport}", "--host", "127.0.0.1",
             "--http_port", str(tport), "--enable_grpc", "false", "--max_batch_size", "64"],
            tmp / "transformer.log",
            f"{transformer}/v2/health/ready",
            env=env,
        ),
    ):  # fmt: skip
        yield {
            "transformer": transformer, "predictor": predictor, "latest": latest_rows(data),
            "store": store, "state": state, "uri": uri,
        }  # fmt: skip


def test_v1_customer_ids_are_answered_as_their_latest_features(stack):
    transformer, predictor, latest = stack["transformer"], stack["predictor"], stack["latest"]
    ids = list(latest.index[:12])
    raw = [as_json_row(latest.loc[i]) for i in ids]
    body = {"parameters": {"probabilities": True}}
    status, headers, got = call(
        f"{transformer}/v1/models/{MODEL}:predict",
        {**body, "instances": [{ENTITY: i} for i in ids]},
    )
    assert status == 200, got
    assert headers["x-model-version"] == "1"
    status, _, want = call(f"{predictor}/v1/models/{MODEL}:predict", {**body, "instances": raw})
    assert status == 200, want
    assert json.loads(got) == json.loads(want)


def test_v2_customer_ids_are_answered_as_their_latest_features(stack):
    transformer, predictor, latest = stack["transformer"], stack["predictor"], stack["latest"]
    ids = list(latest.index[5:20])
    raw = [as_json_row(latest.loc[i]) for i in ids]
    for shape in ([len(ids)], [len(ids), 1]):
        request = {
            "id": "req-1",
            "inputs": [{"name": ENTITY, "shape": shape, "datatype": "BYTES", "data": ids}],
        }
        status, headers, got = call(f"{transformer}/v2/models/{MODEL}/infer", request)
        assert status == 200, got
        assert headers["x-model-version"] == "1"
        status, _, want = call(
            f"{predictor}/v2/models/{MODEL}/infer", {"id": "req-1", **v2_raw(raw)}
        )
        assert status == 200, want
        assert json.loads(got) == json.loads(want)
    # outputs are chosen as on the predictor
    request["outputs"] = [{"name": "probabilities"}]
    status, _, got = call(f"{transformer}/v2/models/{MODEL}/infer", request)
    assert status == 200 and [o["name"] for o in json.loads(got)["outputs"]] == ["probabilities"]


def test_unknown_ids_are_a_404_naming_them(stack):
    transformer, latest = stack["transformer"], stack["latest"]
    known = latest.index[0]
    status, _, body = call(
        f"{transformer}/v1/models/{MODEL}:predict",
        {"instances": [{ENTITY: known}, {ENTITY: "C-nobody"}, {ENTITY: "C-ghost"}]},
    )
    assert status == 404, body
    message = json.loads(body)["error"]
    assert "C-nobody" in message and "C-ghost" in message and known not in message
    request = {"inputs": [{"name": ENTITY, "shape": [1], "datatype": "BYTES", "data": ["X1"]}]}
    status, _, body = call(f"{transformer}/v2/models/{MODEL}/infer", request)
    assert status == 404 and "X1" in json.loads(body)["error"]


def test_raw_feature_requests_pass_through_unchanged(stack):
    transformer, predictor, latest = stack["transformer"], stack["predictor"], stack["latest"]
    raw = [as_json_row(latest.iloc[k]) for k in range(8)]
    for path, body in (
        (f"/v1/models/{MODEL}:predict", {"instances": raw, "parameters": {"probabilities": True}}),
        (f"/v2/models/{MODEL}/infer", {"id": "r", **v2_raw(raw)}),
    ):
        through, direct = call(transformer + path, body), call(predictor + path, body)
        assert through[0] == direct[0] == 200, through
        assert json.loads(through[2]) == json.loads(direct[2])
        assert through[1]["x-model-version"] == direct[1]["x-model-version"]
    # the predictor's refusal keeps its status and its message
    bad = [{**raw[0], "tenure_months": -3}]
    through = call(f"{transformer}/v1/models/{MODEL}:predict", {"instances": bad})
    direct = call(f"{predictor}/v1/models/{MODEL}:predict", {"instances": bad})
    assert through[0] == direct[0] == 400
    assert json.loads(through[2]) == json.loads(direct[2])
    assert "tenure_months" in json.loads(through[2])["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (":predict", {"instances": [{ENTITY: "C1", "age": 40}]}, "instances[0]"),
        (":predict", {"instances": [{ENTITY: 17}]}, f"instances[0].{ENTITY}"),
        (":predict", {"instances": [{ENTITY: "C1"}] * 65}, "limit of 64"),
        ("/infer", {"inputs": [{"name": ENTITY, "shape": [1], "datatype": "FP64", "data": [1]}]},
         f"input '{ENTITY}' must be BYTES"),
        ("/infer", {"inputs": [{"name": ENTITY, "shape": [2], "datatype": "BYTES", "data": ["C1"]}]},
         "shape"),
        ("/infer", {"inputs": [{"name": ENTITY, "shape": [1], "datatype": "BYTES", "data": ["C1"]},
                               {"name": "age", "shape": [1], "datatype": "FP64", "data": [40]}]},
         "one input"),
    ],
)  # fmt: skip
def test_a_bad_id_request_is_a_400_naming_the_field(stack, path, body, field):
    transformer = stack["transformer"]
    url = f"{transformer}/v1/models/{MODEL}{path}" if path == ":predict" else f"{transformer}/v2/models/{MODEL}{path}"  # fmt: skip
    status, _, answer = call(url, body)
    assert status == 400, answer
    assert field in json.loads(answer)["error"]


def test_lookups_are_on_metrics(stack):
    transformer, latest = stack["transformer"], stack["latest"]
    call(f"{transformer}/v1/models/{MODEL}:predict", {"instances": [{ENTITY: latest.index[0]}]})
    call(f"{transformer}/v1/models/{MODEL}:predict", {"instances": [{ENTITY: "C-metrics"}]})
    _, _, body = call(f"{transformer}/metrics")
    text = body.decode()
    assert f'transformer_lookup_seconds_count{{model_name="{MODEL}"}}' in text
    unknown = [
        line for line in text.splitlines()
        if line.startswith("transformer_entities_total{") and 'result="unknown"' in line
    ]  # fmt: skip
    assert unknown and float(unknown[0].rsplit(" ", 1)[1]) >= 1
    assert 'kind="entity_ids"' in text and 'kind="features"' in text


def test_online_features_equal_the_offline_stores_latest_values(stack):
    """Consistency: what the transformer sends for each customer (the online look-up) is what
    the offline store holds for it now (`get_historical_features` at now) and the latest row of
    the source."""
    from mlstack.features import online, repo

    latest, store = stack["latest"], stack["store"]
    ids = list(latest.index)
    looked_up = online.lookup(store, ids, repo.feature_refs())
    assert looked_up.unknown == []
    now = pd.Timestamp.now(tz="UTC")
    entities = pd.DataFrame({ENTITY: ids, EVENT_TIME: [now] * len(ids)})
    offline = (
        store.get_historical_features(entity_df=entities, features=repo.feature_refs())
        .to_df()
        .set_index(ENTITY)
    )
    for k, customer in enumerate(ids):
        got = looked_up.rows[k]
        for name in NAMES:
            want_offline, want_source = offline.loc[customer, name], latest.loc[customer, name]
            if pd.isna(want_source):
                assert got[name] is None and pd.isna(want_offline), (customer, name)
            elif name in CATEGORICAL:
                assert got[name] == want_offline == want_source, (customer, name)
            else:
                assert float(got[name]) == float(want_offline) == float(want_source), (
                    customer,
                    name,
                )


def test_mlstack_serve_starts_the_transformer_in_front(stack):
    """`mlstack serve --transformer-port` (what `make serve` runs): the predictor on --port as
    before and the transformer on its own port, both on 127.0.0.1; SIGTERM stops both."""
    latest = stack["latest"]
    pport, tport = free_port(), free_port()
    proc = subprocess.Popen(
        cli_argv("serve", "--port", str(pport), "--transformer-port", str(tport)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_TRACKING_URI": stack["uri"], "MLSTACK_MODEL_NAME": MODEL,
             "MLSTACK_STATE_DIR": str(stack["state"])},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while call(f"http://127.0.0.1:{tport}/v2/health/ready")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.5)
        status, _, body = call(
            f"http://127.0.0.1:{tport}/v1/models/{MODEL}:predict",
            {"instances": [{ENTITY: latest.index[0]}]},
        )
        assert status == 200, body
        assert call(f"http://127.0.0.1:{pport}/v2/health/ready")[0] == 200
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert call(f"http://127.0.0.1:{pport}/v2/health/live")[0] == 0
    assert call(f"http://127.0.0.1:{tport}/v2/health/live")[0] == 0
