"""Decode V1 and V2 (Open Inference Protocol) requests into one checked batch.

A batch is arrays in schema order: numeric features as float64 (NaN for missing), categorical
features as objects (str or None) and as codes (the index in the feature's categories, ``MISSING``,
``UNKNOWN``), which the engine and the drift window use. Every problem raises ``InputError`` with
the field's name and a ``reason`` label for the input-error metric.

Decoding is column-wise: a batch whose values all have the plain JSON types and pass the checks
is converted a column at a time by numpy and dict look-ups, with no Python loop per row; anything
else (or any bad value) takes the row-by-row path, which accepts the same values and raises the
error naming the first bad field. A single row takes the row-by-row path directly: for one row
its plain Python checks cost less than numpy's per-call set-up.
"""

from __future__ import annotations

import math
import operator
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from mlstack.schema import FEATURES, Feature

if TYPE_CHECKING:  # pandas only for the sklearn fallback and frames made in-process
    import pandas as pd

NUMERIC = [f for f in FEATURES if f.kind == "numeric"]
CATEGORICAL = [f for f in FEATURES if f.kind == "categorical"]
NAMES = [f.name for f in FEATURES]
BY_NAME = {f.name: f for f in FEATURES}
NULLABLE = {f.name for f in FEATURES if f.max_missing > 0}
MISSING = -1  # the code of a missing category
UNKNOWN = -2  # a category outside the schema (only in frames the server makes, e.g. probes)
_BAD = 99  # a value the column-wise path leaves to the row-by-row one
# per categorical feature: what a request may send -> its code (V2 BYTES arrive as bytes, and
# there an empty string is the missing value)
_CODES: list[dict[Any, int]] = [
    {
        **{c: k for k, c in enumerate(f.categories)},
        **{c.encode(): k for k, c in enumerate(f.categories)},
        **({None: MISSING, "": MISSING, b"": MISSING} if f.name in NULLABLE else {}),
    }
    for f in CATEGORICAL
]
# per categorical feature: code -> value (the last two: UNKNOWN, MISSING)
_VALUES = [np.array([*f.categories, None, None], dtype=object) for f in CATEGORICAL]
_NUMERIC_TYPES = frozenset({int, float, type(None)})  # null: checked per feature below
_NULLABLE_NUMERIC = np.array([f.name in NULLABLE for f in NUMERIC])
# the schema's bounds, finite (an unbounded side is float64's largest value): inf and NaN fall
# outside them
_LARGEST = float(np.finfo(np.float64).max)
_MINS = np.array([-_LARGEST if f.min is None else f.min for f in NUMERIC], dtype=np.float64)
_MAXS = np.array([_LARGEST if f.max is None else f.max for f in NUMERIC], dtype=np.float64)
# up to this many rows a batch is decoded value by value (fewer numpy calls than column-wise)
_ROWWISE_MAX = 1
_ROW_VALUES = operator.itemgetter(*NAMES)
_NAME_SET = frozenset(NAMES)
_INT_DATATYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_DATATYPES = {"FP16", "FP32", "FP64"}


