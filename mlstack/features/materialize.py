"""Materialization: the latest feature values of a data version copied to the online store.

``materialize`` writes the source from the data version at a git rev, applies the definitions,
and runs Feast's ``materialize_incremental`` up to now: each run copies the snapshots recorded
after the previous run's end (Feast keeps the intervals in the registry), so a second run with no
new snapshots adds nothing and a new data version's later snapshots appear online at the next run.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlstack.data.generate import read_csv
from mlstack.features import repo, sources
from mlstack.schema import ENTITY, EVENT_TIME
from mlstack.settings import Settings, load_settings


@dataclass(frozen=True)
class MaterializeResult:
    """A run: the data version, the source written from it, the view's version, the window
    materialized (``start`` None on the first run: from the oldest snapshot) and how many
    snapshots and customers of the source lie in it."""

    data_md5: str
    git_sha: str
    source_md5: str
    feature_views: str
    start: datetime | None
    end: datetime
    snapshots: int
    customers: int

    def render(self) -> str:
        since = self.start.isoformat() if self.start else "the first snapshot"
        return (
            f"materialized {self.feature_views} from {since} to {self.end.isoformat()}: "
            f"{self.snapshots} snapshot(s) of {self.customers} customer(s) "
            f"(data md5 {self.data_md5} at git {self.git_sha[:12]}, source md5 {self.source_md5})"
        )


def materialize(
    repo_url: str,
    data_path: str,
    rev: str,
    *,
    remote: str = "",
    settings: Settings | None = None,
    now: datetime | None = None,
) -> MaterializeResult:
    """Materialize the data version at ``rev`` of ``repo_url`` up to ``now`` (default: the
    current time, UTC). ``StackError`` when the version cannot be read or the store opened."""
    from mlstack.data.versions import read_version

    settings = settings or load_settings()
    end = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="mlstack-materialize-") as scratch:
        raw = Path(scratch) / "data.csv"
        version = read_version(repo_url, data_path, rev=rev, out=str(raw), remote=remote)
        frame = sources.source_frame(read_csv(raw))
    source_md5 = sources.write_source(frame, settings.feature_source)
    store = repo.open_store(settings)
    repo.apply(store, settings.feature_source)
    view = store.get_feature_view(repo.FEATURE_VIEW)
    start = max((i[1] for i in view.materialization_intervals), default=None)
    # Feast prints its progress: to stderr, so stdout stays the command's result
    with contextlib.redirect_stdout(sys.stderr):
        store.materialize_incremental(end_date=end)
    times = frame[EVENT_TIME]
    window = frame[(times <= end) & (times > start if start is not None else times.notna())]
    return MaterializeResult(
        data_md5=version.md5,
        git_sha=version.git_sha,
        source_md5=source_md5,
        feature_views=f"{view.name}@{repo.view_version(view)}",
        start=start,
        end=end,
        snapshots=len(window),
        customers=window[ENTITY].nunique(),
    )
