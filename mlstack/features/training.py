"""Training sets through Feast: each label joined with its customer's features as of the label's
time (``get_historical_features``), so a value recorded after that time never reaches training.

``ingest`` is the pipeline's ingest step: the DVC data version at a git rev becomes the Parquet
source, the definitions are applied, and the training set is built from the entity frame (customer
id, label time = the row's ``EVENT_TIME``, label) and written as the contract's CSV.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mlstack.data.generate import event_time_text, read_csv, write_csv
from mlstack.data.validate import DataValidationError, event_times, find_violations
from mlstack.errors import StackError
from mlstack.features import repo, sources
from mlstack.schema import ENTITY, EVENT_TIME, TARGET, columns
from mlstack.settings import Settings, load_settings

if TYPE_CHECKING:
    from feast import FeatureStore

_ROW = "__mlstack_row"


def entity_frame(data: pd.DataFrame) -> pd.DataFrame:
    """The entity frame of a data version: customer id, label time (the row's event time, as
    a tz-aware UTC timestamp) and label."""
    return pd.DataFrame(
        {
            ENTITY: data[ENTITY].astype(str),
            EVENT_TIME: event_times(data[EVENT_TIME]),
            TARGET: data[TARGET],
        }
    )


def historical(store: FeatureStore, entities: pd.DataFrame) -> pd.DataFrame:
    """The training set of ``entities`` (``entity_frame``'s columns): each row's contract
    features as of its ``EVENT_TIME`` (the latest snapshot at or before it, within the view's
    TTL), in ``schema.columns()`` order and the entity frame's row order, ``EVENT_TIME`` as the
    CSV's text. A row the store has no snapshot for has missing features."""
    frame = entities.reset_index(drop=True).assign(**{_ROW: range(len(entities))})
    job = store.get_historical_features(entity_df=frame, features=repo.feature_refs())
    answered = job.to_df()
    if answered[_ROW].duplicated().any():
        raise StackError(
            f"the feature store answered {len(answered)} rows for {len(frame)} entity rows "
            "(duplicate snapshots of a customer at one time in the source?)"
        )
    # Feast's file store leaves out a row that has no snapshot at or before its time: it keeps
    # its place here, with its features missing
    joined = frame[[_ROW]].merge(answered, on=_ROW, how="left")
    out = pd.DataFrame(
        {
            ENTITY: frame[ENTITY],
            EVENT_TIME: event_time_text(frame[EVENT_TIME]),
        }
    )
    out = sources.typed_features(joined, out)
    out[TARGET] = frame[TARGET].to_numpy()
    return out[columns()]


@dataclass(frozen=True)
class IngestResult:
    """What the ingest step reports: the data version (DVC md5, git SHA), the md5 of the source
    file written from it, and each feature view's version (``name@version``)."""

    data_md5: str
    git_sha: str
    source_md5: str
    feature_views: str


def training_set(
    data: pd.DataFrame, out: Path, *, settings: Settings | None = None
) -> tuple[str, str]:
    """Write ``data``'s rows as the store's source, apply the definitions, and write the
    training set built through the store to ``out`` (the contract's CSV). Returns the source
    file's md5 and the feature views' versions (``name@version``). ``DataValidationError`` when
    ``data`` breaks the contract (its rows cannot be the view's source)."""
    violations = find_violations(data)
    if violations:
        raise DataValidationError(violations)
    settings = settings or load_settings()
    source_md5 = sources.write_source(sources.source_frame(data), settings.feature_source)
    store = repo.open_store(settings)
    view = repo.apply(store, settings.feature_source)
    result = historical(store, entity_frame(data))
    write_csv(result, out)
    return source_md5, f"{view.name}@{repo.view_version(view)}"


def ingest(
    repo_url: str,
    data_path: str,
    rev: str,
    out: Path,
    *,
    remote: str = "",
    settings: Settings | None = None,
) -> IngestResult:
    """The pipeline's ingest step: the data version at ``rev`` (read through DVC, verified),
    through the feature store into ``out``."""
    from mlstack.data.versions import read_version

    settings = settings or load_settings()
    with tempfile.TemporaryDirectory(prefix="mlstack-ingest-") as scratch:
        raw = Path(scratch) / "data.csv"
        version = read_version(repo_url, data_path, rev=rev, out=str(raw), remote=remote)
        data = read_csv(raw)
    source_md5, views = training_set(data, out, settings=settings)
    return IngestResult(version.md5, version.git_sha, source_md5, views)
