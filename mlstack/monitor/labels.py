"""Delayed ground truth: churn labels joined to captured predictions, and the live quality of the
versions that made them.

Churn is known weeks after a prediction. A labels file (CSV or Parquet) has, per labelled
prediction, the captured record's ``id`` (and its ``row`` within the request, needed only when a
request held more than one instance), ``label`` (0 or 1, ``mlstack.schema.CLASSES``) and
``labelled_at`` (a time, UTC when no offset is given).

The label store is a directory (or an ``s3://`` prefix, like the captures' root) of Parquet parts
(``part-<sha256 of the part's rows>.parquet``), append-only: ``add_labels`` writes one new part
with the labels the store does not hold yet (none when every label is already there: adding a
file twice changes nothing), written by rename under a lock (one PUT on S3), so a part is whole or
absent. A label for a prediction that was never captured, or that
disagrees with the stored label of the same prediction, refuses the whole file (one line, nothing
written): a label, once stored, is never replaced.

``live_quality`` joins the stored labels to the captured predictions and computes, per model
version and environment, roc_auc (of the captured ``score``) and f1 (of the captured
``prediction``, i.e. at the model's own threshold) over the labelled window
(``mlstack.settings.LiveQuality``). Too few labels or one class only is reported as not enough
labels, never as a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.schema import CLASSES

LABEL = "label"
LABELLED_AT = "labelled_at"
KEY = ["id", "row"]
STORE_COLUMNS = [*KEY, LABEL, LABELLED_AT]
QUALITY_FILE = "live-quality.json"
_LOCK = ".lock"


@dataclass(frozen=True)
class AddResult:
    """What ``add_labels`` did: labels new to the store, labels it already held, its total."""

    added: int
    already: int
    total: int
    part: str | None  # the part written (path or URL), None when nothing was new


@dataclass(frozen=True)
class VersionQuality:
    """The live quality of one model version in one environment over its labelled window."""

    model_name: str
    model_version: str
    environment: str
    labelled: int  # labelled predictions in the window
    positives: int  # of which churned (label 1)
    window_start: str  # ISO 8601, UTC
    window_end: str
    roc_auc: float | None  # None: not enough labels (see ``note``)
    f1: float | None
    note: str  # "" when computed, else why not


# --- reading a labels file ---------------------------------------------------------------------


def read_label_file(path: Path) -> pd.DataFrame:
    """The labels in ``path`` (``.csv`` or ``.parquet``) as ``id`` (str), ``row`` (Int64, NA
    when the file has no ``row`` column), ``label`` (int) and ``labelled_at`` (UTC).

    Raises ``StackError`` naming the column and the first bad value when a column is missing, an
    id is empty, a row is not a non-negative integer, a label is not a class, a time does not
    parse, or the file gives one prediction two different labels."""
    if not path.is_file():
        raise StackError(f"no such labels file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            raise StackError(f"{path}: a labels file is .csv or .parquet, not '{suffix}'")
    except StackError:
        raise
    except Exception as exc:  # pandas' and pyarrow's parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackError(f"{path} is not a readable {suffix[1:]} file: {first}") from None
    missing = [c for c in ("id", LABEL, LABELLED_AT) if c not in df.columns]
    if missing:
        raise StackError(
            f"{path}: column(s) {', '.join(missing)} missing (a labels file has id, "
            f"[row,] {LABEL} and {LABELLED_AT})"
        )
    if df.empty:
        raise StackError(f"{path} holds no labels")
    ids = df["id"]
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise StackError(f"{path}: column 'id': line {_first(ids.isna() | (ids == ''))} is empty")
    out = pd.DataFrame({"id": ids.astype(str)})
    if "row" in df.columns:
        rows = pd.to_numeric(df["row"], errors="coerce")
        bad = rows.isna() | (rows < 0) | (rows % 1 != 0)
        if bad.any():
            raise StackError(
                f"{path}: column 'row': '{df['row'][bad].iloc[0]}' is not a row number "
                "(0, 1, ...: the instance's position in its request)"
            )
        out["row"] = rows.astype("Int64")
    else:
        out["row"] = pd.Series(pd.NA, index=df.index, dtype="Int64")
    labels = pd.to_numeric(df[LABEL], errors="coerce")
    bad = labels.isna() | ~labels.isin(list(CLASSES))
    if bad.any():
        raise StackError(
            f"{path}: column '{LABEL}': '{df[LABEL][bad].iloc[0]}' is not a class "
            f"({', '.join(map(str, CLASSES))})"
        )
    out[LABEL] = labels.astype(int)
    times = pd.to_datetime(df[LABELLED_AT], errors="coerce", utc=True, format="mixed")
    if times.isna().any():
        raise StackError(
            f"{path}: column '{LABELLED_AT}': '{df[LABELLED_AT][times.isna()].iloc[0]}' is not "
            "a time (ISO 8601, e.g. 2026-11-30T12:00:00Z)"
        )
    out[LABELLED_AT] = times
    twice = out.groupby(KEY, dropna=False)[LABEL].nunique()
    if (twice > 1).any():
        ident, row = twice[twice > 1].index[0]
        raise StackError(f"{path} gives {_name(ident, row)} two different labels")
    return out.drop_duplicates(subset=KEY, keep="first").reset_index(drop=True)


def _first(mask: pd.Series) -> int:
    """The 1-based data line of the first true value (line 1 is the first row after a header)."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _name(ident: object, row: object) -> str:
    return f"id '{ident}'" if row is pd.NA or row is None else f"id '{ident}' row {row}"


