"""A seeded generator of churn data, and of a drifted "new production batch".

The same seed, row count and drift flag always give the same bytes, so the dataset behind the
committed DVC pointer can be rebuilt on a fresh clone (see ``mlstack.data.versions.bootstrap``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlstack.schema import ENTITY, EVENT_TIME, TARGET, columns

# snapshots lie in a year from here (a drifted batch: the year after it)
EPOCH = np.datetime64("2025-01-01T00:00:00", "s")
SPAN_DAYS = 365
# this share of customers has 2 or 3 snapshots, each 30 to 120 days after the one before
REPEAT_SHARE = 0.15
GAP_DAYS = (30, 120)
_DAY = 86_400


def _snapshot_counts(rng: np.random.Generator, rows: int) -> np.ndarray:
    """How many snapshots each customer has (1, or 2-3 for ``REPEAT_SHARE`` of them), adding up
    to exactly ``rows`` (the last customer's count is cut to fit)."""
    repeats = rng.integers(2, 4, size=rows)
    counts = np.where(rng.uniform(size=rows) < REPEAT_SHARE, repeats, 1)
    ends = np.cumsum(counts)
    n = int(np.searchsorted(ends, rows)) + 1
    counts = counts[:n].copy()
    counts[-1] -= int(ends[n - 1]) - rows
    return counts


def generate(rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    """Tabular churn data: customer snapshots with numeric and categorical features, missing
    values, ~20% positives.

    Each row is one customer (``customer_id``, "C" + a zero-padded number) at one time
    (``event_timestamp``, ISO-8601 UTC to the second, within ``SPAN_DAYS`` from ``EPOCH``) with
    the label observed after that snapshot. About ``REPEAT_SHARE`` of the customers have 2-3
    snapshots ``GAP_DAYS`` apart in which they changed: tenure grew by the months between them,
    monthly (and so total) charges and support calls changed, and each snapshot has its own label,
    so joining a label to features recorded at another time gives other (wrong) inputs.
    Contract, internet service, payment method and age belong to the customer. Rows are ordered
    by time, then customer.

    ``drift=True`` shifts the population the way a price rise would: higher charges, more support
    calls, more month-to-month contracts and fiber customers; its snapshots lie in the year after.

    Returns ``rows`` rows in the schema's column order; the same ``seed`` gives the same rows.
    Raises ``ValueError`` when ``rows`` is not positive.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    counts = _snapshot_counts(rng, rows)
    customers = len(counts)
    owner = np.repeat(np.arange(customers), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)  # each row's customer's first row
    step = np.arange(rows) - first  # 0 for a customer's first snapshot, then 1, 2

    # the customer: contract, internet service, payment method, age, and its first snapshot
    contract_p = [0.75, 0.15, 0.10] if drift else [0.55, 0.25, 0.20]
    contract = rng.choice(["month-to-month", "one-year", "two-year"], size=customers, p=contract_p)
    internet_p = [0.25, 0.60, 0.15] if drift else [0.40, 0.40, 0.20]
    internet = rng.choice(["dsl", "fiber", "none"], size=customers, p=internet_p)
    payment = rng.choice(
        ["card", "bank-transfer", "electronic-check", "mailed-check"],
        size=customers,
        p=[0.30, 0.25, 0.30, 0.15],
    ).astype(object)
    first_tenure = np.clip(rng.exponential(24.0, customers), 0, 72)
    base = np.where(internet == "fiber", 85.0, np.where(internet == "dsl", 55.0, 25.0))
    first_monthly = base + rng.normal(0, 12, customers) + (15.0 if drift else 0.0)
    age = np.clip(rng.normal(45, 15, customers), 18, 90).astype(int)

    # when: seconds after the customer's first snapshot, and the first snapshot's place in the span
    gaps = rng.integers(GAP_DAYS[0] * _DAY, GAP_DAYS[1] * _DAY + 1, size=rows)
    gaps[step == 0] = 0
    since = np.cumsum(gaps)
    since -= since[first]
    room = SPAN_DAYS * _DAY - np.maximum.reduceat(since, np.cumsum(counts) - counts)
    start = (rng.uniform(size=customers) * room).astype(np.int64)
    offset = SPAN_DAYS * _DAY if drift else 0
    times = EPOCH + (offset + start[owner] + since).astype("timedelta64[s]")

    # each snapshot: tenure grew, charges moved, support calls of its own
    contract, internet, payment, age = contract[owner], internet[owner], payment[owner], age[owner]
    tenure = np.clip(first_tenure[owner] + since / (30.44 * _DAY), 0, 120).astype(int)
    monthly = first_monthly[owner] + rng.normal(0, 6, rows) * np.sqrt(step)
    monthly = np.clip(np.round(monthly, 2), 18.0, 150.0)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.1, rows), 2)
    support = rng.poisson(3.0 if drift else 1.5, rows)

    logit = (
        -3.0
        + 2.0 * (contract == "month-to-month")
        - 1.4 * (contract == "two-year")
        + 1.0 * (internet == "fiber")
        + 0.8 * (payment == "electronic-check")
        + 0.45 * support
        - 0.05 * tenure
        + 0.02 * (monthly - 60)
        - 0.015 * (age - 45)
    )
    churned = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(int)

    df = pd.DataFrame(
        {
            ENTITY: np.char.add("C", np.char.zfill((owner + 1).astype(str), 6)).astype(object),
            EVENT_TIME: event_time_text(pd.Series(times).dt.tz_localize("UTC")).to_numpy(),
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_calls": support,
            "age": age.astype(float),
            "contract": contract,
            "payment_method": payment,
            "internet_service": internet,
            TARGET: churned,
        }
    ).iloc[np.lexsort((owner, times))]  # by time, then customer
    df = df.reset_index(drop=True)
    # missing values: a few new customers have no total yet, some ages and payment methods unknown
    df.loc[rng.uniform(size=rows) < 0.02, "total_charges"] = np.nan
    df.loc[rng.uniform(size=rows) < 0.03, "age"] = np.nan
    df.loc[rng.uniform(size=rows) < 0.02, "payment_method"] = np.nan
    df["age"] = df["age"].astype("Int64")
    return df[columns()]


def event_time_text(times: pd.Series) -> pd.Series:
    """Times (tz-aware) as the canonical CSV text of ``EVENT_TIME``: ISO-8601 in UTC with a "Z",
    to the second, or to the microsecond for a time with a fraction of a second."""
    utc = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    whole = utc.astype("datetime64[s]")
    text = np.where(
        utc == whole, np.datetime_as_string(whole, unit="s"), np.datetime_as_string(utc, unit="us")
    )
    return pd.Series(np.char.add(text, "Z").astype(object), index=times.index)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` as the canonical CSV (stable bytes: the DVC md5 depends on them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)


def read_csv(path: Path | str) -> pd.DataFrame:
    """The CSV at ``path`` as a data frame, its ids as strings (pandas' errors pass through)."""
    return pd.read_csv(path, dtype={ENTITY: str})
