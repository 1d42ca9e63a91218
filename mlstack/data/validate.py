"""Validate a dataset against the data contract in ``mlstack.schema``.

Every violation names the column and the rule it broke, so a failed pipeline step says what to fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlstack.errors import StackError
from mlstack.schema import (
    CLASSES,
    ENTITY,
    EVENT_TIME,
    FEATURES,
    MIN_CLASS_SHARE,
    MIN_ROWS,
    TARGET,
    Feature,
    columns,
)

# an ISO-8601 time that says its offset from UTC ("Z" or +hh:mm); a time without one is refused
_ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})")


@dataclass(frozen=True)
class Violation:
    column: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"column '{self.column}': {self.rule}: {self.detail}"


class DataValidationError(StackError):
    def __init__(self, violations: list[Violation]):
        self.violations = violations
        shown = "; ".join(str(v) for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"data validation failed: {shown}{more}")


def _check_feature(col: pd.Series, feature: Feature) -> list[Violation]:
    out: list[Violation] = []
    name = feature.name
    missing = float(col.isna().mean()) if len(col) else 0.0
    if missing > feature.max_missing:
        out.append(
            Violation(name, "missing", f"{missing:.1%} missing, limit {feature.max_missing:.1%}")
        )
    present = col.dropna()
    if feature.kind == "numeric":
        if not pd.api.types.is_numeric_dtype(col):
            bad = pd.to_numeric(present, errors="coerce").isna()
            example = present[bad].iloc[0] if bad.any() else present.iloc[0]
            return [*out, Violation(name, "dtype", f"expected {feature.dtype}, got {example!r}")]
        values = present.to_numpy(dtype=float)
        if feature.dtype == "int" and not np.all(np.mod(values, 1) == 0):
            return [*out, Violation(name, "dtype", "expected int, found fractional values")]
        if not np.all(np.isfinite(values)):
            out.append(Violation(name, "range", "infinite values"))
            values = values[np.isfinite(values)]
        if feature.min is not None and values.size and values.min() < feature.min:
            out.append(Violation(name, "range", f"min {values.min():g} < {feature.min:g}"))
        if feature.max is not None and values.size and values.max() > feature.max:
            out.append(Violation(name, "range", f"max {values.max():g} > {feature.max:g}"))
    else:
        unknown = sorted(set(present.astype(str)) - set(feature.categories))
        if unknown:
            out.append(
                Violation(
                    name, "categories", f"unknown {unknown[:3]}, allowed {list(feature.categories)}"
                )
            )
    return out


def _check_entity(col: pd.Series) -> list[Violation]:
    missing = int(col.isna().sum())
    if missing:
        return [Violation(ENTITY, "missing", f"{missing} rows without a customer id")]
    not_str = col[~col.map(lambda v: isinstance(v, str))]
    if len(not_str):
        example = not_str.iloc[0]
        example = example.item() if isinstance(example, np.generic) else example
        return [Violation(ENTITY, "dtype", f"expected a string id, got {example!r}")]
    empty = int((col.str.strip() == "").sum())
    if empty:
        return [Violation(ENTITY, "missing", f"{empty} rows with an empty customer id")]
    return []


def event_times(col: pd.Series) -> pd.Series:
    """``col`` (ISO-8601 strings with a UTC offset, or tz-aware datetimes) as UTC datetimes;
    NaT where a value is missing, does not parse, or has no time zone."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(col):
        return pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns, UTC]")
    text = col.map(lambda v: v if isinstance(v, str) and _ISO_UTC.fullmatch(v.strip()) else None)
    return pd.to_datetime(text.str.strip(), format="ISO8601", utc=True, errors="coerce")


def _check_event_time(col: pd.Series) -> list[Violation]:
    missing = int(col.isna().sum())
    if missing:
        return [Violation(EVENT_TIME, "missing", f"{missing} rows without an event time")]
    if pd.api.types.is_datetime64_any_dtype(col) and not isinstance(col.dtype, pd.DatetimeTZDtype):
        return [Violation(EVENT_TIME, "format", "datetimes without a time zone (expected UTC)")]
    bad = col[event_times(col).isna()]
    if len(bad):
        return [
            Violation(
                EVENT_TIME,
                "format",
                f"{len(bad)} rows not an ISO-8601 UTC time (like 2026-01-05T00:00:00Z), "
                f"e.g. {bad.iloc[0]!r}",
            )
        ]
    return []