# --- joining to the captures -------------------------------------------------------------------


def resolve_rows(labels: pd.DataFrame, captures: pd.DataFrame) -> pd.DataFrame:
    """``labels`` with every ``row`` filled in and checked against the captured predictions.

    A label without a row names the request's only instance. Raises ``StackError`` when a label
    names a prediction that was never captured (counting them, naming the first), or names a
    request of several instances without saying which row."""
    captured = captures[KEY].drop_duplicates()
    per_id = captured.groupby("id")["row"].agg(["count", "min"])
    out = labels.copy()
    no_row = out["row"].isna()
    if no_row.any():
        counts = out.loc[no_row, "id"].map(per_id["count"])
        several = counts > 1
        if several.any():
            ident = out.loc[no_row, "id"][several].iloc[0]
            raise StackError(
                f"id '{ident}' is a request of {int(counts[several].iloc[0])} captured "
                "predictions: the labels file needs a 'row' column saying which one each label is for"
            )
        out.loc[no_row, "row"] = out.loc[no_row, "id"].map(per_id["min"]).astype("Int64")
    known = out.merge(captured.astype({"row": "Int64"}), on=KEY, how="left", indicator=True)
    unknown = known["_merge"] != "both"
    if unknown.any():
        first = known[unknown].iloc[0]
        raise StackError(
            f"{int(unknown.sum())} of {len(out)} labels name predictions that were never captured "
            f"(first: {_name(first['id'], first['row'])}): check the ids against the captures "
            "('id' is the request id the predictor answered with); nothing was stored"
        )
    out["row"] = out["row"].astype("int64")
    return out


# --- the store ---------------------------------------------------------------------------------
# A local directory, or an ``s3://bucket/prefix`` URL like the captures' root (S3 or MinIO: the
# endpoint from ``AWS_ENDPOINT_URL``, credentials from the usual ``AWS_*``). On S3 each part and
# the quality file is one PUT (whole or absent); there is no lock there, so two adds running at
# once against one S3 store are not serialized (run one at a time).


def _is_s3(store: str | Path) -> bool:
    return isinstance(store, str) and store.startswith("s3://")


def _s3() -> Any:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _join(store: str | Path, name: str) -> str:
    return f"{str(store).rstrip('/')}/{name}"


def _parts(store: str | Path) -> list[str]:
    if _is_s3(store):
        base = str(store).removeprefix("s3://").rstrip("/")
        return sorted(f"s3://{p}" for p in _s3().glob(f"{base}/part-*.parquet"))
    local = Path(store)
    return [str(p) for p in sorted(local.glob("part-*.parquet"))] if local.is_dir() else []


def _read_bytes(path: str) -> bytes | None:
    """The file's bytes; None when it does not exist."""
    if path.startswith("s3://"):
        fs = _s3()
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            data: bytes = fh.read()
            return data
    local = Path(path)
    return local.read_bytes() if local.exists() else None


def _write_bytes(path: str, data: bytes) -> None:
    """``path`` becomes ``data`` at once: one PUT on S3, else ``mlstack.files.write_atomic``."""
    if path.startswith("s3://"):
        with _s3().open(path, "wb") as out:
            out.write(data)
        return
    local = Path(path)
    local.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(local, data)


