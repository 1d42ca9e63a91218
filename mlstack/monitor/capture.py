"""Captured predictions: the record the payload sink writes and every later step reads.

Contract (what labels, live quality and new data versions build on):

* One row per predicted instance. A request holding several rows (V1 ``instances``, V2 inputs of
  shape ``[n]``) gives ``n`` rows sharing ``id`` and numbered by ``row`` (0..n-1).
* Columns, in this order (``COLUMNS``), with these Arrow types (``SCHEMA``):

  ``id`` (string)
      the inference id: the CloudEvent id (``Ce-Id``) KServe's logger gives the request and its
      response, the id a label is joined on (with ``row``);
  ``row`` (int32)
      the instance's index in its request;
  ``model_name`` (string)
      the InferenceService's name (``Ce-Inferenceservicename``);
  ``model_version`` (string)
      the registry version that answered (the V2 response's ``model_version``, else the
      InferenceService's ``mlstack.io/model-version`` annotation the logger forwards); empty
      when neither says;
  ``environment`` (string)
      the namespace the predictor runs in (``Ce-Namespace``), e.g. ``ml-staging``;
  ``received_at`` (timestamp, microseconds, UTC)
      when the predictor's logger saw the request (the request event's ``Ce-Time``);
  one column per feature of ``mlstack.schema.FEATURES``, named as there
      ``int`` features as int64, ``float`` as float64, ``str`` as string; null where missing;
  ``score`` (float64)
      the predicted probability of churn (class 1); null when the response did not carry
      probabilities (a V1 request without ``parameters.probabilities``);
  ``prediction`` (int64)
      the predicted class (0 retained, 1 churned).

* Files: Parquet, written whole and then made visible at once (a local file is written to a
  hidden temporary name, fsynced and renamed; an S3 object is one PUT), at
  ``<root>/<environment>/<model_name>/date=YYYY-MM-DD/part-<uuid>.parquet`` with the date of
  ``received_at`` (UTC). ``root`` is a local directory or an ``s3://bucket/prefix`` URL (S3 or
  MinIO: the endpoint comes from ``AWS_ENDPOINT_URL``, credentials from the usual ``AWS_*``, or
  from a mounted Secret's files in ``MLSTACK_S3_CREDENTIALS_DIR``).
  ``environment`` and ``model_name`` must be Kubernetes names, so no value makes a path leave
  ``root``.

``write_captures`` writes a batch; ``read_captures`` reads them back as one DataFrame, one row
per (environment, model_name, id, row) (the sink delivers at least once).
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlstack.errors import StackError
from mlstack.schema import FEATURES

ID_COLUMNS = ("id", "row", "model_name", "model_version", "environment", "received_at")
OUTPUT_COLUMNS = ("score", "prediction")
FEATURE_COLUMNS = tuple(f.name for f in FEATURES)
COLUMNS = (*ID_COLUMNS, *FEATURE_COLUMNS, *OUTPUT_COLUMNS)

_FEATURE_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("environment", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(f.name, _FEATURE_TYPES[f.dtype]) for f in FEATURES),
        pa.field("score", pa.float64()),
        pa.field("prediction", pa.int64()),
    ]
)

# a Kubernetes name (RFC 1123 label): what a namespace and an InferenceService name are
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PART = re.compile(r"^part-[0-9a-f]{32}\.parquet$")
_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def check_name(value: object, what: str) -> str:
    """``value`` when it is a Kubernetes name (lower-case letters, digits and '-', at most 63
    characters, alphanumeric at both ends), else ``StackError`` naming ``what``."""
    if not isinstance(value, str) or not _K8S_NAME.match(value):
        raise StackError(
            f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit)"
        )
    return value


def _is_s3(root: str | Path) -> bool:
    return isinstance(root, str) and root.startswith("s3://")


def _s3() -> Any:
    """The S3 client: endpoint and credentials from the environment, or from the files of a
    mounted Secret in ``MLSTACK_S3_CREDENTIALS_DIR`` (keys ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_ENDPOINT_URL``), which win."""
    import s3fs

    values = {k: os.environ.get(k, "") for k in _S3_KEYS}
    if folder := os.environ.get("MLSTACK_S3_CREDENTIALS_DIR"):
        for key in _S3_KEYS:
            path = Path(folder) / key
            try:
                values[key] = path.read_text().strip() if path.exists() else values[key]
            except OSError as exc:
                raise StackError(f"cannot read S3 credential file {path}: {exc.strerror}") from None
    return s3fs.S3FileSystem(
        endpoint_url=values["AWS_ENDPOINT_URL"] or None,
        key=values["AWS_ACCESS_KEY_ID"] or None,
        secret=values["AWS_SECRET_ACCESS_KEY"] or None,
    )


def to_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as a table of ``SCHEMA`` (columns in contract order); ``StackError`` naming the
    first missing column or the first value that does not fit its column's type."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise StackError(f"captured rows lack column(s) {missing} (mlstack.monitor.capture)")
    arrays = []
    for fld in SCHEMA:
        values = frame[fld.name]
        if pa.types.is_timestamp(fld.type):
            values = pd.to_datetime(values, utc=True)
        try:
            arrays.append(pa.array(values, type=fld.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StackError(f"captured column '{fld.name}': {exc}") from None
        if not fld.nullable and arrays[-1].null_count:
            raise StackError(f"captured column '{fld.name}' has missing values")
    for name in ("environment", "model_name"):
        for value in set(frame[name]):
            check_name(value, name)
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_captures(root: str | Path, frame: pd.DataFrame) -> list[str]:
    """Write ``frame`` (rows of the contract) under ``root``: one new Parquet part per
    (environment, model_name, UTC date of received_at). Returns the parts' paths/URLs."""
    if frame.empty:
        return []
    table = to_table(frame)
    frame = table.to_pandas()
    days = frame["received_at"].dt.strftime("%Y-%m-%d")
    written: list[str] = []
    for (env, model, day), index in frame.groupby(
        [frame["environment"], frame["model_name"], days], sort=True
    ).groups.items():
        part = table.take(pa.array(frame.index.get_indexer(index)))
        name = f"part-{uuid.uuid4().hex}.parquet"
        relative = f"{env}/{model}/date={day}/{name}"
        data = _parquet_bytes(part)
        if _is_s3(root):
            url = f"{str(root).rstrip('/')}/{relative}"
            with _s3().open(url, "wb") as out:  # one PUT: visible whole or not at all
                out.write(data)
            written.append(url)
        else:
            path = Path(root) / relative
            _write_local(path, data)
            written.append(str(path))
    return written


