"""The features' source table: a data version's rows (``schema.columns()`` without the label) as
the Parquet file the ``customer_features`` view reads.

Types as the view declares them: ``ENTITY`` a string, ``EVENT_TIME`` a tz-aware UTC timestamp,
int features Int64 and float features float64 (missing values null), categories strings (null
when missing).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd

from mlstack.data.validate import event_times
from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.schema import ENTITY, EVENT_TIME, FEATURES


def source_frame(data: pd.DataFrame) -> pd.DataFrame:
    """The source rows of a data version's frame (``schema.columns()``; the label is dropped),
    typed as the feature view declares them. ``StackError`` when a key column is missing or an
    event time does not parse as an ISO-8601 time with a UTC offset."""
    missing = [c for c in (ENTITY, EVENT_TIME, *(f.name for f in FEATURES)) if c not in data]
    if missing:
        raise StackError(f"the data has no column(s) {missing} (see mlstack.schema)")
    times = event_times(data[EVENT_TIME])
    if times.isna().any():
        row = int(times.isna().to_numpy().argmax())
        raise StackError(f"{EVENT_TIME} of row {row + 1} is not an ISO-8601 time in UTC")
    out = pd.DataFrame({ENTITY: data[ENTITY].astype(str), EVENT_TIME: times})
    return typed_features(data, out).reset_index(drop=True)


def typed_features(data: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    """``out`` with the contract's features of ``data`` added as the view declares them: ints
    Int64, floats float64 (missing values null), categories objects (None when missing)."""
    for f in FEATURES:
        col = data[f.name]
        if f.dtype == "int":
            out[f.name] = pd.to_numeric(col).astype("Int64")
        elif f.dtype == "float":
            out[f.name] = pd.to_numeric(col).astype("float64")
        else:
            out[f.name] = col.astype(object).where(col.notna(), None)
    return out


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def write_source(frame: pd.DataFrame, location: str) -> str:
    """Write the source rows to ``location`` (a path, replaced atomically, or an ``s3://`` URL)
    and return the md5 of the bytes written."""
    data = parquet_bytes(frame)
    if "://" in location:
        import fsspec

        with fsspec.open(location, "wb") as fh:
            fh.write(data)
    else:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
