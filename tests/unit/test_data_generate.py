from pathlib import Path

import pandas as pd

from mlstack.data import generate
from mlstack.schema import ENTITY, EVENT_TIME, TARGET, columns


def test_same_seed_same_bytes(tmp_path: Path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    generate.write_csv(generate.generate(500, 11), a)
    generate.write_csv(generate.generate(500, 11), b)
    assert a.read_bytes() == b.read_bytes()
    generate.write_csv(generate.generate(500, 12), b)
    assert a.read_bytes() != b.read_bytes()


def test_shape_missing_values_and_imbalance():
    df = generate.generate(3000, 1)
    assert list(df.columns) == columns()
    assert df[["total_charges", "age", "payment_method"]].isna().any().all()
    assert 0.1 < df[TARGET].mean() < 0.4


def test_drifted_batch_moves_the_population():
    base, drifted = generate.generate(3000, 1), generate.generate(3000, 1, drift=True)
    assert drifted["monthly_charges"].mean() > base["monthly_charges"].mean() + 10
    assert drifted["support_calls"].mean() > base["support_calls"].mean() + 1
    share = (drifted["contract"] == "month-to-month").mean()
    assert share > (base["contract"] == "month-to-month").mean() + 0.1


def test_rows_are_customer_snapshots_in_time_order():
    df = generate.generate(4000, 5)
    assert len(df) == 4000
    assert df[ENTITY].str.fullmatch(r"C\d{6}").all()
    times = pd.to_datetime(df[EVENT_TIME], format="ISO8601", utc=True)
    assert df[EVENT_TIME].str.endswith("Z").all() and times.is_monotonic_increasing
    assert times.min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert times.max() < pd.Timestamp("2026-01-01", tz="UTC")
    assert times.max() - times.min() > pd.Timedelta(days=300)  # spread over months
    assert not df.duplicated([ENTITY, EVENT_TIME]).any()
    snapshots = df.groupby(ENTITY).size()
    assert set(snapshots) == {1, 2, 3}
    assert 0.10 < (snapshots > 1).mean() < 0.20  # ~15% of the customers come back


def test_a_returning_customer_changes_and_has_labels_of_its_own():
    df = generate.generate(4000, 5)
    several = df[df.groupby(ENTITY)[ENTITY].transform("size") > 1].copy()
    several["t"] = pd.to_datetime(several[EVENT_TIME], utc=True)
    several = several.sort_values([ENTITY, "t"])
    first, later = several.groupby(ENTITY).nth(0), several.groupby(ENTITY).nth(1)
    first, later = first.set_index(ENTITY), later.set_index(ENTITY)
    gap = later["t"] - first["t"]
    assert gap.min() >= pd.Timedelta(days=30) and gap.max() <= pd.Timedelta(days=120)
    assert (later["tenure_months"] >= first["tenure_months"]).all()
    assert (later["tenure_months"] > first["tenure_months"]).mean() > 0.9
    assert (later["monthly_charges"] != first["monthly_charges"]).mean() > 0.8
    assert (later["support_calls"] != first["support_calls"]).mean() > 0.3
    for name in ("contract", "internet_service"):  # the customer's own
        assert (later[name] == first[name]).all()
    assert (later[TARGET] != first[TARGET]).any()


def test_a_drifted_batch_lies_in_the_year_after():
    drifted = generate.generate(500, 1, drift=True)
    times = pd.to_datetime(drifted[EVENT_TIME], utc=True)
    assert times.min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert times.max() < pd.Timestamp("2027-01-01", tz="UTC")


def test_any_row_count_is_exact():
    for rows in (1, 2, 3, 7, 200):
        df = generate.generate(rows, rows)
        assert len(df) == rows and not df.duplicated([ENTITY, EVENT_TIME]).any()