class InputError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Batch:
    """A checked batch: ``numeric`` (n, len(NUMERIC)) float64, NaN for missing; ``categorical``
    (n, len(CATEGORICAL)) objects, str or None; ``codes`` (n, len(CATEGORICAL)) int8. The
    decoder gives the codes and the values are made from them on first use (the engine and the
    drift window read only the codes); a batch made from values gets its codes on first use."""

    __slots__ = ("_categorical", "codes", "numeric")

    def __init__(
        self,
        numeric: np.ndarray,
        categorical: np.ndarray | None = None,
        codes: np.ndarray | None = None,
    ):
        if categorical is None and codes is None:
            raise ValueError("a batch needs its categorical values or their codes")
        self.numeric = numeric
        self._categorical = categorical
        self.codes = codes

    def __len__(self) -> int:
        return self.numeric.shape[0]

    @property
    def categorical(self) -> np.ndarray:
        if self._categorical is None:
            assert self.codes is not None
            categorical = np.empty(self.codes.shape, dtype=object)
            for j, values in enumerate(_VALUES):
                categorical[:, j] = values[self.codes[:, j]]
            self._categorical = categorical
        return self._categorical

    def category_codes(self) -> np.ndarray:
        """Each category's index in its feature's schema categories; ``MISSING`` for None,
        ``UNKNOWN`` for a value outside the schema."""
        if self.codes is None:
            codes = np.empty(self.categorical.shape, dtype=np.int8)
            for j, f in enumerate(CATEGORICAL):
                lookup: dict[Any, int] = {c: k for k, c in enumerate(f.categories)}
                lookup[None] = MISSING
                codes[:, j] = [lookup.get(v, UNKNOWN) for v in self.categorical[:, j]]
            self.codes = codes
        return self.codes

    def to_frame(self) -> pd.DataFrame:
        """The model's input frame, made by the same ``features`` as in training."""
        import pandas as pd

        from mlstack.train.training import features

        frame = pd.DataFrame(self.numeric, columns=[f.name for f in NUMERIC])
        for j, f in enumerate(CATEGORICAL):
            frame[f.name] = pd.Series(self.categorical[:, j], dtype=object)
        return features(frame)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Batch:
        numeric = df[[f.name for f in NUMERIC]].to_numpy(dtype=np.float64, na_value=np.nan)
        cats = df[[f.name for f in CATEGORICAL]].astype(object)
        return cls(numeric, cats.where(cats.notna(), None).to_numpy(dtype=object))


def _check_size(n: int, max_batch: int) -> None:
    if n == 0:
        raise InputError("empty_batch", "empty batch: send at least one row")
    if n > max_batch:
        raise InputError("batch_too_large", f"batch of {n} rows is over the limit of {max_batch}")


def _numeric_value(feature: Feature, value: Any, where: str) -> float:
    if value is None:
        if feature.name not in NULLABLE:
            raise InputError("null_value", f"{where}: feature '{feature.name}' must not be null")
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(
            "wrong_type", f"{where}: feature '{feature.name}' must be a number, got {value!r}"
        )
    value = float(value)
    if math.isnan(value):
        if feature.name not in NULLABLE:
            raise InputError("null_value", f"{where}: feature '{feature.name}' must not be NaN")
        return value
    if math.isinf(value):
        raise InputError("wrong_type", f"{where}: feature '{feature.name}' must be finite")
    if (feature.min is not None and value < feature.min) or (
        feature.max is not None and value > feature.max
    ):
        raise InputError(
            "out_of_range",
            f"{where}: feature '{feature.name}' is {value:g}, outside [{feature.min:g}, {feature.max:g}]",
        )
    return value


def _category_value(feature: Feature, value: Any, where: str) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    # V2 BYTES tensors cannot hold null: an empty string is the missing value there
    if value is None or value == "":
        if feature.name not in NULLABLE:
            raise InputError("null_value", f"{where}: feature '{feature.name}' must not be null")
        return None
    if not isinstance(value, str):
        raise InputError(
            "wrong_type", f"{where}: feature '{feature.name}' must be a string, got {value!r}"
        )
    if value not in feature.categories:
        raise InputError(
            "unknown_category",
            f"{where}: feature '{feature.name}' is {value!r}, not one of {list(feature.categories)}",
        )
    return value


def _check_names(given: Any, prefix: str, noun: str) -> None:
    """Every schema feature present and nothing else (row keys in V1, input names in V2)."""
    missing = [n for n in NAMES if n not in given]
    if missing:
        raise InputError("missing_feature", f"{prefix}missing {noun}(s) {missing}")
    extra = sorted(k for k in given if k not in BY_NAME)
    if extra:
        raise InputError("extra_feature", f"{prefix}unknown {noun}(s) {extra}")


