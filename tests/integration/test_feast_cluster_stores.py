"""Feast on the cluster's stores, for real on 127.0.0.1: feature_repo/feature_store.cluster.yaml
(chosen by MLSTACK_FEAST_CONFIG, its endpoints and credentials from the environment as the
feast-store Secret gives them) with Debian's ``redis-server`` as the online store and the SQL
registry in a ``feast`` database made by the dev Postgres's init script
(manifests/platform/dev/feast-registry-init.sh) on the PostgreSQL the MLflow tests start
(tests/support/stand_ins.postgres). A DVC data version is materialized by the project's
materialize step, and what the online store answers for each customer is the offline source's
latest snapshot of that customer."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlstack.settings import code_root, load_settings
from tests.conftest import free_port
from tests.support.stand_ins import postgres, redis, redis_cli

pytestmark = pytest.mark.slow

ROOT = code_root()
CONFIG = ROOT / "feature_repo" / "feature_store.cluster.yaml"
INIT = ROOT / "manifests" / "platform" / "dev" / "feast-registry-init.sh"
PASSWORD = "test-redis-password"


@contextlib.contextmanager
def feast_database(root: Path) -> Iterator[str]:
    """The PostgreSQL stand-in with the `feast` database and owner made by the dev Postgres's
    init script, run as the Postgres image runs it (its superuser and database in POSTGRES_USER
    and POSTGRES_DB, the password in the Secret's file); yields the registry's URI as the
    feast-store Secret carries it. The stand-in trusts local connections, so the password is
    carried, not checked."""
    root.mkdir(parents=True)
    secret = root / "password"
    secret.write_text("test-feast-password")
    port = free_port()
    with postgres(port) as admin:
        env = {**os.environ, "POSTGRES_USER": "mlflow", "POSTGRES_DB": "postgres",
               "PGHOST": "127.0.0.1", "PGPORT": str(port), "FEAST_PASSWORD_FILE": str(secret)}  # fmt: skip
        done = subprocess.run(["sh", str(INIT)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert admin.endswith("/postgres")
        yield f"postgresql+psycopg://feast:test-feast-password@127.0.0.1:{port}/feast"


@pytest.fixture
def cluster_store(tmp_path, monkeypatch):
    """The cluster config opened by ``open_store`` with the stores' env set as the pods get it."""
    port = free_port()
    with redis(port, tmp_path / "redis", PASSWORD), feast_database(tmp_path / "pg") as registry:
        monkeypatch.setenv("MLSTACK_FEAST_CONFIG", str(CONFIG))
        monkeypatch.setenv("MLSTACK_FEAST_REGISTRY", registry)
        monkeypatch.setenv("MLSTACK_FEAST_REDIS", f"127.0.0.1:{port},password={PASSWORD}")
        yield port, registry


def test_cluster_config_materializes_into_redis_with_the_registry_on_postgres(
    cluster_store, data_repo, tmp_path
):
    import psycopg

    from mlstack.data.generate import read_csv
    from mlstack.features import repo
    from mlstack.features.materialize import materialize
    from mlstack.features.sources import source_frame
    from mlstack.schema import ENTITY, EVENT_TIME, FEATURES

    port, registry = cluster_store
    # the materialize step as `mlstack features materialize` runs it: the data version read
    # with DVC, its source written (MLSTACK_FEAST_SOURCE), applied and materialized
    settings = load_settings(state_dir=tmp_path / "state")
    assert settings.feast_config_file == CONFIG
    end = datetime.now(UTC)
    for _ in range(2):  # again: nothing changes
        materialize(str(data_repo), "data/churn.csv", "HEAD", settings=settings, now=end)
    frame = source_frame(read_csv(data_repo / "data" / "churn.csv"))
    assert frame[ENTITY].duplicated().any()  # some customers changed over time

    # the registry is in Postgres, in the feast database: a second client (the transformer's
    # role) opened from the same config sees the view the first one applied
    with psycopg.connect(registry.replace("+psycopg", "")) as conn:
        tables = {r[0] for r in conn.execute("select tablename from pg_tables where tableowner = 'feast'")}  # fmt: skip
    assert "feature_views" in tables, tables
    reader = repo.open_store(settings)
    [view] = reader.list_feature_views()
    assert view.name == repo.FEATURE_VIEW and repo.drift(reader.get_entity(repo.ENTITY_NAME), view) == []  # fmt: skip
    assert int(redis_cli(port, "dbsize", password=PASSWORD)) > 0
    assert "NOAUTH" in redis_cli(port, "dbsize")

    # online = the offline source's latest snapshot of each customer
    latest = frame.sort_values(EVENT_TIME).groupby(ENTITY).tail(1).set_index(ENTITY).sort_index()
    ids = latest.index.tolist()
    online = reader.get_online_features(
        features=repo.feature_refs(), entity_rows=[{ENTITY: i} for i in [*ids, "C-UNKNOWN"]]
    ).to_df()
    unknown = online[online[ENTITY] == "C-UNKNOWN"]
    assert unknown[[f.name for f in FEATURES]].isna().all(axis=None)
    got = online[online[ENTITY] != "C-UNKNOWN"].set_index(ENTITY).sort_index()
    assert got.index.tolist() == ids
    for f in FEATURES:
        want, have = latest[f.name], got[f.name]
        assert (want.isna().to_numpy() == have.isna().to_numpy()).all(), f.name
        present = want.notna().to_numpy()
        if f.dtype == "str":
            assert want[present].tolist() == have[present].tolist(), f.name
        else:
            pd.testing.assert_series_equal(
                want[present].astype("float64"), have[present].astype("float64"),
                check_names=False, rtol=1e-12,
            )  # fmt: skip
