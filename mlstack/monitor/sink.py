"""The payload sink: KServe's logger → paired, batched, durable captured predictions.

KServe 0.21's logger agent (``pkg/logger``, beside each predictor pod) posts every request and
every 200 response as a CloudEvent in HTTP *binary* mode: the body is the payload as the
predictor saw it, the attributes are headers ``Ce-Specversion`` (1.0), ``Ce-Id`` (the inference
id: the request's own ``Ce-Id`` header, else a fresh UUID; request and response share it),
``Ce-Type`` (``org.kubeflow.serving.inference.request`` / ``...response``), ``Ce-Source``,
``Ce-Time``, ``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``, ``Ce-Endpoint``,
``Ce-Metadata`` and, when the InferenceService's ``logger.metadataAnnotations`` names them,
``Ce-Annotations`` (JSON). It does not retry, and it only logs a status other than 200.

The sink checks each event (400 naming what is wrong; names are Kubernetes names before they
become a path), appends it to a write-ahead log and fsyncs it (several concurrent events share
one fsync), and only then answers 200: an acknowledged event survives a SIGKILL, since the log
is replayed at start. Requests and responses are paired by (namespace, InferenceService, id) in
memory (at most ``max_pending`` halves of at most ``max_pending_bytes`` in all, each for at most
``pair_timeout_s``: a refused request has no response); each pair becomes rows of
``mlstack.monitor.capture``'s contract, written as one Parquet part per batch (``batch_rows`` rows or ``batch_seconds``), after which the log
segments it came from are deleted. Delivery is at least once: a kill between a part's rename and
its segment's deletion writes those rows twice (``read_captures`` keeps one).

    mlstack monitor sink --root s3://captures --wal /var/lib/sink [--host 0.0.0.0] [--port 8080]
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric

from mlstack.errors import StackError
from mlstack.monitor import capture
from mlstack.monitor.labels import QUALITY_FILE, VersionQuality
from mlstack.monitor.live_quality import families
from mlstack.monitor.relay import BadRequest, _BoundedServer, content_length, decode_json
from mlstack.schema import DECISION_THRESHOLD, FEATURES
from mlstack.settings import SinkSettings

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
VERSION_ANNOTATION = "mlstack.io/model-version"
READ_TIMEOUT = 10.0  # seconds one read of an event may wait
REQUEST_DEADLINE = 30.0  # seconds for a whole event to arrive, from its first byte
# seconds a kept-alive connection may wait for its next event: longer than the idle timeout of
# Go's default transport (90 s), so the logger closes an idle connection before the sink does
IDLE_TIMEOUT = 120.0
MAX_CONNECTIONS = 64
# an inference id: the logger's UUID or a caller's own Ce-Id (printable ASCII, no spaces)
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_VERSION = re.compile(r"^[\x21-\x7e]{0,64}$")
_NAMES = [f.name for f in FEATURES]
_BY_NAME = {f.name: f for f in FEATURES}
# the attributes kept in the write-ahead log (all the sink reads)
_KEPT = (
    "ce-specversion",
    "ce-id",
    "ce-type",
    "ce-source",
    "ce-time",
    "ce-inferenceservicename",
    "ce-namespace",
    "ce-annotations",
    "content-type",
)


class EventError(Exception):
    """An event the sink refuses: ``status`` is the 4xx it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One checked CloudEvent: its pairing key, its time and its decoded payload."""

    id: str
    kind: str  # "request" or "response"
    model_name: str
    environment: str
    time: datetime
    annotations: dict[str, str]
    # request: the rows (feature name -> value); response: predictions, scores, model version
    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[int | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    model_version: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.environment, self.model_name, self.id)


# --- checking and decoding one event ----------------------------------------------------------


def _header(headers: Mapping[str, str], name: str, *, required: bool = True) -> str:
    value = headers.get(name)
    if value is None or (required and not value.strip()):
        if required:
            raise EventError(400, f"missing CloudEvent attribute header {name.title()}")
        return ""
    return value.strip()


def _event_time(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise EventError(400, f"Ce-Time {value[:64]!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise EventError(400, f"Ce-Time {value[:64]!r} has no time zone")
    return when.astimezone(UTC)


def _number(value: Any, name: str, where: str) -> float | int | None:
    feature = _BY_NAME[name]
    if value is None or value == "":
        return None
    if isinstance(value, str) and feature.kind == "numeric":
        try:
            value = float(value)  # a V2 BYTES matrix carries numbers as text
        except ValueError:
            raise EventError(400, f"{where}: feature '{name}' is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(400, f"{where}: feature '{name}' is not a number")
    if isinstance(value, float) and math.isnan(value):
        return None
    if not math.isfinite(value) or abs(value) >= 2**63:
        raise EventError(400, f"{where}: feature '{name}' is not a finite 64-bit number")
    if feature.dtype == "int":
        if value != int(value):
            raise EventError(400, f"{where}: feature '{name}' is {value}, not a whole number")
        return int(value)
    return float(value)


def _value(value: Any, name: str, where: str) -> Any:
    if _BY_NAME[name].kind == "numeric":
        return _number(value, name, where)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(400, f"{where}: feature '{name}' is not a string")
    return value


def _row(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        missing = [n for n in _NAMES if n not in raw]
        if missing:
            raise EventError(400, f"{where}: missing feature(s) {missing}")
        return {n: _value(raw[n], n, where) for n in _NAMES}
    if isinstance(raw, list) and len(raw) == len(_NAMES):
        return {n: _value(v, n, where) for n, v in zip(_NAMES, raw, strict=True)}
    raise EventError(400, f"{where}: a row is an object of features or a list of {len(_NAMES)}")


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise EventError(400, "a V2 tensor's 'data' must be a list")
    return [v for part in data for v in (part if isinstance(part, list) else [part])]


def _is_v2(inputs: list[Any]) -> bool:
    return bool(inputs) and all(
        isinstance(i, dict) and {"name", "datatype", "shape", "data"} <= set(i) for i in inputs
    )


def decode_request(body: Any) -> list[dict[str, Any]]:
    """The rows of a V1 (``instances``/``inputs``: objects or lists in schema order) or V2
    (one input per feature, or one ``[n, features]`` input) request body."""
    if not isinstance(body, dict):
        raise EventError(400, "request payload is not a JSON object")
    rows = body.get("instances", body.get("inputs"))
    if not isinstance(rows, list) or not rows:
        raise EventError(400, "request payload has no 'instances' or 'inputs' list")
    if not _is_v2(rows):
        return [_row(r, f"request row {i}") for i, r in enumerate(rows)]
    if len(rows) == 1 and rows[0]["name"] not in _BY_NAME:
        flat = _flat(rows[0]["data"])
        width = len(_NAMES)
        if len(flat) % width:
            raise EventError(400, f"input '{rows[0]['name']}' is not rows of {width} values")
        return [
            _row(flat[i : i + width], f"request row {i // width}")
            for i in range(0, len(flat), width)
        ]
    by_name = {i["name"]: _flat(i["data"]) for i in rows}
    missing = [n for n in _NAMES if n not in by_name]
    if missing:
        raise EventError(400, f"request payload lacks input(s) {missing}")
    n = len(by_name[_NAMES[0]])
    if any(len(by_name[name]) != n for name in _NAMES):
        raise EventError(400, "request inputs have different lengths")
    return [_row([by_name[name][i] for name in _NAMES], f"request row {i}") for i in range(n)]


def _label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise EventError(400, f"response prediction {value!r} is not 0 or 1")
    return int(value)


def _proba(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise EventError(400, f"response probability {value!r} is not in [0, 1]")
    return float(value)


def decode_response(body: Any) -> tuple[list[int | None], list[float | None], str | None]:
    """(predictions, churn scores, model version) of a V1 (``predictions``, optional
    ``probabilities``) or V2 (outputs ``predict`` and/or ``probabilities``) response body."""
    if not isinstance(body, dict):
        raise EventError(400, "response payload is not a JSON object")
    version = body.get("model_version")
    if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
        raise EventError(400, "response model_version is not a short printable string")
    labels: list[Any] | None
    pairs: list[Any] | None
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise EventError(400, "response 'outputs' is not a list of tensors")
        by_name = {o.get("name"): o for o in outputs}
        labels = _flat(by_name["predict"].get("data")) if "predict" in by_name else None
        pairs = None
        if "probabilities" in by_name:
            flat = _flat(by_name["probabilities"].get("data"))
            if len(flat) % 2:
                raise EventError(400, "response probabilities are not pairs")
            pairs = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    elif "predictions" in body:
        labels = body["predictions"]
        pairs = body.get("probabilities")
        if not isinstance(labels, list) or (pairs is not None and not isinstance(pairs, list)):
            raise EventError(400, "response 'predictions'/'probabilities' are not lists")
    else:
        raise EventError(400, "response payload has neither 'predictions' nor 'outputs'")
    scores: list[float | None] = []
    if pairs is not None:
        for p in pairs:
            if not isinstance(p, list) or len(p) != 2:
                raise EventError(400, "response probabilities are not pairs")
            scores.append(_proba(p[1]))
    predictions: list[int | None]
    if labels is None:
        if pairs is None:
            raise EventError(400, "response has neither 'predict' nor 'probabilities'")
        predictions = [int(s is not None and s >= DECISION_THRESHOLD) for s in scores]
    else:
        predictions = [_label(v) for v in labels]
    if pairs is None:
        scores = [None] * len(predictions)
    if len(scores) != len(predictions):
        raise EventError(400, "response predictions and probabilities differ in length")
    return predictions, scores, version


def parse_event(headers: Mapping[str, str], body: bytes) -> Event:
    """One binary-mode CloudEvent of KServe's logger (``headers`` keys lower case), checked and
    decoded; ``EventError`` naming the first problem."""
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type.startswith("application/cloudevents"):
        raise EventError(415, "structured CloudEvents are not accepted: send binary mode")
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise EventError(415, f"payload content type {content_type!r} is not JSON")
    if _header(headers, "ce-specversion") != "1.0":
        raise EventError(400, "Ce-Specversion must be 1.0")
    event_id = _header(headers, "ce-id")
    if not _ID.match(event_id):
        raise EventError(400, "Ce-Id must be 1 to 128 printable ASCII characters without spaces")
    kind = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}.get(_header(headers, "ce-type"))
    if kind is None:
        raise EventError(400, f"Ce-Type must be {REQUEST_TYPE} or {RESPONSE_TYPE}")
    _header(headers, "ce-source")
    try:
        model = capture.check_name(
            _header(headers, "ce-inferenceservicename"), "Ce-Inferenceservicename"
        )
        env = capture.check_name(_header(headers, "ce-namespace"), "Ce-Namespace")
    except StackError as exc:
        raise EventError(400, str(exc)) from None
    raw_time = _header(headers, "ce-time", required=False)
    when = _event_time(raw_time) if raw_time else datetime.now(UTC)
    annotations: dict[str, str] = {}
    if raw := _header(headers, "ce-annotations", required=False):
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise EventError(400, "Ce-Annotations is not JSON") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise EventError(400, "Ce-Annotations is not an object of strings")
        annotations = parsed
    try:
        payload = decode_json(body)
    except BadRequest as exc:
        raise EventError(400, f"{kind} payload: {exc}") from None
    event = Event(event_id, kind, model, env, when, annotations)
    if kind == "request":
        return replace(event, rows=decode_request(payload))
    predictions, scores, version = decode_response(payload)
    return replace(event, predictions=predictions, scores=scores, model_version=version)


def pair_rows(request: Event, response: Event) -> list[dict[str, Any]]:
    """The captured rows of one request and its response (``StackError`` when their row counts
    differ)."""
    if len(request.rows) != len(response.predictions):
        raise StackError(
            f"event {request.id}: {len(request.rows)} request rows, "
            f"{len(response.predictions)} predictions"
        )
    version = (
        response.model_version
        or response.annotations.get(VERSION_ANNOTATION)
        or request.annotations.get(VERSION_ANNOTATION)
        or ""
    )
    base = {
        "id": request.id,
        "model_name": request.model_name,
        "model_version": version[:64],
        "environment": request.environment,
        "received_at": request.time,
    }
    return [
        {**base, "row": i, **row, "score": score, "prediction": label}
        for i, (row, score, label) in enumerate(
            zip(request.rows, response.scores, response.predictions, strict=True)
        )
    ]


# --- the write-ahead log ----------------------------------------------------------------------


def wal_line(headers: Mapping[str, str], body: bytes) -> bytes:
    """One event as a log line: its kept attributes and its body (base64)."""
    kept = {k: headers[k] for k in _KEPT if k in headers}
    return json.dumps({"h": kept, "b": base64.b64encode(body).decode()}).encode() + b"\n"


def read_wal(path: Path) -> Iterator[tuple[dict[str, str], bytes]]:
    """The events of one log segment; a torn last line (a write cut by a kill: never
    acknowledged, as its fsync had not returned) is skipped."""
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line)
                yield dict(record["h"]), base64.b64decode(record["b"], validate=True)
            except (ValueError, KeyError, TypeError):
                continue


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "payload_sink_events", "events received, by type and outcome",
            ["type", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.rows = Counter(
            "payload_sink_rows_written", "captured rows written to Parquet", registry=self.registry
        )
        self.dropped = Counter(
            "payload_sink_dropped_events", "events dropped without a pair, by reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.flush_errors = Counter(
            "payload_sink_flush_errors", "batches the store refused", registry=self.registry
        )
        self.pending = Gauge(
            "payload_sink_pending_events", "events waiting for their pair", registry=self.registry
        )
        self.buffered = Gauge(
            "payload_sink_buffered_rows", "rows waiting for their batch", registry=self.registry
        )
        self.quality_errors = Counter(
            "payload_sink_live_quality_errors",
            "reads of the label store's live-quality.json that served nothing, by reason "
            "(missing, unreadable)",
            ["reason"], registry=None,
        )  # fmt: skip
        # served by the sink's LiveQuality collector, after the read it counts


# --- live quality -------------------------------------------------------------------------------


def read_live_quality(store: str | Path) -> list[VersionQuality]:
    """The versions in ``<store>/live-quality.json`` (what ``mlstack labels add`` writes: a
    directory or an ``s3://`` prefix, read with the sink's own S3 client and credentials, as it
    writes captures). ``FileNotFoundError`` when there is none, ``StackError`` when it cannot be
    read or is not such a file."""
    path = f"{str(store).rstrip('/')}/{QUALITY_FILE}"
    try:
        if path.startswith("s3://"):
            with capture._s3().open(path, "rb") as fh:
                data = fh.read()
        else:
            data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except Exception as exc:  # the store: S3 down, refused credentials, a directory, ...
        raise StackError(f"cannot read {path}: {exc}") from None
    try:
        return [VersionQuality(**v) for v in json.loads(data)["versions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is not a live-quality file: {exc!r}") from None


class LiveQuality:
    """The live quality of the sink's own namespace on its ``/metrics``: the label store's
    ``live-quality.json`` read at a scrape, at most once per ``cache_s`` seconds (what was read,
    or the failure, is served until then). Rows of other namespaces are left out, and so is the
    ``namespace`` label: the scrape target's namespace is the label. A missing or unreadable file
    serves no samples and counts ``payload_sink_live_quality_errors{reason}`` (served here, after
    the read). Without a store or a namespace it serves only that counter."""

    def __init__(
        self, store: str | Path | None, namespace: str | None, cache_s: float, errors: Counter
    ) -> None:
        self.store, self.namespace, self.cache_s, self.errors = store, namespace, cache_s, errors
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._rows: list[VersionQuality] = []

    def _read(self, store: str | Path, namespace: str) -> list[VersionQuality]:
        try:
            rows = read_live_quality(store)
        except FileNotFoundError:
            self.errors.labels("missing").inc()
            return []
        except StackError as exc:
            print(f"sink: live quality not served: {exc}", file=sys.stderr, flush=True)
            self.errors.labels("unreadable").inc()
            return []
        return [q for q in rows if q.environment == namespace]

    def collect(self) -> Iterator[Metric]:
        if self.store is None or self.namespace is None:
            yield from self.errors.collect()
            return
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.cache_s:
                self._rows, self._read_at = self._read(self.store, self.namespace), now
            rows = self._rows
        yield from families(rows, with_namespace=False)
        yield from self.errors.collect()


@dataclass
class _Half:
    event: Event
    line: bytes
    since: float


class Sink:
    """The sink's state: the write-ahead log in ``wal_dir``, the unpaired events, the rows
    waiting for their batch; ``start()`` replays the log, ``accept`` takes one event,
    ``flush`` writes a batch (the server's background thread calls ``tick``)."""

    def __init__(
        self,
        root: str | Path,
        wal_dir: Path,
        settings: SinkSettings,
        namespace: str | None = None,
        labels: str | Path | None = None,
    ) -> None:
        self.root, self.wal_dir, self.settings = root, Path(wal_dir), settings
        # the namespace this sink serves (its own): events naming another one are refused
        self.namespace = namespace
        self.metrics = Metrics()
        # the label store: its live-quality.json's rows of this namespace are served on /metrics
        # (a sink without a namespace of its own serves none)
        self.metrics.registry.register(
            LiveQuality(
                labels, namespace, settings.live_quality_cache_s, self.metrics.quality_errors
            )
        )
        self._lock = threading.Lock()  # pending, rows, the open segment
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._flush_lock = threading.Lock()  # one batch write at a time
        self._pending: OrderedDict[tuple[str, str, str], _Half] = OrderedDict()
        self._pending_bytes = 0  # their log lines' size
        self._rows: list[dict[str, Any]] = []
        self._rows_since: float | None = None
        self._segments: list[Path] = []
        self._fd = -1
        self._written = 0  # lines appended
        self._synced = 0  # lines known on disk
        self.replayed = 0
        self.wake = threading.Event()  # a batch is full: the background thread writes it now

    # the log
    def _segment_path(self) -> Path:
        return self.wal_dir / f"wal-{time.time_ns():020d}.log"

    def _open_segment(self) -> None:
        path = self._segment_path()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        self._segments.append(path)
        _fsync_dir(self.wal_dir)

    def _append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += 1

    def _sync_through(self, seq: int) -> None:
        """Return once line ``seq`` is on disk: one fsync covers every line appended before
        it started (group commit)."""
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                target, fd = self._written, self._fd
            os.fsync(fd)
            self._synced = max(self._synced, target)

    def start(self) -> None:
        """Replay the log left by an earlier run (pairing its events again), then write what
        it completes and start a fresh segment."""
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.wal_dir.glob("wal-*.log"))
        with self._lock:
            for path in old:
                for headers, body in read_wal(path):
                    try:
                        event = parse_event(headers, body)
                    except EventError:
                        continue
                    self._pair(event, wal_line(headers, body))
                    self.replayed += 1
            self._segments = list(old)
            self._open_segment()
        self.flush(force=True)

    # events
    def _pair(self, event: Event, line: bytes) -> None:
        """Under ``_lock``: pair ``event`` with its other half, or hold it."""
        half = self._pending.get(event.key)
        if half is None:
            self._pending[event.key] = _Half(event, line, time.monotonic())
            self._pending_bytes += len(line)
            while len(self._pending) > self.settings.max_pending or (
                self._pending_bytes > self.settings.max_pending_bytes
            ):
                _, oldest = self._pending.popitem(last=False)
                self._pending_bytes -= len(oldest.line)
                self.metrics.dropped.labels("over_max_pending").inc()
        elif half.event.kind == event.kind:
            self.metrics.dropped.labels("duplicate").inc()  # a replayed or repeated id
        else:
            del self._pending[event.key]
            self._pending_bytes -= len(half.line)
            request, response = (
                (half.event, event) if event.kind == "response" else (event, half.event)
            )
            try:
                rows = pair_rows(request, response)
            except StackError as exc:
                print(f"sink: dropped: {exc}", file=sys.stderr, flush=True)
                self.metrics.dropped.labels("row_count_mismatch").inc(2)
                return
            if not self._rows:
                self._rows_since = time.monotonic()
            self._rows.extend(rows)
        self.metrics.pending.set(len(self._pending))
        self.metrics.buffered.set(len(self._rows))

    def accept(self, headers: Mapping[str, str], body: bytes) -> Event:
        """Check one event, log it durably, pair it; returns once it survives a kill.
        ``EventError`` (4xx) for a malformed event, (503) when the store is far behind."""
        try:
            event = parse_event(headers, body)
            if self.namespace is not None and event.environment != self.namespace:
                raise EventError(
                    403, f"Ce-Namespace {event.environment!r} is not this sink's {self.namespace!r}"
                )
        except EventError:
            self.metrics.events.labels("unknown", "refused").inc()
            raise
        line = wal_line(headers, body)
        with self._lock:
            if len(self._rows) >= self.settings.max_buffered_rows:
                self.metrics.events.labels(event.kind, "refused").inc()
                raise EventError(503, "the capture store is behind: rows are waiting to be written")
            self._append(line)
            seq = self._written
            self._pair(event, line)
            full = len(self._rows) >= self.settings.batch_rows
        self._sync_through(seq)
        self.metrics.events.labels(event.kind, "accepted").inc()
        if full:
            self.wake.set()
        return event

    def _expire(self, now: float) -> None:
        """Under ``_lock``: drop halves older than the pairing timeout."""
        while self._pending:
            key, half = next(iter(self._pending.items()))
            if now - half.since < self.settings.pair_timeout_s:
                break
            del self._pending[key]
            self._pending_bytes -= len(half.line)
            self.metrics.dropped.labels(f"unpaired_{half.event.kind}").inc()
        self.metrics.pending.set(len(self._pending))

    def due(self) -> bool:
        with self._lock:
            if not self._rows:
                return False
            waited = time.monotonic() - (self._rows_since or time.monotonic())
            return len(self._rows) >= self.settings.batch_rows or (
                waited >= self.settings.batch_seconds
            )

    def flush(self, *, force: bool = False) -> int:
        """Write the waiting rows as Parquet (when a batch is due, or ``force``), then drop the
        log segments they came from; returns the rows written. The unpaired events move to a
        fresh segment first. A store failure keeps rows and segments for the next try."""
        with self._flush_lock:
            if not force and not self.due():
                return 0
            with self._sync_lock, self._lock:
                self._expire(time.monotonic())
                rows, self._rows, self._rows_since = self._rows, [], None
                if not rows and not force:
                    return 0
                old = self._segments
                os.fsync(self._fd)
                os.close(self._fd)
                self._segments = []
                self._open_segment()
                for half in self._pending.values():
                    self._append(half.line)
                os.fsync(self._fd)
                self._synced = self._written
            try:
                if rows:
                    capture.write_captures(self.root, pd.DataFrame(rows))
            except Exception as exc:  # the store: S3 down, disk full, ...
                print(
                    f"sink: batch of {len(rows)} rows not written: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                self.metrics.flush_errors.inc()
                with self._lock:
                    self._rows = rows + self._rows
                    self._rows_since = time.monotonic()
                    self._segments = old + self._segments
                return 0
            for path in old:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            _fsync_dir(self.wal_dir)
            self.metrics.rows.inc(len(rows))
            self.metrics.buffered.set(len(self._rows))
            return len(rows)

    def tick(self) -> None:
        """The background thread's round: expire unpaired halves, write a due batch."""
        with self._lock:
            self._expire(time.monotonic())
        self.flush()

    def close(self) -> None:
        """Write what is waiting (best effort) and close the log."""
        with contextlib.suppress(Exception):
            self.flush(force=True)
        with self._sync_lock, self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- HTTP ---------------------------------------------------------------------------------------


class _EventReader(io.RawIOBase):
    """A kept-alive connection's reads: between events one read waits up to ``idle_timeout``;
    once an event's first bytes arrive, each read waits at most ``read_timeout`` and none
    starts after ``request_deadline`` seconds (a client sending slowly is cut off)."""

    def __init__(
        self, sock: socket.socket, read_timeout: float, idle_timeout: float, deadline: float
    ) -> None:
        super().__init__()
        self._sock, self._read_timeout, self._idle_timeout = sock, read_timeout, idle_timeout
        self._request_deadline = deadline
        self.deadline: float | None = None  # None: waiting for the next event

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._idle_timeout)
            n = self._sock.recv_into(buffer)
            self.deadline = time.monotonic() + self._request_deadline
            return n
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("event not received within its deadline")
        self._sock.settimeout(min(self._read_timeout, left))
        return self._sock.recv_into(buffer)


