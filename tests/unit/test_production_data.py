"""Labelled captured predictions (written through the capture module, labelled through the label
store) become a new DVC data version in a real seeded repository: validated by the data contract,
rows already in the data not duplicated, the history window applied, committed like `data add`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlstack.data import generate, versions
from mlstack.data.validate import validate_file
from mlstack.errors import StackError
from mlstack.monitor import capture, labels
from mlstack.monitor.production_data import from_production, row_keys
from mlstack.schema import TARGET, columns, feature_names
from tests.conftest import SMALL_ROWS, git
from tests.support.cli import run_cli

ENV = "ml-production"
START = datetime(2026, 10, 1, tzinfo=UTC)


def capture_and_label(state: Path, rows: pd.DataFrame, *, prefix: str) -> None:
    """Capture ``rows`` (data rows, ``columns()``) as one-instance requests of ENV, an hour
    apart, through the capture module, and store their target as labels."""
    n = len(rows)
    rng = np.random.default_rng(n)
    frame = rows[feature_names()].reset_index(drop=True).copy()
    for name in ("tenure_months", "support_calls", "age"):
        frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    frame.insert(0, "id", ids)
    frame.insert(1, "row", 0)
    frame.insert(2, "model_name", "churn-classifier")
    frame.insert(3, "model_version", "1")
    frame.insert(4, "environment", ENV)
    frame.insert(5, "received_at", [START + timedelta(hours=i) for i in range(n)])
    frame["score"] = rng.uniform(size=n)
    frame["prediction"] = (frame["score"] >= 0.5).astype(int)
    capture.write_captures(state / "captures", frame)
    truth = pd.DataFrame(
        {"id": ids, "label": rows[TARGET].to_numpy(), "labelled_at": ["2026-11-20"] * n}
    )
    file = state / f"{prefix}-labels.csv"
    truth.to_csv(file, index=False)
    labels.add_labels(
        state / "labels", labels.read_label_file(file), capture.read_captures(state / "captures")
    )


def current(repo: Path) -> pd.DataFrame:
    return pd.read_csv(repo / "data/churn.csv")


def run(repo: Path, state: Path, *, max_rows: int = 20_000):
    return from_production(
        repo,
        data_path="data/churn.csv",
        captures_root=state / "captures",
        labels_store=state / "labels",
        environment=ENV,
        max_rows=max_rows,
        test_size=0.25,
        split_seed=42,
        message="data: labelled production rows",
    )


@pytest.mark.slow  # a seeded DVC repo, two DVC commands and a CLI run: ~15 s here
def test_labelled_production_rows_become_a_new_version_without_duplicates(
    data_repo: Path, tmp_path: Path
):
    state = tmp_path / "state"
    trained = current(data_repo)
    old_bytes = (data_repo / "data/churn.csv").read_bytes()
    head = git(data_repo, "rev-parse", "HEAD")
    new = generate.generate(300, 21, drift=True)
    # 200 rows the model trained on come back from production, labelled, among 300 new ones
    capture_and_label(state, trained.iloc[:200], prefix="seen")
    capture_and_label(state, new, prefix="new")

    done = run_cli(
        "data",
        "from-production",
        "--env",
        ENV,
        env={"MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(state)},
    )

    assert done.returncode == 0, done.stderr
    assert "300 labelled rows of ml-production added, 200 already in the data" in done.stdout
    assert git(data_repo, "rev-parse", "HEAD^") == head
    assert git(data_repo, "log", "-1", "--format=%s") == "data: labelled production rows"
    assert git(data_repo, "status", "--porcelain") == ""
    data = (data_repo / "data/churn.csv").read_bytes()
    assert data.startswith(old_bytes)  # the rows trained on keep their bytes
    got = current(data_repo)
    assert len(got) == SMALL_ROWS + 300
    assert list(row_keys(got.iloc[SMALL_ROWS:])) == list(row_keys(new))
    assert not row_keys(got).duplicated().any()
    # what the pipeline's ingest step reads at HEAD, and validates
    version = versions.read_version(
        str(data_repo), "data/churn.csv", rev="HEAD", out=tmp_path / "ingested.csv"
    )
    assert version.md5 == versions.pointer_md5(data_repo / "data/churn.csv.dvc")
    assert (tmp_path / "ingested.csv").read_bytes() == data
    validate_file(tmp_path / "ingested.csv", test_size=0.25, split_seed=42)

    # run again with nothing new: nothing changes
    again = run(data_repo, state)
    assert (again.added, again.duplicates) == (0, 500)
    assert git(data_repo, "rev-parse", "HEAD^") == head
    assert again.version.git_sha == git(data_repo, "rev-parse", "HEAD")


def test_history_accumulates_within_the_row_window(data_repo: Path, tmp_path: Path):
    state = tmp_path / "state"
    before = current(data_repo)
    capture_and_label(state, generate.generate(300, 22), prefix="a")

    got = run(data_repo, state, max_rows=1000)

    assert (got.added, got.dropped, got.rows) == (300, SMALL_ROWS + 300 - 1000, 1000)
    after = current(data_repo)
    # the oldest rows were dropped, the newest kept in order
    expected = pd.concat([before, generate.generate(300, 22)], ignore_index=True).iloc[-1000:]
    assert list(row_keys(after)) == list(row_keys(expected))


@pytest.mark.reliability("production-data-invalid-refused")
def test_rows_that_break_the_data_contract_are_refused_and_nothing_is_committed(
    data_repo: Path, tmp_path: Path
):
    state = tmp_path / "state"
    bad = generate.generate(300, 23)
    bad.loc[5, "monthly_charges"] = 900.0  # the contract's range is 0..500
    capture_and_label(state, bad, prefix="bad")
    head = git(data_repo, "rev-parse", "HEAD")
    data = (data_repo / "data/churn.csv").read_bytes()

    with pytest.raises(StackError, match=r"column 'monthly_charges': range: max 900 > 500"):
        run(data_repo, state)

    assert git(data_repo, "rev-parse", "HEAD") == head
    assert (data_repo / "data/churn.csv").read_bytes() == data
    assert git(data_repo, "status", "--porcelain") == ""


def test_no_labelled_predictions_is_one_error_line(tmp_path: Path):
    done = run_cli(
        "data",
        "from-production",
        "--env",
        "ml-staging",
        env={"MLSTACK_REPO_ROOT": str(tmp_path), "MLSTACK_STATE_DIR": str(tmp_path / "state")},
    )

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: no labelled captured predictions of environment 'ml-staging' (captures "
        f"{tmp_path / 'state' / 'captures'}, labels {tmp_path / 'state' / 'labels'}): add labels "
        "first ('mlstack labels add')"
    ]


def test_row_keys_are_the_same_whatever_the_dtypes_read():
    rows = generate.generate(50, 24)
    path_rows = rows.astype({"age": "float64"})  # as a CSV with a missing age reads it
    assert list(row_keys(rows)) == list(row_keys(path_rows))
    changed = rows.copy()
    changed.loc[3, TARGET] = 1 - changed.loc[3, TARGET]
    assert (row_keys(rows) != row_keys(changed)).sum() == 1
    assert list(rows.columns) == columns()


@pytest.mark.slow  # the whole local pipeline: 205 s on this loaded machine
def test_the_pipeline_trains_on_the_version_made_from_production(settings, tmp_path: Path):
    import io

    from mlstack.pipeline.local import run_pipeline

    state = tmp_path / "captured"
    capture_and_label(state, generate.generate(400, 25), prefix="p")
    made = run(settings.repo_root, state)
    assert made.added == 400

    summary = run_pipeline(settings, out=io.StringIO())

    assert (summary.git_sha, summary.data_md5) == (made.version.git_sha, made.version.md5)
    assert summary.model_version is not None  # a model trained on it was registered
