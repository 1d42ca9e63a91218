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