def _length(headers: Message, limit: int) -> int:
    try:
        return content_length(headers, limit, "event body")
    except BadRequest as exc:
        raise EventError(exc.status, str(exc)) from None


def make_server(
    sink: Sink,
    host: str,
    port: int,
    *,
    read_timeout: float = READ_TIMEOUT,
    request_deadline: float = REQUEST_DEADLINE,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving): ``POST /`` takes one event (200 once it is on disk;
    400/411/413/415 for a malformed event, naming the problem; 403 for another namespace's; 503
    when the store is far behind), ``GET /healthz`` (the probes), ``GET /metrics`` (Prometheus)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout
        protocol_version = "HTTP/1.1"  # the logger's client keeps connections open

        def setup(self) -> None:
            super().setup()
            # the answer's header and body are two writes: without this, Nagle's algorithm holds
            # the body until the client's delayed ACK (~40 ms per event)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.rfile.close()
            self.reader = _EventReader(
                self.connection, read_timeout, idle_timeout, request_deadline
            )
            self.rfile = io.BufferedReader(self.reader)

        def handle_one_request(self) -> None:
            self.reader.deadline = None  # the next event's clock starts at its first byte
            try:
                super().handle_one_request()
            except TimeoutError:
                self.close_connection = True

        def _reply(self, status: int, data: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                self.close_connection = True

        def _json(self, status: int, body: dict[str, Any]) -> None:
            if status >= 400:  # one line per refused event, none per stored one
                reason = str(body.get("error", "")).encode("unicode_escape").decode("ascii")
                sys.stderr.write(f"sink: {self.command} {status}: {reason}\n")
            self._reply(status, json.dumps(body).encode())

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/healthz":
                self._json(200, {"status": "ok"})
            elif self.path == "/metrics":
                self._reply(
                    200, generate_latest(sink.metrics.registry), "text/plain; version=0.0.4"
                )
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            try:
                length = _length(self.headers, sink.settings.max_body)
            except EventError as exc:
                self.close_connection = True
                self._json(exc.status, {"error": str(exc)})
                return
            try:
                body = self.rfile.read(length)
            except (TimeoutError, OSError):
                self.close_connection = True
                self._json(408, {"error": "event body not received in time"})
                return
            if len(body) != length:
                self.close_connection = True
                self._json(400, {"error": "event body shorter than its Content-Length"})
                return
            if self.path != "/":
                self._json(404, {"error": f"no route {self.path}: events go to /"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = sink.accept(headers, body)
            except EventError as exc:
                self._json(exc.status, {"error": str(exc)})
                return
            self._json(200, {"id": event.id, "type": event.kind})

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # refusals are logged by _json with their reason

        def log_message(self, fmt: str, *args: object) -> None:
            line = (fmt % args).encode("unicode_escape").decode("ascii")
            sys.stderr.write(f"sink: {line}\n")

    return _BoundedServer((host, port), Handler, max_connections)


def serve(sink: Sink, host: str, port: int) -> None:
    """Replay the log, then serve until SIGTERM/SIGINT, writing batches in the background;
    what is waiting is written on the way out."""
    from mlstack.monitor.relay import stop_on_signals

    sink.start()
    server = make_server(sink, host, port)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sink.wake.wait(timeout=1.0)
            sink.wake.clear()
            sink.tick()

    worker = threading.Thread(target=loop, name="sink-batches", daemon=True)
    worker.start()
    print(
        f"sink: {host}:{server.server_address[1]} -> {sink.root} (log {sink.wal_dir}, "
        f"replayed {sink.replayed} events)",
        flush=True,
    )
    stop_on_signals(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        stop.set()
        worker.join(timeout=10)
        sink.close()
    print("sink: stopped", flush=True)


if __name__ == "__main__":
    from mlstack.cli import main

    main(["capture", "sink", *sys.argv[1:]])
