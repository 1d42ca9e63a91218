"""The Feast repository: definitions generated from ``mlstack.schema``, and the store.

One schema: the ``customer_features`` view's fields are the contract's features in contract order
(ints as Int64, floats as Float64, categories as String), keyed by the ``customer`` entity on
``schema.ENTITY`` with ``schema.EVENT_TIME`` as the event time. ``open_store`` opens the store the
settings name: the embedded default ``feature_repo/feature_store.yaml`` (its files under
``<state dir>/feast``) or the file ``MLSTACK_FEAST_CONFIG`` names (the cluster's).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlstack.errors import StackError
from mlstack.schema import ENTITY, EVENT_TIME, FEATURES, Feature
from mlstack.settings import Settings, load_settings

if TYPE_CHECKING:
    from feast import Entity, FeatureStore, FeatureView, FileSource

FEATURE_VIEW = "customer_features"
ENTITY_NAME = "customer"
SOURCE_NAME = "customer_features_source"
# long enough that every snapshot of the data joins: a label's features are the customer's latest
# snapshot at or before the label's time, however old
TTL = timedelta(days=3650)
# the Feast type of each contract dtype (missing values stay missing: Feast's types are nullable)
FEAST_TYPES = {"int": "Int64", "float": "Float64", "str": "String"}
# the variable feature_store.yaml names the embedded store's directory by
DIR_VARIABLE = "MLSTACK_FEAST_DIR"


def feature_refs() -> list[str]:
    """``customer_features:<name>`` for each contract feature, in contract order."""
    return [f"{FEATURE_VIEW}:{f.name}" for f in FEATURES]


def feast_type(feature: Feature) -> Any:
    """The ``feast.types`` type of a contract feature."""
    from feast import types

    return getattr(types, FEAST_TYPES[feature.dtype])


def definitions(source_path: str) -> tuple[Entity, FileSource, FeatureView]:
    """The entity, the Parquet source at ``source_path`` and the feature view, from the contract."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType

    customer = Entity(
        name=ENTITY_NAME,
        join_keys=[ENTITY],
        value_type=ValueType.STRING,
        description="A customer, by its id (schema.ENTITY).",
    )
    source = FileSource(name=SOURCE_NAME, path=source_path, timestamp_field=EVENT_TIME)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[customer],
        ttl=TTL,
        schema=[Field(name=f.name, dtype=feast_type(f)) for f in FEATURES],
        source=source,
        online=True,
        description="The churn model's inputs, one row per customer snapshot (mlstack.schema).",
    )
    return customer, source, view


def view_version(view: FeatureView) -> str:
    """A version of a feature view's definition: the sha256 (first 16 hex digits) of its name,
    entities, TTL, event time field and fields with their types (by name: Feast does not keep
    their order). The source's location is not part of it (the cluster reads another file)."""
    definition = {
        "name": view.name,
        "entities": sorted(view.entities),
        "ttl_seconds": int(view.ttl.total_seconds()) if view.ttl else 0,
        "timestamp_field": view.batch_source.timestamp_field if view.batch_source else "",
        "fields": sorted([f.name, str(f.dtype)] for f in view.schema if f.name != ENTITY),
    }
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drift(entity: Entity, view: FeatureView) -> list[str]:
    """How a feature view differs from the data contract, one phrase each (empty when it does
    not): a contract feature it lacks or types otherwise, a field the contract does not have, a
    join key or event time that is not the contract's."""
    found: list[str] = []
    fields = {f.name: str(f.dtype) for f in view.schema if f.name != ENTITY}
    for f in FEATURES:
        want = str(feast_type(f))
        if f.name not in fields:
            found.append(f"{f.name}: in mlstack.schema, not in the view")
        elif fields[f.name] != want:
            found.append(f"{f.name}: {fields[f.name]} in the view, {want} in mlstack.schema")
    known = {f.name for f in FEATURES}
    found += [f"{name}: in the view, not in mlstack.schema" for name in fields if name not in known]
    if entity.join_key != ENTITY or view.entities != [entity.name]:
        found.append(f"keyed by {view.entities} on {entity.join_key!r}, not on {ENTITY!r}")
    timestamp = view.batch_source.timestamp_field if view.batch_source else ""
    if timestamp != EVENT_TIME:
        found.append(f"event time {timestamp!r}, not {EVENT_TIME!r}")
    return found


def _substitute(text: str, values: dict[str, str]) -> str:
    """``${NAME}`` replaced by ``values[NAME]``; an unknown name is left as it is."""
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def open_store(settings: Settings | None = None) -> FeatureStore:
    """The ``feast.FeatureStore`` of ``settings.feast_config_file``: ``${MLSTACK_FEAST_DIR}``
    in it is ``settings.feast_dir`` (made if missing), any other ``${NAME}`` the environment's
    (credentials of the cluster's stores). ``StackError`` for a missing or invalid file."""
    from feast import FeatureStore, RepoConfig
    from pydantic import ValidationError

    settings = settings or load_settings()
    path = settings.feast_config_file
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(f"cannot read the feature store config {path}: {exc.strerror}") from None
    directory = settings.feast_dir
    values = {**os.environ, DIR_VARIABLE: str(directory)}
    try:
        raw = yaml.safe_load(_substitute(text, values))
        config = RepoConfig(**raw)
    except (yaml.YAMLError, TypeError, ValidationError) as exc:
        first = str(exc).strip().splitlines()
        raise StackError(
            f"invalid feature store config {path}: {first[0] if first else exc}"
        ) from None
    if DIR_VARIABLE in text:
        directory.mkdir(parents=True, exist_ok=True)
    config.repo_path = path.parent
    return FeatureStore(config=config, repo_path=str(path.parent))


def apply(store: FeatureStore, source_path: str) -> FeatureView:
    """Register the definitions (source at ``source_path``) in the store's registry; idempotent.
    Returns the feature view."""
    customer, _source, view = definitions(source_path)
    store.apply([customer, view])
    return view


def repo_dir() -> Path:
    """``feature_repo/``: the Feast project folder (its README, configs and definitions)."""
    from mlstack.settings import code_root

    return code_root() / "feature_repo"
