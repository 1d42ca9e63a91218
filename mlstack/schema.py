"""The churn data contract: columns, dtypes, ranges, categories and data-quality limits.

Validation, training, the data generator, the feature store and serving all read the features and
the keys (entity id, event time) from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "str"]
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    # largest allowed fraction of missing values in a dataset
    max_missing: float = 0.0


FEATURES: tuple[Feature, ...] = (
    Feature("tenure_months", "numeric", "int", 0, 120),
    Feature("monthly_charges", "numeric", "float", 0, 500),
    Feature("total_charges", "numeric", "float", 0, 60_000, max_missing=0.05),
    Feature("support_calls", "numeric", "int", 0, 50),
    Feature("age", "numeric", "int", 18, 110, max_missing=0.05),
    Feature(
        "contract", "categorical", "str", categories=("month-to-month", "one-year", "two-year")
    ),
    Feature(
        "payment_method",
        "categorical",
        "str",
        categories=("card", "bank-transfer", "electronic-check", "mailed-check"),
        max_missing=0.05,
    ),
    Feature("internet_service", "categorical", "str", categories=("dsl", "fiber", "none")),
)

TARGET = "churned"
# the entity a row describes (string ids like "C000001") and the time of its snapshot (ISO-8601
# UTC in a CSV, e.g. "2026-01-05T00:00:00Z"; tz-aware UTC datetimes in pandas/Parquet). A dataset
# row is one customer's snapshot at a time with its label; a customer may have several snapshots.
ENTITY = "customer_id"
EVENT_TIME = "event_timestamp"
CLASSES: tuple[int, ...] = (0, 1)
CLASS_NAMES: dict[int, str] = {0: "retained", 1: "churned"}

# a row is predicted "churned" when its churn probability is at least this
DECISION_THRESHOLD = 0.5

# dataset-level limits
MIN_ROWS = 200
# the minority class must be at least this share of the rows (and at most 1 - this)
MIN_CLASS_SHARE = 0.05


def feature_names() -> list[str]:
    """The model's input columns, in order."""
    return [f.name for f in FEATURES]


def numeric_features() -> list[str]:
    """The numeric features' names, in order."""
    return [f.name for f in FEATURES if f.kind == "numeric"]


def categorical_features() -> list[str]:
    """The categorical features' names, in order."""
    return [f.name for f in FEATURES if f.kind == "categorical"]


def columns() -> list[str]:
    """Every column of a dataset file, in order: the keys, the model's inputs, the label."""
    return [ENTITY, EVENT_TIME, *feature_names(), TARGET]
