"""The payload sink over real HTTP: CloudEvents in KServe's logger's binary mode (built by the
CloudEvents SDK) in, Parquet captures out, refusals named, acknowledged events kept across a
restart."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlstack.data import generate
from mlstack.monitor import capture, sink
from mlstack.schema import feature_names
from mlstack.settings import SinkSettings
from tests.support.logger import event

SETTINGS = SinkSettings(batch_rows=10_000, batch_seconds=3600, pair_timeout_s=3600)


def rows(n: int, seed: int = 5) -> list[dict[str, Any]]:
    frame = generate.generate(n, seed=seed).drop(columns=["churned"])
    out = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: (None if v != v else v) for k, v in r.items()} for r in out]


@dataclass
class Running:
    sink: sink.Sink
    server: Any
    thread: threading.Thread

    def post(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.server_address[1], timeout=30)
        try:
            conn.request("POST", "/", body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)


def start(root: Path, wal: Path, settings: SinkSettings = SETTINGS) -> Running:
    s = sink.Sink(root, wal, settings)
    s.start()
    server = sink.make_server(s, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return Running(s, server, thread)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start(tmp_path / "captures", tmp_path / "wal")
    yield r
    r.stop()
    r.sink.close()


def test_v1_and_v2_requests_paired_with_their_responses_become_captured_rows(
    running: Running, tmp_path: Path
) -> None:
    v1 = rows(3)
    v1_response = {"predictions": [0, 1, 1], "probabilities": [[0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]}
    names = feature_names()
    v2_rows = rows(2, seed=9)
    v2 = {
        "inputs": [
            {"name": n, "shape": [2], "datatype": "BYTES" if isinstance(v2_rows[0][n], str)
             else "FP64", "data": [r[n] for r in v2_rows]}
            for n in names
        ]
    }  # fmt: skip
    v2_response = {
        "model_name": "churn-classifier", "model_version": "7", "id": "b",
        "outputs": [
            {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]},
            {"name": "probabilities", "shape": [2, 2], "datatype": "FP64",
             "data": [0.4, 0.6, 0.95, 0.05]},
        ],
    }  # fmt: skip
    annotations = json.dumps({"mlstack.io/model-version": "6"})
    # the response may arrive first: the logger's workers send in any order
    for headers, body in [
        event("response", "a", v1_response, annotations=annotations),
        event("request", "a", {"instances": v1}, annotations=annotations),
        event("request", "b", v2, namespace="ml-production"),
        event("response", "b", v2_response, namespace="ml-production"),
    ]:
        assert running.post(headers, body)[0] == 200
    assert running.sink.flush(force=True) == 5

    got = capture.read_captures(tmp_path / "captures")
    staging = got[got["environment"] == "ml-staging"]
    assert staging["id"].tolist() == ["a"] * 3 and staging["row"].tolist() == [0, 1, 2]
    assert staging["model_version"].tolist() == ["6"] * 3  # from the forwarded annotation
    assert staging["score"].tolist() == [0.2, 0.7, 0.9]
    assert staging["prediction"].tolist() == [0, 1, 1]
    assert staging["tenure_months"].tolist() == [r["tenure_months"] for r in v1]
    production = got[got["environment"] == "ml-production"]
    assert production["model_version"].tolist() == ["7", "7"]  # from the V2 response
    assert production["contract"].tolist() == [r["contract"] for r in v2_rows]
    assert production["prediction"].tolist() == [1, 0]
    assert not list((tmp_path / "wal").glob("wal-*.log"))[0].read_bytes()  # nothing pending


def test_a_v1_response_without_probabilities_is_captured_with_no_score(
    running: Running, tmp_path: Path
) -> None:
    running.post(*event("request", "c", {"instances": rows(1)}))
    running.post(*event("response", "c", {"predictions": [1]}))
    running.sink.flush(force=True)
    got = capture.read_captures(tmp_path / "captures")
    assert got["prediction"].tolist() == [1] and got["score"].isna().all()
    assert got["model_version"].tolist() == [""]


@pytest.mark.reliability("payload-sink-malformed-event")
@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"ce-namespace": "../../etc"}, 400, "Ce-Namespace '../../etc' is not a Kubernetes name"),
        ({"ce-inferenceservicename": "a/b"}, 400, "Ce-Inferenceservicename 'a/b' is not a"),
        ({"ce-id": None}, 400, "missing CloudEvent attribute header Ce-Id"),
        ({"ce-type": "com.example.other"}, 400, "Ce-Type must be org.kubeflow.serving"),
        ({"ce-specversion": "0.3"}, 400, "Ce-Specversion must be 1.0"),
        ({"ce-time": "yesterday"}, 400, "Ce-Time 'yesterday' is not an RFC 3339 time"),
        (
            {"content-type": "application/cloudevents+json"},
            415,
            "structured CloudEvents are not accepted",
        ),
        ({"body": b"{not json"}, 400, "request payload: body is not JSON"),
        ({"body": b'{"instances": [{"age": 3}]}'}, 400, "request row 0: missing feature(s)"),
    ],
)
def test_a_malformed_event_is_refused_naming_what_is_wrong_and_nothing_is_logged(
    running: Running, tmp_path: Path, change: dict[str, Any], status: int, message: str
) -> None:
    headers, body = event("request", "d", {"instances": rows(1)})
    headers = {k.lower(): v for k, v in headers.items()}
    body = change.pop("body", body)
    for name, value in change.items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    got_status, answer = running.post(headers, body)
    assert (got_status, answer["error"][: len(message)]) == (status, message)
    assert all(not p.read_bytes() for p in (tmp_path / "wal").glob("wal-*.log"))
    assert not (tmp_path / "captures").exists()


@pytest.mark.reliability("payload-sink-restart-keeps-acknowledged-events")
def test_acknowledged_events_survive_a_crash_and_are_written_after_the_restart(
    tmp_path: Path,
) -> None:
    first = start(tmp_path / "captures", tmp_path / "wal")
    assert first.post(*event("request", "e", {"instances": rows(2)}))[0] == 200
    assert first.post(*event("response", "e", {"predictions": [0, 1]}))[0] == 200
    assert first.post(*event("request", "f", {"instances": rows(1)}))[0] == 200
    first.stop()  # and no flush, no close: what a kill leaves is the fsynced log
    os_fd = first.sink._fd
    second = start(tmp_path / "captures", tmp_path / "wal")
    try:
        assert second.sink.replayed == 3
        got = capture.read_captures(tmp_path / "captures")
        assert got["id"].tolist() == ["e", "e"] and got["prediction"].tolist() == [0, 1]
        # the unpaired request waits for its response in the new log, across the restart
        assert second.post(*event("response", "f", {"predictions": [1]}))[0] == 200
        second.sink.flush(force=True)
        got = capture.read_captures(tmp_path / "captures")
        assert sorted(got["id"]) == ["e", "e", "f"]
    finally:
        second.stop()
        second.sink.close()
        os.close(os_fd)


def test_an_unpaired_request_is_dropped_after_the_pairing_timeout(tmp_path: Path) -> None:
    r = start(tmp_path / "c", tmp_path / "w", SinkSettings(pair_timeout_s=0.0))
    try:
        r.post(*event("request", "g", {"instances": rows(1)}))  # refused by the predictor
        r.sink.tick()
        dropped = r.sink.metrics.registry.get_sample_value(
            "payload_sink_dropped_events_total", {"reason": "unpaired_request"}
        )
        assert dropped == 1
        r.post(*event("response", "g", {"predictions": [1]}))
        r.sink.flush(force=True)
        assert capture.read_captures(tmp_path / "c").empty
    finally:
        r.stop()
        r.sink.close()


def test_a_kept_alive_connection_outlives_the_per_event_deadline(tmp_path: Path) -> None:
    """The logger keeps its connections open: the deadline is per event, not per connection."""
    s = sink.Sink(tmp_path / "c", tmp_path / "w", SETTINGS)
    s.start()
    server = sink.make_server(s, "127.0.0.1", 0, request_deadline=1.0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        for i, kind in enumerate(["request", "response"]):
            if i:
                time.sleep(1.5)  # longer than the deadline, on the same connection
            data = {"instances": rows(1)} if kind == "request" else {"predictions": [1]}
            conn.request("POST", "/", *reversed(event(kind, "h", data)))
            answer = conn.getresponse()
            assert (answer.status, json.loads(answer.read())["type"]) == (200, kind)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
        s.close()
    assert capture.read_captures(tmp_path / "c")["id"].tolist() == ["h"]


@pytest.mark.reliability("payload-sink-other-namespace")
def test_a_sink_refuses_events_of_another_namespace(tmp_path: Path) -> None:
    s = sink.Sink(tmp_path / "c", tmp_path / "w", SETTINGS, namespace="ml-staging")
    s.start()
    try:
        headers, body = event("request", "i", {"instances": rows(1)}, namespace="ml-production")
        headers = {k.lower(): v for k, v in headers.items()}
        with pytest.raises(sink.EventError, match="'ml-production' is not this sink's") as info:
            s.accept(headers, body)
        assert info.value.status == 403
    finally:
        s.close()
    assert all(not p.read_bytes() for p in (tmp_path / "w").glob("wal-*.log"))


def test_a_batch_is_written_when_its_oldest_row_has_waited_batch_seconds(tmp_path: Path) -> None:
    s = sink.Sink(tmp_path / "c", tmp_path / "w", SinkSettings(batch_seconds=3600))
    s.start()
    try:
        for kind, data in [
            ("request", {"instances": rows(2)}),
            ("response", {"predictions": [0, 1]}),
        ]:
            headers, body = event(kind, "j", data)
            s.accept({k.lower(): v for k, v in headers.items()}, body)
        s.tick()  # two rows, far from batch_rows, not waited an hour: nothing written
        assert capture.read_captures(tmp_path / "c").empty
        s.settings = SinkSettings(batch_seconds=0.0)  # as if the hour had passed
        s.tick()
        assert capture.read_captures(tmp_path / "c")["row"].tolist() == [0, 1]
    finally:
        s.close()


@pytest.mark.reliability("payload-sink-torn-log-line")
def test_a_log_line_torn_by_a_kill_is_skipped_at_replay(tmp_path: Path) -> None:
    """A kill during an append leaves a partial last line: that event was never acknowledged
    (its fsync had not returned); the lines before it are replayed."""
    wal = tmp_path / "w"
    wal.mkdir()
    whole = sink.wal_line(*event("request", "k", {"instances": rows(1)}))
    torn = sink.wal_line(*event("response", "k", {"predictions": [1]}))[:-20]
    (wal / "wal-00000000000000000001.log").write_bytes(whole + torn)
    s = sink.Sink(tmp_path / "c", wal, SETTINGS)
    s.start()
    try:
        assert s.replayed == 1
        headers, body = event("response", "k", {"predictions": [1]})
        s.accept({k.lower(): v for k, v in headers.items()}, body)
        s.flush(force=True)
        assert capture.read_captures(tmp_path / "c")["id"].tolist() == ["k"]
    finally:
        s.close()


def test_an_event_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    r = start(tmp_path / "c", tmp_path / "w", SinkSettings(max_body=1000))
    try:
        status, answer = r.post(*event("request", "l", {"instances": rows(20)}))
        assert (status, answer["error"]) == (413, "event body over 1000 bytes")
    finally:
        r.stop()
        r.sink.close()


def test_unpaired_events_are_bounded_by_count_and_bytes_oldest_dropped(tmp_path: Path) -> None:
    line = len(sink.wal_line(*event("request", "m0", {"instances": rows(1)})))
    settings = SinkSettings(max_pending=3, max_pending_bytes=2 * line + line // 2)
    s = sink.Sink(tmp_path / "c", tmp_path / "w", settings)
    s.start()
    try:
        for i in range(4):  # four requests whose responses never come
            headers, body = event("request", f"m{i}", {"instances": rows(1)})
            s.accept({k.lower(): v for k, v in headers.items()}, body)
        dropped = s.metrics.registry.get_sample_value(
            "payload_sink_dropped_events_total", {"reason": "over_max_pending"}
        )
        assert dropped == 2  # the bytes bound (two events' worth) bit before the count
        headers, body = event("response", "m3", {"predictions": [1]})
        s.accept({k.lower(): v for k, v in headers.items()}, body)
        s.flush(force=True)
        assert capture.read_captures(tmp_path / "c")["id"].tolist() == ["m3"]
    finally:
        s.close()
