"""New data versions from production: labelled captured predictions appended to the data.

(A monitor module: it reads the captures and the label store, and commits through the data stage.)

``from_production`` takes the captured predictions of one environment that have a stored label
(``mlstack.monitor.labels``), turns them into rows of the data contract (``labelled_rows``: the
keys, the schema's features, the label as the target), and makes the current data version plus
the rows it does not hold yet the next version:

- **Keys.** A captured prediction is a customer's snapshot at the time of its request:
  ``event_timestamp`` is the request's ``received_at`` (ISO-8601 UTC, ``generate.event_time_text``);
  ``customer_id`` is the customer id the capture carries (a ``customer_id`` column, when it has one
  and the value is not empty), else the request id: the captured ``id`` itself for the request's
  first (or only) instance, ``<id>#<row>`` for its later ones, so every row's key is unique.
- **Not duplicated.** A row is known by a stable key, the sha256 of its canonical content (its
  customer id, its event time in UTC, each feature and the target, numbers as floats, missing as
  empty: ``row_keys``), the same whatever file, dtype or time notation it was read from. A captured
  row whose key is already in the data (one an earlier run added) is not added again, nor one
  captured twice.
- **History accumulates with a window.** The new version is the current one with the new rows
  appended (oldest first, captured rows in the order they were received); when it holds more
  than ``max_rows`` rows (``mlstack.settings.Settings.data_max_rows``) the oldest are dropped.
- **The same contract.** The new file is validated like the pipeline's validate step does
  (``mlstack.data.validate.validate_file`` with the pipeline's split) before anything changes.
- **Committed like ``data add``.** Through ``mlstack.data.versions.add_version``: dvc add, dvc
  push, then git commit, atomic and journaled; the rows already in the data keep their bytes.
  Nothing new to add changes nothing.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlstack.data import generate, versions
from mlstack.data.validate import event_times, validate_file
from mlstack.errors import StackError
from mlstack.schema import ENTITY, EVENT_TIME, FEATURES, TARGET, columns


@dataclass(frozen=True)
class ProductionVersion:
    """What ``from_production`` did."""

    labelled: int  # labelled captured predictions of the environment
    added: int  # rows new to the data
    duplicates: int  # labelled rows already in the data (or captured twice)
    dropped: int  # oldest rows dropped by the window
    rows: int  # rows of the data version now at HEAD
    version: versions.DataVersion


def row_keys(df: pd.DataFrame) -> pd.Series:
    """The stable key of each row of ``df`` (which has ``columns()``): the sha256 of its
    canonical text, numbers as ``repr(float)``, missing as empty, categories and ids as text,
    event times as ``generate.event_time_text`` of their UTC time."""
    parts = []
    for name in columns():
        col = df[name]
        if name == EVENT_TIME:
            times = event_times(col)
            text = generate.event_time_text(times).where(times.notna(), "")
        elif name == ENTITY:
            text = col.astype(object).map(lambda v: "" if pd.isna(v) else str(v))
        elif name == TARGET or next(f for f in FEATURES if f.name == name).kind == "numeric":
            num = pd.to_numeric(col, errors="coerce").astype("float64")
            text = num.map(lambda v: "" if np.isnan(v) else repr(float(v)))
        else:
            text = col.astype(object).map(lambda v: "" if pd.isna(v) else str(v))
        parts.append(text.to_numpy(dtype=object))
    joined = ["\x1f".join(values) for values in zip(*parts, strict=True)]
    return pd.Series(
        [hashlib.sha256(j.encode()).hexdigest() for j in joined], index=df.index, dtype=object
    )


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s contract columns with the dtypes the canonical CSV is written from (int features
    nullable ints, so a missing age does not turn every age into a float; the keys as text)."""
    out = df[columns()].copy()
    for key in (ENTITY, EVENT_TIME):
        out[key] = out[key].astype(object).where(out[key].notna())
    for feature in FEATURES:
        if feature.dtype == "int":
            out[feature.name] = pd.to_numeric(out[feature.name]).astype("Int64")
        elif feature.dtype == "float":
            out[feature.name] = pd.to_numeric(out[feature.name]).astype("float64")
        else:
            out[feature.name] = out[feature.name].astype(object).where(out[feature.name].notna())
    out[TARGET] = out[TARGET].astype("int64")
    return out.reset_index(drop=True)


