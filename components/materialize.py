"""Materialize: the data version at a git rev as the feature store's source, and the snapshots
recorded since the last run copied to the online store (incremental, idempotent)."""

from typing import NamedTuple

from kfp import dsl

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def materialize(repo: str, data_path: str, data_rev: str) -> NamedTuple(
    "MaterializeOutputs",
    [("data_md5", str), ("git_sha", str), ("feature_views", str), ("snapshots", int)],
):
    from mlstack.errors import exit_on_error
    from mlstack.features.materialize import materialize as materialize_version
    from mlstack.settings import load_settings

    with exit_on_error():
        settings = load_settings()  # MLSTACK_DVC_REMOTE, MLSTACK_FEAST_* in the pod, else defaults
        got = materialize_version(
            repo, data_path, data_rev, remote=settings.dvc_remote, settings=settings
        )
    print(got.render())
    return (got.data_md5, got.git_sha, got.feature_views, got.snapshots)