def _numeric_columns(columns: list[Any], n: int) -> np.ndarray | None:
    """The numeric features' values as an (n, features) array when every value is an int, a
    float or (where allowed) null, finite and in range; None otherwise. One type pass and one
    conversion for all the features."""
    if not set(map(type, chain.from_iterable(columns))) <= _NUMERIC_TYPES:
        return None
    try:
        out = np.array(columns, dtype=np.float64).T  # None -> NaN
    except (OverflowError, ValueError, TypeError):
        return None
    if out.shape != (n, len(NUMERIC)):
        return None
    inside = (out >= _MINS) & (out <= _MAXS)  # NaN and inf compare outside
    if inside.all() or (inside | (np.isnan(out) & _NULLABLE_NUMERIC)).all():
        return out
    return None


def _category_codes(columns: list[Any], n: int) -> np.ndarray | None:
    """The categorical features' codes when every value is a known category (or, where allowed,
    missing); None otherwise."""
    codes = np.empty((n, len(CATEGORICAL)), dtype=np.int8)
    for j, column in enumerate(columns):
        try:
            codes[:, j] = list(map(_CODES[j].get, column, repeat(_BAD)))
        except TypeError:  # an unhashable value (a list, an object)
            return None
    return None if (codes == _BAD).any() else codes


def _from_columns(columns: list[Any], n: int) -> Batch | None:
    """A batch from one sequence of values per feature (schema order), column-wise; None when
    any value needs the row-by-row path (which names the problem)."""
    numeric = _numeric_columns(columns[: len(NUMERIC)], n)
    if numeric is None:
        return None
    codes = _category_codes(columns[len(NUMERIC) :], n)
    if codes is None:
        return None
    return Batch(numeric, codes=codes)


def _row_columns(rows: list[Any]) -> list[Any] | None:
    """The values of V1 rows, one tuple per feature, when every row is an object with exactly the
    schema's keys or a list of as many values; None otherwise."""
    kinds = set(map(type, rows))
    if kinds == {dict}:
        if not all(map(operator.eq, map(dict.keys, rows), repeat(_NAME_SET))):
            return None
        return list(zip(*map(_ROW_VALUES, rows), strict=True))
    if kinds == {list} and set(map(len, rows)) == {len(NAMES)}:
        return list(zip(*rows, strict=True))
    return None


def from_rows(rows: list[Any], max_batch: int, field: str = "instances") -> Batch:
    """V1 rows: objects keyed by feature name, or lists in schema order."""
    _check_size(len(rows), max_batch)
    if len(rows) <= _ROWWISE_MAX:
        return _from_rows_checked(rows, field)
    columns = _row_columns(rows)
    batch = None if columns is None else _from_columns(columns, len(rows))
    return batch if batch is not None else _from_rows_checked(rows, field)


def _from_rows_checked(rows: list[Any], field: str) -> Batch:
    """Row by row, value by value: the first bad value raises the ``InputError`` naming it."""
    numeric: list[list[float]] = []
    codes: list[list[int]] = []
    for i, row in enumerate(rows):
        where = f"{field}[{i}]"
        if isinstance(row, dict):
            _check_names(row, f"{where}: ", "feature")
            values = [row[n] for n in NAMES]
        elif isinstance(row, list):
            if len(row) != len(NAMES):
                raise InputError(
                    "wrong_shape",
                    f"{where}: expected {len(NAMES)} values in the order {NAMES}, got {len(row)}",
                )
            values = row
        else:
            raise InputError(
                "wrong_type",
                f"{where}: a row must be an object or a list, got {type(row).__name__}",
            )
        by_name = dict(zip(NAMES, values, strict=True))
        numeric.append([_numeric_value(f, by_name[f.name], where) for f in NUMERIC])
        codes.append(
            [
                table[_category_value(f, by_name[f.name], where)]
                for f, table in zip(CATEGORICAL, _CODES, strict=True)
            ]
        )
    return Batch(
        np.array(numeric, dtype=np.float64).reshape(len(rows), len(NUMERIC)),
        codes=np.array(codes, dtype=np.int8).reshape(len(rows), len(CATEGORICAL)),
    )