def _parts(root: str | Path, environment: str | None, since: date | None) -> Iterable[str]:
    env_glob = environment if environment is not None else "*"
    pattern = f"{env_glob}/*/date=*/part-*.parquet"
    if _is_s3(root):
        base = str(root).removeprefix("s3://").rstrip("/")
        candidates = [f"s3://{p}" for p in _s3().glob(f"{base}/{pattern}")]
    else:
        candidates = [str(p) for p in sorted(Path(root).glob(pattern))]
    for c in candidates:
        day_dir, name = c.rsplit("/", 2)[-2:]
        match = _DATE_DIR.match(day_dir)
        if not _PART.match(name) or match is None:
            continue
        if since is not None and date.fromisoformat(match.group(1)) < since:
            continue
        yield c


def _frame(table: pa.Table) -> pd.DataFrame:
    # int64 columns as pandas' nullable Int64 whether or not this batch has a null
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def empty_captures() -> pd.DataFrame:
    """A frame with the contract's columns and no rows."""
    return _frame(SCHEMA.empty_table())


def read_captures(
    root: str | Path, *, environment: str | None = None, since: datetime | None = None
) -> pd.DataFrame:
    """Every captured row under ``root`` (of ``environment`` when given, received at or after
    ``since`` when given; a naive ``since`` is UTC), columns ``COLUMNS``, sorted by
    ``received_at``, ``id``, ``row``. No captures: an empty frame with those columns."""
    if environment is not None:
        check_name(environment, "environment")
    since_utc = None
    if since is not None:
        since_utc = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    tables = []
    fs = _s3() if _is_s3(root) else None
    for part in _parts(root, environment, since_utc.date() if since_utc else None):
        if fs is not None:
            with fs.open(part, "rb") as f:
                tables.append(pq.read_table(f, schema=SCHEMA))
        else:
            tables.append(pq.read_table(part, schema=SCHEMA))
    if not tables:
        return empty_captures()
    frame = _frame(pa.concat_tables(tables))
    if since_utc is not None:
        frame = frame[frame["received_at"] >= pd.Timestamp(since_utc)]
    # delivery is at least once (a sink killed between a part's rename and its log's deletion
    # writes those rows again): one row per (environment, model, id, row)
    frame = frame.drop_duplicates(["environment", "model_name", "id", "row"], keep="first")
    return frame.sort_values(["received_at", "id", "row"], kind="stable").reset_index(drop=True)
