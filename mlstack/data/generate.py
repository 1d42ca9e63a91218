"""A seeded generator of churn data, and of a drifted "new production batch".

The same seed, row count and drift flag always give the same bytes, so the dataset behind the
committed DVC pointer can be rebuilt on a fresh clone (see ``mlstack.data.versions.bootstrap``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlstack.schema import TARGET, columns


def generate(rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    """Tabular churn data: numeric and categorical features, missing values, ~20% positives.

    ``drift=True`` shifts the population the way a price rise would: higher charges, more support
    calls, more month-to-month contracts and fiber customers.

    Returns ``rows`` rows in the schema's column order; the same ``seed`` gives the same rows.
    Raises ``ValueError`` when ``rows`` is not positive.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    contract_p = [0.75, 0.15, 0.10] if drift else [0.55, 0.25, 0.20]
    contract = rng.choice(["month-to-month", "one-year", "two-year"], size=rows, p=contract_p)
    internet_p = [0.25, 0.60, 0.15] if drift else [0.40, 0.40, 0.20]
    internet = rng.choice(["dsl", "fiber", "none"], size=rows, p=internet_p)
    payment = rng.choice(
        ["card", "bank-transfer", "electronic-check", "mailed-check"],
        size=rows,
        p=[0.30, 0.25, 0.30, 0.15],
    ).astype(object)
    tenure = np.clip(rng.exponential(24.0, rows), 0, 72).astype(int)
    base = np.where(internet == "fiber", 85.0, np.where(internet == "dsl", 55.0, 25.0))
    monthly = np.round(base + rng.normal(0, 12, rows) + (15.0 if drift else 0.0), 2)
    monthly = np.clip(monthly, 18.0, 150.0)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.1, rows), 2)
    support = rng.poisson(3.0 if drift else 1.5, rows)
    age = np.clip(rng.normal(45, 15, rows), 18, 90).astype(int)

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
    )
    # missing values: a few new customers have no total yet, some ages and payment methods unknown
    df.loc[rng.uniform(size=rows) < 0.02, "total_charges"] = np.nan
    df.loc[rng.uniform(size=rows) < 0.03, "age"] = np.nan
    df.loc[rng.uniform(size=rows) < 0.02, "payment_method"] = np.nan
    df["age"] = df["age"].astype("Int64")
    return df[columns()]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` as the canonical CSV (stable bytes: the DVC md5 depends on them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)


def read_csv(path: Path | str) -> pd.DataFrame:
    """The CSV at ``path`` as a data frame (pandas' errors pass through)."""
    return pd.read_csv(path)