def from_v1(body: Any, max_batch: int) -> Batch:
    if not isinstance(body, dict):
        raise InputError("wrong_shape", "request body must be a JSON object with 'instances'")
    if "instances" in body:
        rows = body["instances"]
        field = "instances"
    elif "inputs" in body:
        rows = body["inputs"]
        field = "inputs"
    else:
        raise InputError("wrong_shape", "request body needs 'instances' (a list of rows)")
    if not isinstance(rows, list):
        raise InputError("wrong_shape", f"'{field}' must be a list of rows")
    return from_rows(rows, max_batch, field)


def _v2_column(name: str, datatype: str, data: Any, n: int, feature: Feature) -> list[Any]:
    where = f"input '{name}'"
    if feature.kind == "numeric" and datatype not in _INT_DATATYPES | _FLOAT_DATATYPES:
        raise InputError("wrong_type", f"{where}: datatype {datatype} is not numeric")
    if feature.kind == "categorical" and datatype != "BYTES":
        raise InputError("wrong_type", f"{where}: categorical feature needs datatype BYTES")
    values = (
        list(np.asarray(data, dtype=object).reshape(-1)) if not isinstance(data, list) else data
    )
    if values and isinstance(values[0], list):
        values = [v for part in values for v in (part if isinstance(part, list) else [part])]
    if len(values) != n:
        raise InputError("wrong_shape", f"{where}: {len(values)} values for shape with {n} rows")
    return values


def from_v2(inputs: list[Any], max_batch: int) -> Batch:
    """V2 inputs: one named input per feature (shape [n] or [n, 1]), or a single 2-D input of
    shape [n, features] (datatype BYTES when it mixes numbers and categories)."""
    if not inputs:
        raise InputError("wrong_shape", "request has no inputs")
    if len(inputs) == 1 and inputs[0].name not in BY_NAME:
        return _from_v2_matrix(inputs[0], max_batch)
    names = [i.name for i in inputs]
    by_name = {i.name: i for i in inputs}
    _check_names(names, "", "input")
    if len(names) != len(set(names)):
        raise InputError("wrong_shape", "an input name appears twice")
    n = int(by_name[NAMES[0]].shape[0]) if by_name[NAMES[0]].shape else 0
    for name in NAMES:
        shape = list(by_name[name].shape)
        if not (shape == [n] or shape == [n, 1]):
            raise InputError(
                "wrong_shape", f"input '{name}': shape {shape}, expected [{n}] or [{n}, 1]"
            )
    _check_size(n, max_batch)
    columns = [
        _v2_column(name, by_name[name].datatype, by_name[name].data, n, BY_NAME[name])
        for name in NAMES
    ]
    batch = None if n <= _ROWWISE_MAX else _from_columns(columns, n)
    if batch is not None:
        return batch
    rows = [[column[i] for column in columns] for i in range(n)]
    return _from_rows_checked(rows, field="row")


def _from_v2_matrix(inp: Any, max_batch: int) -> Batch:
    shape = list(inp.shape)
    if len(shape) != 2 or shape[1] != len(NAMES):
        raise InputError(
            "wrong_shape",
            f"input '{inp.name}': shape {shape}, expected [n, {len(NAMES)}] in the order {NAMES}",
        )
    n = shape[0]
    _check_size(n, max_batch)
    data = inp.data
    flat = list(data) if isinstance(data, list) else list(np.asarray(data, dtype=object).ravel())
    if flat and isinstance(flat[0], list):
        flat = [v for row in flat for v in row]
    if len(flat) != n * len(NAMES):
        raise InputError("wrong_shape", f"input '{inp.name}': {len(flat)} values for shape {shape}")
    rows = []
    for i in range(n):
        row = []
        for j, f in enumerate(FEATURES):
            v = flat[i * len(NAMES) + j]
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if f.kind == "numeric" and isinstance(v, str):
                try:
                    v = float(v) if v.strip().lower() not in ("", "nan", "null") else None
                except ValueError:
                    raise InputError(
                        "wrong_type",
                        f"input '{inp.name}'[{i}]: feature '{f.name}' must be a number, got {v!r}",
                    ) from None
            row.append(v)
        rows.append(row)
    return from_rows(rows, max_batch, field=f"input '{inp.name}' row")
