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
from mlstack.monitor.production_data import from_production, labelled_rows, row_keys
from mlstack.schema import ENTITY, EVENT_TIME, TARGET, columns, feature_names
from tests.conftest import SMALL_ROWS, git
from tests.support.cli import run_cli

ENV = "ml-production"
START = datetime(2026, 10, 1, tzinfo=UTC)


def captured_frame(rows: pd.DataFrame, *, prefix: str, start: datetime = START) -> pd.DataFrame:
    """``rows`` (data rows, ``columns()``) as captured one-instance requests of ENV, an hour apart
    from ``start``, with ids ``<prefix>-<n>`` (the capture contract's columns)."""
    n = len(rows)
    rng = np.random.default_rng(n)
    frame = rows[feature_names()].reset_index(drop=True).copy()
    for name in ("tenure_months", "support_calls", "age"):
        frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    frame.insert(0, "id", [f"{prefix}-{i:05d}" for i in range(n)])
    frame.insert(1, "row", 0)
    frame.insert(2, "model_name", "churn-classifier")
    frame.insert(3, "model_version", "1")
    frame.insert(4, "environment", ENV)
    frame.insert(5, "received_at", [start + timedelta(hours=i) for i in range(n)])
    frame["score"] = rng.uniform(size=n)
    frame["prediction"] = (frame["score"] >= 0.5).astype(int)
    return frame


def as_captured(rows: pd.DataFrame, *, prefix: str, start: datetime = START) -> pd.DataFrame:
    """The data rows ``capture_and_label(rows, prefix=prefix)`` should give: the request id as
    customer id, the request's time as event time."""
    keys = {
        ENTITY: [f"{prefix}-{i:05d}" for i in range(len(rows))],
        EVENT_TIME: [
            (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(len(rows))
        ],
    }
    return rows.reset_index(drop=True).assign(**keys)[columns()]


def capture_and_label(
    state: Path, rows: pd.DataFrame, *, prefix: str, start: datetime = START
) -> None:
    """Capture ``rows`` (``captured_frame``) through the capture module, and store their target
    as labels."""
    n = len(rows)
    frame = captured_frame(rows, prefix=prefix, start=start)
    ids = frame["id"].tolist()
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
    # 200 labelled rows an earlier run added are read again, among 300 new ones
    seen = generate.generate(200, 20)
    capture_and_label(state, seen, prefix="seen")
    assert run(data_repo, state).added == 200
    old_bytes = (data_repo / "data/churn.csv").read_bytes()
    head = git(data_repo, "rev-parse", "HEAD")
    new = generate.generate(300, 21, drift=True)
    capture_and_label(state, new, prefix="new", start=START + timedelta(days=30))

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
    assert len(got) == SMALL_ROWS + 200 + 300
    assert list(row_keys(got.iloc[SMALL_ROWS + 200 :])) == list(
        row_keys(as_captured(new, prefix="new", start=START + timedelta(days=30)))
    )
    assert got[ENTITY].iloc[-1] == "new-00299"
    assert got[EVENT_TIME].iloc[-1] == "2026-11-12T11:00:00Z"  # the request's time, in UTC
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
    captured = as_captured(generate.generate(300, 22), prefix="a")
    expected = pd.concat([before, captured], ignore_index=True).iloc[-1000:]
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
    # the same time in another notation is the same row; another customer or time is not
    when = pd.to_datetime(rows[EVENT_TIME], utc=True)
    as_berlin = rows.assign(**{EVENT_TIME: when.dt.tz_convert("Europe/Berlin").map(str)})
    assert list(row_keys(as_berlin)) == list(row_keys(rows))
    assert list(row_keys(rows.assign(**{EVENT_TIME: when}))) == list(row_keys(rows))
    moved = rows.copy()
    moved.loc[4, EVENT_TIME] = "2030-01-01T00:00:00Z"
    moved.loc[5, ENTITY] = "C999999"
    assert (row_keys(rows) != row_keys(moved)).sum() == 2


def test_captured_rows_are_keyed_by_the_carried_customer_or_the_request():
    rows = generate.generate(4, 26)
    frame = captured_frame(rows, prefix="r").astype({"row": "int32"})
    # r-00001 held three instances (rows 0..2); r-00002 carries its customer's id, r-00003 a blank
    frame.loc[[1, 2, 3], "id"] = "r-00001"
    frame.loc[[1, 2, 3], "row"] = [0, 1, 2]
    frame.loc[[1, 2, 3], "received_at"] = frame.loc[1, "received_at"]
    frame.loc[0, "received_at"] = pd.Timestamp("2026-10-01T02:30:00.25+02:00")
    truth = pd.DataFrame({"id": frame["id"], "row": frame["row"], "label": rows[TARGET]})
    truth["labelled_at"] = pd.Timestamp("2026-11-20", tz="UTC")
    got = labelled_rows(frame, truth)
    assert list(got.columns) == columns()
    assert got[ENTITY].tolist() == ["r-00000", "r-00001", "r-00001#1", "r-00001#2"]
    assert got[EVENT_TIME].tolist() == [
        "2026-10-01T00:30:00.250000Z",
        *["2026-10-01T01:00:00Z"] * 3,
    ]
    carried = frame.assign(**{ENTITY: ["C000042", None, " ", "C000007"]})
    got = labelled_rows(carried, truth)
    assert got[ENTITY].tolist() == ["C000042", "r-00001", "r-00001#1", "C000007"]
    assert got[feature_names()].astype(str).values.tolist() == (
        rows[feature_names()].astype(str).values.tolist()
    )


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