def labelled_rows(captures: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The labelled captured predictions as data rows (``columns()``), in the order they were
    received; their keys as the module docstring says (**Keys**)."""
    from mlstack.monitor.labels import LABEL, labelled_predictions

    joined = labelled_predictions(captures, labels)
    joined = joined.sort_values(["received_at", "id", "row"], kind="stable")
    request = (
        joined["id"]
        .astype(str)
        .where(joined["row"] == 0, joined["id"].astype(str) + "#" + joined["row"].astype(str))
    )
    if ENTITY in joined.columns:
        carried = joined[ENTITY].map(lambda v: v.strip() if isinstance(v, str) else "")
        request = carried.where(carried != "", request)
    received = pd.to_datetime(joined["received_at"], utc=True)
    return _canonical(
        joined.assign(
            **{
                ENTITY: request,
                EVENT_TIME: generate.event_time_text(received),
                TARGET: joined[LABEL],
            }
        )
    )


def from_production(
    repo_root: Path,
    *,
    data_path: str,
    captures_root: str | Path,
    labels_store: str | Path,
    environment: str,
    max_rows: int,
    test_size: float,
    split_seed: int,
    message: str,
    remote: str | None = None,
) -> ProductionVersion:
    """Make HEAD's data version plus ``environment``'s labelled captured rows it lacks the new
    version of ``data_path`` (see the module docstring); a no-op when none is new.

    Raises ``StackError`` when ``max_rows`` is not positive, the environment has no labelled
    captured prediction, the new data breaks the contract (``DataValidationError``), or reading
    or committing the version fails."""
    from mlstack.monitor.capture import read_captures
    from mlstack.monitor.labels import read_labels

    if max_rows <= 0:
        raise StackError(f"data_max_rows must be positive, got {max_rows} (MLSTACK_DATA_MAX_ROWS)")
    rows = labelled_rows(
        read_captures(captures_root, environment=environment), read_labels(labels_store)
    )
    if rows.empty:
        raise StackError(
            f"no labelled captured predictions of environment '{environment}' (captures "
            f"{captures_root}, labels {labels_store}): add labels first ('mlstack labels add')"
        )
    with tempfile.TemporaryDirectory(prefix="mlstack-production-") as tmp:
        current_path = Path(tmp) / "current.csv"
        versions.read_version(str(repo_root), data_path, rev="HEAD", out=current_path)
        current = _canonical(generate.read_csv(current_path))
        known = set(row_keys(current))
        keys = row_keys(rows)
        fresh = ~keys.isin(known) & ~keys.duplicated()
        new_rows = rows[fresh.to_numpy()]
        if new_rows.empty:
            head = versions.status(repo_root, data_path)
            return ProductionVersion(
                len(rows),
                0,
                len(rows),
                0,
                len(current),
                versions.DataVersion(data_path, head.md5, head.git_sha),
            )
        combined = pd.concat([current, new_rows], ignore_index=True)
        dropped = max(0, len(combined) - max_rows)
        combined = combined.iloc[dropped:].reset_index(drop=True)
        out = Path(tmp) / "next.csv"
        generate.write_csv(combined, out)
        validate_file(out, test_size=test_size, split_seed=split_seed)
        version = versions.add_version(
            repo_root, out, data_path=data_path, message=message, remote=remote
        )
    return ProductionVersion(
        len(rows), len(new_rows), len(rows) - len(new_rows), dropped, len(combined), version
    )
