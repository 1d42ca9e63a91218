"""Online features by entity id: what the serving transformer sends the predictor for a request
that carries only customer ids (``serving/transformer.py``), and what the consistency test compares
with the offline store.

``lookup(store, ids)`` asks the online store (a ``feast.FeatureStore``: SQLite on the embedded
default, Redis in the cluster) for the contract's features of each id, in one call. An id the
store has no row for is *unknown*: no feature of it carries an event timestamp. (SQLite answers
such an id ``NOT_FOUND`` for every feature; Feast 0.67's Redis store answers ``PRESENT`` with
empty values and a zero timestamp, so the status alone cannot tell.) A known customer whose
optional features are missing has its row's timestamp, with those values empty.
Values come back as the model's inputs take them: numbers as int or float, categories as str,
a missing value (null, or a NaN a float column carried) as None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlstack.schema import ENTITY, feature_names

# feast.protos.feast.serving.ServingService_pb2.FieldStatus.NOT_FOUND
_NOT_FOUND = 3


class OnlineStore(Protocol):
    """The part of ``feast.FeatureStore`` a look-up uses."""

    def get_online_features(
        self, features: list[str], entity_rows: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> Any: ...


@dataclass(frozen=True)
class OnlineFeatures:
    """The features of the requested ids, one row per id in request order (contract feature
    name -> value), and the ids the online store does not know (in request order, once each).
    ``rows`` holds None for an unknown id."""

    rows: list[dict[str, Any] | None]
    unknown: list[str]


def _value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def lookup(store: OnlineStore, ids: Sequence[str], refs: Sequence[str]) -> OnlineFeatures:
    """The online features ``refs`` (``feature_view:name``, the contract's features in contract
    order: ``mlstack.features.repo.feature_refs()``) of each id in ``ids`` (``ENTITY`` values),
    with one call to the store."""
    names = feature_names()
    by_ref = [ref.split(":", 1)[1] for ref in refs]
    if sorted(by_ref) != sorted(names):
        raise ValueError(f"feature refs {list(refs)} are not the contract's features {names}")
    if not ids:
        return OnlineFeatures([], [])
    response = store.get_online_features(
        features=list(refs), entity_rows=[{ENTITY: i} for i in ids]
    )
    proto = response.proto
    columns = {name: k for k, name in enumerate(proto.metadata.feature_names.val)}
    values = response.to_dict()
    found = [False] * len(ids)
    for name in by_ref:
        result = proto.results[columns[name]]
        for k, (status, stamp) in enumerate(
            zip(result.statuses, result.event_timestamps, strict=True)
        ):
            found[k] = found[k] or (
                status != _NOT_FOUND and (stamp.seconds != 0 or stamp.nanos != 0)
            )
    rows: list[dict[str, Any] | None] = [
        {name: _value(values[name][k]) for name in names} if found[k] else None
        for k in range(len(ids))
    ]
    unknown = list(dict.fromkeys(i for i, known in zip(ids, found, strict=True) if not known))
    return OnlineFeatures(rows, unknown)
