import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlstack.data import generate
from mlstack.data.validate import DataValidationError, find_violations, validate_file


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return generate.generate(600, 3)


def rules(df: pd.DataFrame) -> set[tuple[str, str]]:
    return {(v.column, v.rule) for v in find_violations(df)}


def test_generated_data_is_valid(good):
    assert find_violations(good) == []


def test_missing_and_unexpected_columns(good):
    assert rules(good.drop(columns=["contract"]).assign(extra=1)) == {
        ("contract", "schema"),
        ("extra", "schema"),
    }


def test_text_in_numeric_column_names_column_and_value(good):
    bad = good.astype({"monthly_charges": object})
    bad.loc[5, "monthly_charges"] = "lots"
    [v] = find_violations(bad)
    assert (v.column, v.rule) == ("monthly_charges", "dtype")
    assert "'lots'" in v.detail


def test_fractional_value_in_int_column(good):
    assert rules(good.assign(support_calls=good["support_calls"] + 0.5)) == {
        ("support_calls", "dtype")
    }


def test_out_of_range_and_infinite(good):
    bad = good.copy()
    bad.loc[0, "tenure_months"] = -3
    bad.loc[1, "monthly_charges"] = np.inf
    assert rules(bad) == {("tenure_months", "range"), ("monthly_charges", "range")}


def test_too_many_missing_values(good):
    bad = good.copy()
    bad.loc[: len(bad) // 5, "total_charges"] = np.nan
    [v] = find_violations(bad)
    assert (v.column, v.rule) == ("total_charges", "missing")


def test_missing_not_allowed_at_all(good):
    bad = good.copy()
    bad.loc[0, "contract"] = None
    assert rules(bad) == {("contract", "missing")}


def test_unknown_category(good):
    bad = good.copy()
    bad.loc[0, "internet_service"] = "satellite"
    [v] = find_violations(bad)
    assert (v.column, v.rule) == ("internet_service", "categories")
    assert "satellite" in v.detail


def test_class_balance_and_labels(good):
    assert rules(good.assign(churned=0)) == {("churned", "class-balance")}
    assert rules(good.assign(churned=2)) == {("churned", "labels")}


def test_too_few_rows(good):
    assert ("*", "rows") in rules(good.head(50))


def test_validate_file_raises_naming_column_and_writes_report(good, tmp_path: Path):
    path, report = tmp_path / "d.csv", tmp_path / "report.json"
    good.drop(columns=["age"]).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="column 'age': schema: column missing"):
        validate_file(path, report)
    assert '"valid": false' in report.read_text()


def test_validate_file_rejects_unreadable_csv(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataValidationError, match="format"):
        validate_file(path)


def test_validate_file_returns_a_summary(good, tmp_path: Path):
    path = tmp_path / "d.csv"
    generate.write_csv(good, path)
    summary = validate_file(path)
    assert summary["rows"] == 600
    assert 0.1 < summary["positive_share"] < 0.5