def read_labels(store: str | Path) -> pd.DataFrame:
    """Every stored label (columns ``STORE_COLUMNS``); empty when the store has none."""
    frames = []
    for part in _parts(store):
        data = _read_bytes(part)
        if data is not None:
            frames.append(pd.read_parquet(io.BytesIO(data), columns=STORE_COLUMNS))
    if not frames:
        return pd.DataFrame(
            {
                "id": pd.Series(dtype=str),
                "row": pd.Series(dtype="int64"),
                LABEL: pd.Series(dtype="int64"),
                LABELLED_AT: pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    return pd.concat(frames, ignore_index=True)


@contextlib.contextmanager
def _store_lock(store: str | Path) -> Iterator[None]:
    """Exclusive ``flock`` on a local store's lock file (released by the kernel if we die);
    nothing on S3."""
    import fcntl

    if _is_s3(store):
        yield
        return
    local = Path(store)
    local.mkdir(parents=True, exist_ok=True)
    with (local / _LOCK).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def add_labels(store: str | Path, labels: pd.DataFrame, captures: pd.DataFrame) -> AddResult:
    """Store ``labels`` (``read_label_file``'s frame) for the predictions in ``captures``
    (``read_captures``' frame): one new part with the labels the store lacks.

    Raises ``StackError`` (nothing written) when a label names an uncaptured prediction or a
    request of several instances without a row (``resolve_rows``), or disagrees with the label
    already stored for its prediction."""
    resolved = resolve_rows(labels, captures)
    with _store_lock(store):
        stored = read_labels(store)
        both = resolved.merge(stored, on=KEY, how="left", suffixes=("", "_stored"))
        held = both[f"{LABEL}_stored"].notna()
        clash = held & (both[f"{LABEL}_stored"] != both[LABEL])
        if clash.any():
            first = both[clash].iloc[0]
            raise StackError(
                f"{_name(first['id'], first['row'])} is already labelled "
                f"{int(first[f'{LABEL}_stored'])} (labelled_at "
                f"{pd.Timestamp(first[f'{LABELLED_AT}_stored']).isoformat()}), this file says "
                f"{int(first[LABEL])} ({int(clash.sum())} such conflict(s)): stored labels are "
                "never replaced; correct the file; nothing was stored"
            )
        new = resolved[~held.to_numpy()][STORE_COLUMNS].sort_values(KEY).reset_index(drop=True)
        if new.empty:
            return AddResult(0, len(resolved), len(stored), None)
        new[LABELLED_AT] = new[LABELLED_AT].astype("datetime64[ns, UTC]")
        digest = hashlib.sha256(
            pd.util.hash_pandas_object(new, index=False).to_numpy().tobytes()
        ).hexdigest()
        part = _join(store, f"part-{digest[:32]}.parquet")
        buffer = io.BytesIO()
        new.to_parquet(buffer, index=False)
        _write_bytes(part, buffer.getvalue())
    return AddResult(len(new), len(resolved) - len(new), len(stored) + len(new), part)


# --- live quality ------------------------------------------------------------------------------


def labelled_predictions(captures: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The captured predictions that have a stored label: the capture's columns plus ``label``
    and ``labelled_at``."""
    keyed = captures.astype({"row": "int64"})
    return keyed.merge(labels[STORE_COLUMNS].astype({"row": "int64"}), on=KEY, how="inner")


def live_quality(
    captures: pd.DataFrame, labels: pd.DataFrame, *, window_days: int, min_labels: int
) -> list[VersionQuality]:
    """Each (model name, version, environment)'s quality over its labelled window: its labelled
    predictions received within ``window_days`` of its newest labelled one. roc_auc and f1 are
    None, with a note, when the window has fewer than ``min_labels`` labels or one class only."""
    from sklearn.metrics import f1_score, roc_auc_score

    joined = labelled_predictions(captures, labels)
    out: list[VersionQuality] = []
    groups = ["model_name", "model_version", "environment"]
    for (name, version, env), group in joined.groupby(groups, sort=True):
        received = pd.to_datetime(group["received_at"], utc=True)
        end = received.max()
        start = end - timedelta(days=window_days)
        window = group[(received >= start).to_numpy()]
        y = window[LABEL].to_numpy(dtype=int)
        positives = int(y.sum())
        # a V1 request without parameters.probabilities has no score: counted for f1 only
        scored = window["score"].notna().to_numpy()
        roc: float | None = None
        f1: float | None = None
        if len(y) < min_labels:
            note = f"not enough labels: {len(y)} labelled predictions, at least {min_labels} needed"
        elif len(set(y.tolist())) < 2:
            note = (
                f"not enough labels: all {len(y)} labelled predictions are class {int(y[0])}; "
                "roc_auc needs both classes"
            )
        else:
            note = ""
            predicted = window["prediction"].notna().to_numpy()  # a malformed answer: none
            f1 = float(f1_score(y[predicted], window["prediction"][predicted].to_numpy(dtype=int)))
            if scored.sum() < min_labels or len(set(y[scored].tolist())) < 2:
                note = (
                    f"not enough labels for roc_auc: {int(scored.sum())} labelled predictions "
                    f"carry a score (at least {min_labels} of both classes needed)"
                )
            else:
                roc = float(roc_auc_score(y[scored], window["score"].to_numpy(dtype=float)[scored]))
        out.append(
            VersionQuality(
                model_name=str(name),
                model_version=str(version),
                environment=str(env),
                labelled=len(y),
                positives=positives,
                window_start=start.isoformat(),
                window_end=end.isoformat(),
                roc_auc=roc,
                f1=f1,
                note=note,
            )
        )
    return out


def write_quality(
    store: str | Path, qualities: list[VersionQuality], *, now: datetime | None = None
) -> str:
    """Write ``qualities`` to ``<store>/live-quality.json`` (replaced whole: one rename or one
    PUT): what the exporter serves. Returns its path or URL."""
    doc = {
        "computed_at": (now or datetime.now(UTC)).isoformat(),
        "versions": [asdict(q) for q in qualities],
    }
    path = _join(store, QUALITY_FILE)
    _write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def read_quality(store: str | Path) -> list[VersionQuality]:
    """The qualities ``write_quality`` wrote last; empty when there are none. Raises
    ``StackError`` when the file is not what ``write_quality`` writes."""
    path = _join(store, QUALITY_FILE)
    try:
        data = _read_bytes(path)
        if data is None:
            return []
        doc = json.loads(data)
        return [VersionQuality(**v) for v in doc["versions"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is not a live-quality file: {exc}") from None
