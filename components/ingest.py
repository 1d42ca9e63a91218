"""Ingest: the dataset as it is at a git rev, read through DVC, and its training set built through
the feature store (point in time: each label with its customer's features as of the label's time)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def ingest(repo: str, data_path: str, data_rev: str, dataset: Output[Dataset]) -> NamedTuple(
    "IngestOutputs",
    [("data_md5", str), ("git_sha", str), ("feature_source_md5", str), ("feature_views", str)],
):
    from pathlib import Path

    from mlstack.errors import exit_on_error
    from mlstack.features.training import ingest as ingest_through_feast
    from mlstack.settings import load_settings

    with exit_on_error():
        settings = load_settings()  # MLSTACK_DVC_REMOTE, MLSTACK_FEAST_* in the pod, else defaults
        got = ingest_through_feast(
            repo, data_path, data_rev, Path(dataset.path), remote=settings.dvc_remote,
            settings=settings,
        )  # fmt: skip
    dataset.metadata.update(
        {
            "md5": got.data_md5,
            "git_sha": got.git_sha,
            "path": data_path,
            "feature_source_md5": got.source_md5,
            "feature_views": got.feature_views,
        }
    )
    return (got.data_md5, got.git_sha, got.source_md5, got.feature_views)