def positives_only_in_training(rows: int = 200, test_size: float = 0.25, seed: int = 42):
    """``rows`` valid rows whose positives all fall on the train side of the pipeline's split."""
    from mlstack.schema import TARGET
    from mlstack.train.training import split

    pool = pd.read_csv(io.StringIO(generate.generate(3000, 11).to_csv(index=False)))  # as read
    train, _ = split(pool, test_size, seed)
    positives = train[train[TARGET] == 1].head(rows // 5)
    negatives = pool[pool[TARGET] == 0].head(rows - len(positives))
    return pd.concat([positives, negatives]).sample(frac=1, random_state=1)


@pytest.mark.reliability("held-out-split-lacks-a-class")
def test_data_whose_held_out_split_lacks_a_class_is_refused_naming_the_split(tmp_path: Path):
    from mlstack.train.training import split

    path = tmp_path / "small.csv"
    positives_only_in_training().to_csv(path, index=False)
    df = pd.read_csv(path)
    assert len(df) == 200 and find_violations(df) == []  # valid but for the split
    assert split(df, 0.25, 42)[1]["churned"].sum() == 0
    assert validate_file(path)["rows"] == 200  # without the split: what passed before
    with pytest.raises(DataValidationError) as err:
        validate_file(path, tmp_path / "report.json", test_size=0.25, split_seed=42)
    message = str(err.value)
    assert "column 'churned': split: the held-out split (test_size 0.25, split_seed 42" in message
    assert "no rows of class 1 (churned)" in message and "train split" not in message
    assert json.loads((tmp_path / "report.json").read_text())["violations"][0]["rule"] == "split"
    # another seed that gives both sides both classes is accepted
    assert validate_file(path, test_size=0.25, split_seed=7)["rows"] == 200


def test_training_refuses_such_data_in_one_line_instead_of_a_nan_metric(tmp_path: Path):
    from mlstack.errors import StackError
    from mlstack.train.training import HyperParams, TrainingLineage, train_and_log

    path = tmp_path / "small.csv"
    positives_only_in_training().to_csv(path, index=False)
    with pytest.raises(StackError, match="held-out split .* has no rows of class 1"):
        train_and_log(
            path,
            HyperParams(max_iter=5),
            lineage=TrainingLineage(),
            tracking_uri=f"sqlite:///{tmp_path / 'never.db'}",
            experiment_name="never",
            test_size=0.25,
            split_seed=42,
        )
    assert not (tmp_path / "never.db").exists()  # refused before any MLflow call


def test_keys_are_required(good):
    assert rules(good.drop(columns=["customer_id", "event_timestamp"])) == {
        ("customer_id", "schema"),
        ("event_timestamp", "schema"),
    }


def test_customer_ids_are_non_empty_strings(good):
    blank = good.copy()
    blank.loc[3, "customer_id"] = " "
    [v] = find_violations(blank)
    assert str(v) == "column 'customer_id': missing: 1 rows with an empty customer id"
    absent = good.copy()
    absent.loc[4, "customer_id"] = None
    assert str(find_violations(absent)[0]) == (
        "column 'customer_id': missing: 1 rows without a customer id"
    )
    [v] = find_violations(good.assign(customer_id=range(len(good))))
    assert str(v) == "column 'customer_id': dtype: expected a string id, got 0"


@pytest.mark.parametrize(
    "value",
    ["2025-01-01T00:00:00", "2025-13-01T00:00:00Z", "yesterday", "2025-01-01", "1735689600"],
)
def test_event_times_must_be_iso_8601_with_a_utc_offset(good, value):
    bad = good.copy()
    bad.loc[7, "event_timestamp"] = value
    [v] = find_violations(bad)
    assert (v.column, v.rule) == ("event_timestamp", "format")
    assert v.detail.startswith("1 rows not an ISO-8601 UTC time") and repr(value) in v.detail


def test_event_times_with_an_offset_or_as_utc_datetimes_are_accepted(good):
    shifted = good.copy()
    shifted.loc[7, "event_timestamp"] = "2025-06-01T02:30:00.250+02:00"
    assert find_violations(shifted) == []
    as_datetimes = good.assign(event_timestamp=pd.to_datetime(good["event_timestamp"], utc=True))
    assert find_violations(as_datetimes) == []
    naive = as_datetimes.assign(
        event_timestamp=as_datetimes["event_timestamp"].dt.tz_localize(None)
    )
    assert rules(naive) == {("event_timestamp", "format")}


def test_a_customer_has_at_most_one_row_per_time(good):
    bad = good.copy()
    # the same instant written two ways is still the same key
    bad.loc[9, ["customer_id", "event_timestamp"]] = [bad.loc[8, "customer_id"], "x"]
    when = pd.Timestamp(bad.loc[8, "event_timestamp"]).tz_convert("Europe/Berlin")
    bad.loc[9, "event_timestamp"] = when.isoformat()
    [v] = find_violations(bad)
    assert str(v).startswith(
        "column 'customer_id, event_timestamp': unique: 2 rows share a customer and time "
        f"with another row, e.g. {bad.loc[8, 'customer_id']!r} at "
    )
    # a customer's other snapshots, at other times, are fine
    assert good["customer_id"].duplicated().any() and find_violations(good) == []


def test_validate_file_reads_ids_as_text(good, tmp_path: Path):
    path = tmp_path / "d.csv"
    generate.write_csv(good.assign(customer_id=[f"{i:07d}" for i in range(len(good))]), path)
    assert validate_file(path)["rows"] == len(good)
    assert generate.read_csv(path)["customer_id"].iloc[1] == "0000001"
