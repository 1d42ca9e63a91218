"""Training sets through Feast (mlstack.features.training): each label gets its customer's
features as of the label's time; a value recorded later never reaches training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from mlstack.data.generate import generate, read_csv, write_csv
from mlstack.errors import StackError
from mlstack.features import repo, sources
from mlstack.features.training import entity_frame, historical, training_set
from mlstack.schema import ENTITY, EVENT_TIME, TARGET, columns
from mlstack.settings import load_settings


def row(customer: str, time: str, tenure: int, charges: float, contract: str, label: int) -> dict:
    return {
        ENTITY: customer,
        EVENT_TIME: time,
        "tenure_months": tenure,
        "monthly_charges": charges,
        "total_charges": charges * tenure,
        "support_calls": 1,
        "age": 40,
        "contract": contract,
        "payment_method": "card",
        "internet_service": "dsl",
        TARGET: label,
    }


def test_a_future_feature_value_never_reaches_training(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    labelled = pd.DataFrame(
        [
            row("C000001", "2026-01-05T00:00:00Z", 3, 50.0, "month-to-month", 1),
            row("C000002", "2026-02-01T12:00:00Z", 24, 80.0, "two-year", 0),
        ]
    )
    planted = pd.DataFrame(
        [
            # the same customer, later, with other values: recorded after the label's time
            row("C000001", "2026-01-05T00:00:01Z", 99, 999.0, "two-year", 0),
            row("C000001", "2026-06-01T00:00:00Z", 98, 998.0, "one-year", 0),
            # a customer first seen after its label's time
            row("C000003", "2026-03-01T00:00:00Z", 7, 70.0, "one-year", 0),
        ]
    )
    source = sources.source_frame(pd.concat([labelled, planted], ignore_index=True))
    sources.write_source(source, settings.feature_source)
    store: FeatureStore = repo.open_store(settings)
    repo.apply(store, settings.feature_source)
    entities = entity_frame(
        pd.concat([labelled, planted.iloc[[2]].assign(**{EVENT_TIME: "2026-02-15T00:00:00Z"})])
    )
    got = historical(store, entities)

    assert list(got.columns) == columns()
    assert got[ENTITY].tolist() == ["C000001", "C000002", "C000003"]
    assert got[EVENT_TIME].tolist() == [
        "2026-01-05T00:00:00Z", "2026-02-01T12:00:00Z", "2026-02-15T00:00:00Z"
    ]  # fmt: skip
    first = got.iloc[0]
    assert (first["tenure_months"], first["monthly_charges"], first["contract"]) == (
        3, 50.0, "month-to-month"
    )  # fmt: skip
    assert not got.isin([99, 98, 999.0, 998.0]).any().any()
    # nothing recorded at or before its label's time: no features at all, not the future ones
    assert got.iloc[2][["tenure_months", "monthly_charges", "contract"]].isna().all()
    assert got[TARGET].tolist() == [1, 0, 0]

    # a label after the later snapshot gets the later values
    later = entity_frame(pd.DataFrame([row("C000001", "2026-07-01T00:00:00Z", 0, 0.0, "x", 1)]))
    assert historical(store, later).iloc[0]["tenure_months"] == 98


def test_the_training_set_of_a_data_version_is_its_rows(tmp_path):
    data = generate(rows=400, seed=3)
    original = tmp_path / "data.csv"
    write_csv(data, original)
    out = tmp_path / "train.csv"
    settings = load_settings(state_dir=tmp_path / "state")
    source_md5, views = training_set(read_csv(original), out, settings=settings)
    # each label's own snapshot is the latest at its time: the CSV comes back byte for byte
    assert out.read_bytes() == original.read_bytes()
    assert len(source_md5) == 32
    view = repo.definitions("x")[2]
    assert views == f"customer_features@{repo.view_version(view)}"
    written = pd.read_parquet(settings.feature_source)
    assert written[EVENT_TIME].dt.tz is not None and len(written) == 400
    assert str(written["age"].dtype) == "Int64" and written["age"].isna().any()


def test_a_source_without_keys_or_with_a_bad_time_is_refused():
    data = generate(rows=50, seed=1)
    with pytest.raises(StackError, match=r"no column\(s\) \['customer_id'\]"):
        sources.source_frame(data.drop(columns=[ENTITY]))
    bad = data.assign(**{EVENT_TIME: data[EVENT_TIME].where(data.index != 4, "2026-01-05")})
    with pytest.raises(StackError, match="of row 5 is not an ISO-8601 time in UTC"):
        sources.source_frame(bad)


def test_write_source_replaces_the_file_and_reports_its_md5(tmp_path):
    frame = sources.source_frame(generate(rows=50, seed=1))
    path = tmp_path / "a" / "src.parquet"
    first = sources.write_source(frame, str(path))
    again = sources.write_source(frame.iloc[:10], str(path))
    assert first != again and len(pd.read_parquet(path)) == 10
    assert [p.name for p in path.parent.iterdir()] == ["src.parquet"]
    assert isinstance(Path(path).stat().st_size, int)


def test_a_data_version_breaking_the_contract_is_refused_before_the_store(tmp_path):
    data = generate(rows=400, seed=3).astype({"monthly_charges": object})
    data.loc[3, "monthly_charges"] = "unknown"
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(StackError, match="column 'monthly_charges': dtype"):
        training_set(data, tmp_path / "out.csv", settings=settings)
    assert not Path(settings.feature_source).exists() and not (tmp_path / "out.csv").exists()
