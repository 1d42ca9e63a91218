"""The captured-record contract (mlstack.monitor.capture): written parts read back as written."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlstack.data import generate
from mlstack.errors import StackError
from mlstack.monitor import capture


def _rows(n: int, *, env: str = "ml-staging", at: str = "2026-11-30T23:59:59Z") -> pd.DataFrame:
    frame = generate.generate(n, seed=3).drop(columns=["churned"])
    frame["id"] = [f"req-{i // 2}" for i in range(n)]
    frame["row"] = [i % 2 for i in range(n)]
    frame["model_name"] = "churn-classifier"
    frame["model_version"] = "4"
    frame["environment"] = env
    frame["received_at"] = pd.Timestamp(at)
    frame["score"] = [0.9 if i % 3 else None for i in range(n)]
    frame["prediction"] = [1 if i % 3 else 0 for i in range(n)]
    return frame


def test_a_batch_reads_back_with_the_contract_columns_partitioned_by_environment_and_day(
    tmp_path: Path,
) -> None:
    staging = _rows(6)
    production = _rows(4, env="ml-production", at="2026-12-01T00:00:01Z")
    paths = capture.write_captures(tmp_path, pd.concat([staging, production]))
    assert sorted(Path(p).relative_to(tmp_path).parent.as_posix() for p in paths) == [
        "ml-production/churn-classifier/date=2026-12-01",
        "ml-staging/churn-classifier/date=2026-11-30",
    ]
    assert not list(tmp_path.rglob(".*.tmp"))

    back = capture.read_captures(tmp_path)
    assert list(back.columns) == list(capture.COLUMNS)
    assert len(back) == 10
    assert str(back["received_at"].dt.tz) == "UTC"
    only = capture.read_captures(tmp_path, environment="ml-staging")
    assert list(only["id"]) == list(staging["id"]) and list(only["row"]) == list(staging["row"])
    assert only["tenure_months"].tolist() == staging["tenure_months"].tolist()
    assert (
        only["score"].isna().sum() == 2
        and only["prediction"].tolist() == staging["prediction"].tolist()
    )
    later = capture.read_captures(tmp_path, since=datetime(2026, 12, 1, tzinfo=UTC))
    assert set(later["environment"]) == {"ml-production"}


def test_no_captures_is_an_empty_frame_with_the_contract_columns(tmp_path: Path) -> None:
    assert list(capture.read_captures(tmp_path / "none").columns) == list(capture.COLUMNS)


@pytest.mark.parametrize("env", ["../etc", "ML", "a/b", "-x", ""])
def test_an_environment_that_is_not_a_kubernetes_name_never_becomes_a_path(
    tmp_path: Path, env: str
) -> None:
    with pytest.raises(StackError, match="not a Kubernetes name"):
        capture.write_captures(tmp_path, _rows(2, env=env))
    assert not any(tmp_path.iterdir())


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"lack column\(s\) \['score'\]"):
        capture.write_captures(tmp_path, _rows(2).drop(columns=["score"]))


def test_rows_written_twice_read_back_once(tmp_path: Path) -> None:
    capture.write_captures(tmp_path, _rows(4))
    capture.write_captures(tmp_path, _rows(4))
    assert len(capture.read_captures(tmp_path)) == 4
