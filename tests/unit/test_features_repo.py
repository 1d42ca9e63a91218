"""The feature repository (feature_repo/, mlstack.features.repo): its definitions are the data
contract's, the store is the one the settings name, and the view's version follows its
definition."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
from feast import Field
from feast.types import Float64, String

from mlstack import schema
from mlstack.errors import StackError
from mlstack.features import repo
from mlstack.settings import code_root, load_settings

REPO = code_root() / "feature_repo"


def load_definitions(monkeypatch: pytest.MonkeyPatch, source: Path):
    """feature_repo/definitions.py as Feast's `feast apply` imports it."""
    monkeypatch.setenv("MLSTACK_FEAST_SOURCE", str(source))
    spec = importlib.util.spec_from_file_location(
        "feature_repo_definitions", REPO / "definitions.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_definitions_are_the_data_contracts(monkeypatch, tmp_path):
    defs = load_definitions(monkeypatch, tmp_path / "src.parquet")
    assert repo.drift(defs.customer, defs.customer_features) == []
    assert defs.customer.join_key == schema.ENTITY == "customer_id"
    assert defs.customer_features.name == repo.FEATURE_VIEW
    assert defs.customer_source.path == str(tmp_path / "src.parquet")
    assert defs.customer_features.batch_source.timestamp_field == schema.EVENT_TIME
    types = {f.name: str(f.dtype) for f in defs.customer_features.schema}
    assert types["tenure_months"] == "Int64" and types["monthly_charges"] == "Float64"
    assert types["contract"] == "String"
    assert repo.feature_refs() == [f"customer_features:{n}" for n in schema.feature_names()]


def test_drift_between_the_view_and_the_contract_is_found(monkeypatch, tmp_path):
    customer, _, view = repo.definitions(str(tmp_path / "src.parquet"))
    fields = [f for f in view.schema if f.name != "age"]
    retyped = [Field(name=f.name, dtype=String) if f.name == "tenure_months" else f for f in fields]
    edited = view.__copy__()
    edited.features = [*retyped, Field(name="region", dtype=String)]
    assert sorted(repo.drift(customer, edited)) == [
        "age: in mlstack.schema, not in the view",
        "region: in the view, not in mlstack.schema",
        "tenure_months: String in the view, Int64 in mlstack.schema",
    ]
    # the contract gains a feature the checked-in definitions do not know: generated, they do
    gained = (*schema.FEATURES, schema.Feature("region", "categorical", "str"))
    monkeypatch.setattr(schema, "FEATURES", gained)
    monkeypatch.setattr(repo, "FEATURES", gained)
    assert repo.drift(customer, view) == ["region: in mlstack.schema, not in the view"]
    assert repo.drift(*repo.definitions(str(tmp_path / "s.parquet"))[::2]) == []


def test_the_view_version_follows_its_definition_not_its_source(tmp_path):
    _, _, view = repo.definitions(str(tmp_path / "a.parquet"))
    _, _, elsewhere = repo.definitions("s3://bucket/features/a.parquet")
    assert repo.view_version(view) == repo.view_version(elsewhere)
    assert len(repo.view_version(view)) == 16
    retyped = view.__copy__()
    retyped.features = [
        Field(name=f.name, dtype=Float64) if f.name == "age" else f for f in view.schema
    ]
    assert repo.view_version(retyped) != repo.view_version(view)


def test_open_store_is_the_embedded_default_under_the_state_dir(tmp_path):
    settings = load_settings(state_dir=tmp_path / "state")
    store = repo.open_store(settings)
    feast_dir = tmp_path / "state" / "feast"
    assert store.config.online_store.type == "sqlite"
    assert store.config.online_store.path == str(feast_dir / "online.db")
    assert store.config.registry.path == str(feast_dir / "registry.db")
    assert store.config.offline_store.type == "file"
    assert feast_dir.is_dir()
    assert settings.feature_source == str(feast_dir / "customer_features.parquet")
    # nothing in a tracked folder
    assert not (REPO / "data").exists() and not list(REPO.glob("*.db"))


def test_open_store_reads_the_config_file_the_environment_names(monkeypatch, tmp_path):
    other = tmp_path / "feature_store.other.yaml"
    other.write_text(
        "project: other_project\nprovider: local\n"
        "registry: ${REGISTRY_FROM_ENV}\n"
        "online_store:\n  type: sqlite\n  path: ${MLSTACK_FEAST_DIR}/o.db\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
    )
    monkeypatch.setenv("MLSTACK_FEAST_CONFIG", str(other))
    monkeypatch.setenv("REGISTRY_FROM_ENV", str(tmp_path / "reg.db"))
    store = repo.open_store(load_settings(state_dir=tmp_path / "s"))
    assert store.project == "other_project"
    assert store.config.registry.path == str(tmp_path / "reg.db")
    assert store.config.online_store.path == str(tmp_path / "s" / "feast" / "o.db")

    monkeypatch.setenv("MLSTACK_FEAST_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(StackError, match="cannot read the feature store config"):
        repo.open_store(load_settings())
    other.write_text("project: [unclosed\n")
    monkeypatch.setenv("MLSTACK_FEAST_CONFIG", str(other))
    with pytest.raises(StackError, match="invalid feature store config"):
        repo.open_store(load_settings())


def test_apply_registers_the_generated_view_once(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    store = repo.open_store(settings)
    for _ in range(2):
        repo.apply(store, settings.feature_source)
    views = store.list_feature_views()
    assert [v.name for v in views] == [repo.FEATURE_VIEW]
    assert [e.name for e in store.list_entities()] == [repo.ENTITY_NAME]
    assert repo.drift(store.get_entity(repo.ENTITY_NAME), views[0]) == []
    assert repo.view_version(views[0]) == repo.view_version(repo.definitions("x")[2])


def test_a_contract_feature_type_maps_to_feasts(monkeypatch):
    assert [str(repo.feast_type(f)) for f in schema.FEATURES] == [
        {"int": "Int64", "float": "Float64", "str": "String"}[f.dtype] for f in schema.FEATURES
    ]
    assert str(repo.feast_type(replace(schema.FEATURES[0], dtype="float"))) == "Float64"