def _check_keys(df: pd.DataFrame) -> list[Violation]:
    keys = pd.DataFrame({ENTITY: df[ENTITY], EVENT_TIME: event_times(df[EVENT_TIME])})
    repeated = keys[keys.duplicated(keep=False)]
    if repeated.empty:
        return []
    first = repeated.iloc[0]
    return [
        Violation(
            f"{ENTITY}, {EVENT_TIME}",
            "unique",
            f"{len(repeated)} rows share a customer and time with another row, e.g. "
            f"{first[ENTITY]!r} at {first[EVENT_TIME].isoformat()}",
        )
    ]


def _check_target(col: pd.Series) -> list[Violation]:
    if col.isna().any():
        return [Violation(TARGET, "missing", f"{int(col.isna().sum())} rows without a label")]
    labels = set(pd.unique(col))
    if not labels <= set(CLASSES):
        return [Violation(TARGET, "labels", f"unknown labels {sorted(labels - set(CLASSES))[:3]}")]
    share = col.value_counts(normalize=True)
    minority = min(float(share.get(c, 0.0)) for c in CLASSES)
    if minority < MIN_CLASS_SHARE:
        return [
            Violation(
                TARGET,
                "class-balance",
                f"minority class share {minority:.1%} < {MIN_CLASS_SHARE:.0%}",
            )
        ]
    return []


def find_violations(df: pd.DataFrame) -> list[Violation]:
    """Every way ``df`` breaks the schema and the data rules (empty when it is valid): the keys
    (a non-empty string ``customer_id``, an ``event_timestamp`` in UTC, no two rows with the same
    pair), the features' types, ranges, categories and missing shares, and the labels."""
    expected = columns()
    out = [Violation(c, "schema", "column missing") for c in expected if c not in df.columns]
    out += [Violation(c, "schema", "unexpected column") for c in df.columns if c not in expected]
    if len(df) < MIN_ROWS:
        out.append(Violation("*", "rows", f"{len(df)} rows < {MIN_ROWS}"))
    keys_ok = True
    if ENTITY in df.columns:
        found = _check_entity(df[ENTITY])
        keys_ok = not found
        out += found
    if EVENT_TIME in df.columns:
        found = _check_event_time(df[EVENT_TIME])
        keys_ok = keys_ok and not found
        out += found
    if keys_ok and ENTITY in df.columns and EVENT_TIME in df.columns:
        out += _check_keys(df)
    for feature in FEATURES:
        if feature.name in df.columns:
            out += _check_feature(df[feature.name], feature)
    if TARGET in df.columns:
        out += _check_target(df[TARGET])
    return out


def split_violations(df: pd.DataFrame, test_size: float, split_seed: int) -> list[Violation]:
    """The target's classes on each side of the train/held-out split that train and evaluate
    will make (``mlstack.train.training.split``): every class on both sides."""
    from mlstack.train.training import split_missing_classes

    if TARGET not in df.columns or df[TARGET].isna().any():
        return []  # already a violation of its own
    return [Violation(TARGET, "split", d) for d in split_missing_classes(df, test_size, split_seed)]


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """A few figures about a valid dataset, for the step's metrics."""
    return {
        "rows": float(len(df)),
        "positive_share": float(df[TARGET].mean()),
        **{f"missing_{f.name}": float(df[f.name].isna().mean()) for f in FEATURES},
    }


def validate_file(
    dataset_path: str | Path,
    report_path: str | Path | None = None,
    *,
    test_size: float | None = None,
    split_seed: int | None = None,
) -> dict[str, float]:
    """Validate a dataset CSV; raise ``DataValidationError`` on any violation. With
    ``test_size`` and ``split_seed`` (the pipeline's), also the split train will make: every
    class on its train and its held-out side (``split_violations``).

    Writes a JSON report (also on failure) when ``report_path`` is given, and returns the summary
    (``summarize``).
    """
    try:
        df = pd.read_csv(dataset_path, dtype={ENTITY: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataValidationError([Violation("*", "format", f"not a readable CSV: {exc}")]) from exc
    violations = find_violations(df)
    if not violations and test_size is not None and split_seed is not None:
        violations = split_violations(df, test_size, split_seed)
    summary = summarize(df) if not violations else {}
    report = {
        "valid": not violations,
        "violations": [asdict(v) for v in violations],
        "summary": summary,
    }
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2))
    if violations:
        raise DataValidationError(violations)
    return summary
