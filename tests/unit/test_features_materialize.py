"""Materialization (mlstack.features.materialize, ``mlstack features materialize``): the latest
snapshot of each customer reaches the online store; a second run adds nothing; a snapshot of a
later data version appears at the next run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from mlstack.data import versions
from mlstack.data.generate import read_csv, write_csv
from mlstack.data.validate import event_times
from mlstack.features import repo
from mlstack.features.materialize import materialize
from mlstack.schema import ENTITY, EVENT_TIME, feature_names
from mlstack.settings import DEFAULTS, Settings
from tests.conftest import git
from tests.support.cli import run_cli


def online(store: FeatureStore, ids: list[str]) -> pd.DataFrame:
    rows = [{ENTITY: i} for i in ids]
    got = store.get_online_features(features=repo.feature_refs(), entity_rows=rows).to_df()
    return got[[ENTITY, *feature_names()]]


def latest(data: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    ordered = data.assign(_t=event_times(data[EVENT_TIME])).sort_values("_t")
    last = ordered.groupby(ENTITY).tail(1).set_index(ENTITY).loc[ids].reset_index()
    return last[[ENTITY, *feature_names()]]


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.astype(object).where(a.notna(), None).values.tolist() == (
        b.astype(object).where(b.notna(), None).values.tolist()
    )


@pytest.mark.slow
def test_materialize_is_incremental_and_idempotent(data_repo: Path, tmp_path: Path):
    settings = Settings(repo_root=data_repo, state_dir=tmp_path / "state")
    data = read_csv(data_repo / "data/churn.csv")
    last_time = event_times(data[EVENT_TIME]).max().to_pydatetime()
    t1 = last_time + timedelta(days=1)
    # customers with several snapshots: the online store holds the latest
    counts = data[ENTITY].value_counts()
    ids = [*counts[counts > 1].index[:3], *counts[counts == 1].index[:2]]

    first = materialize(str(data_repo), "data/churn.csv", "HEAD", settings=settings, now=t1)
    assert first.start is None and first.end == t1
    assert first.snapshots == len(data) and first.customers == data[ENTITY].nunique()
    assert first.data_md5 == versions.pointer_md5(data_repo / "data/churn.csv.dvc")
    store = repo.open_store(settings)
    before = online(store, ids)
    assert same(before, latest(data, ids))

    # again, later, nothing new: nothing added, the same values online
    t2 = t1 + timedelta(hours=1)
    again = materialize(str(data_repo), "data/churn.csv", "HEAD", settings=settings, now=t2)
    assert (again.start, again.snapshots, again.customers) == (t1, 0, 0)
    assert same(online(store, ids), before)

    # a new data version: one customer's later snapshot with other values
    changed = latest(data, ids[:1]).iloc[0].to_dict()
    new_row = {**data[data[ENTITY] == ids[0]].iloc[-1].to_dict(), "tenure_months": 119,
               "monthly_charges": 499.5, "contract": "two-year",
               EVENT_TIME: (t2 + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
    assert (changed["tenure_months"], changed["monthly_charges"]) != (119, 499.5)
    new_csv = tmp_path / "v2.csv"
    write_csv(pd.concat([data, pd.DataFrame([new_row])], ignore_index=True), new_csv)
    versions.add_version(data_repo, new_csv, data_path="data/churn.csv", message="v2")
    t3 = t2 + timedelta(hours=1)
    third = materialize(str(data_repo), "data/churn.csv", "HEAD", settings=settings, now=t3)
    assert (third.start, third.snapshots, third.customers) == (t2, 1, 1)
    assert third.git_sha == git(data_repo, "rev-parse", "HEAD")
    after = online(store, ids)
    assert after.iloc[0]["tenure_months"] == 119 and after.iloc[0]["monthly_charges"] == 499.5
    assert after.iloc[0]["contract"] == "two-year"
    assert same(after.iloc[1:], before.iloc[1:])


@pytest.mark.slow
def test_the_cli_materializes_the_committed_version_once(data_repo: Path, tmp_path: Path):
    env = {"MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(tmp_path / "state")}
    first = run_cli("features", "materialize", "-o", "json", env=env)
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    data = read_csv(data_repo / "data/churn.csv")
    assert got["snapshots"] == len(data) and got["start"] is None
    assert got["git_sha"] == git(data_repo, "rev-parse", "HEAD")
    second = run_cli("features", "materialize", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("materialized customer_features@")
    assert ": 0 snapshot(s) of 0 customer(s)" in second.stdout
    bad = run_cli("features", "materialize", "--data-rev", "no-such-rev", env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
    assert bad.stderr.count("\n") == 1
    assert datetime.fromisoformat(got["end"]) <= datetime.now(UTC)


def test_the_materialize_pipeline_is_one_uncached_step_with_the_data_secrets():
    from mlstack.pipeline.compile import read_ir
    from mlstack.settings import code_root

    spec, platform = read_ir(code_root() / "pipelines" / "materialize.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    assert list(tasks) == ["materialize"]
    assert tasks["materialize"]["cachingOptions"] == {}  # enableCache false is omitted
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"repo", "data_rev", "data_path"}
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {s["secretName"] for s in executor["exec-materialize"]["secretAsEnv"]}
    assert secrets == {DEFAULTS.dvc_secret, DEFAULTS.git_secret, DEFAULTS.feast_secret}
