"""The materialization pipeline: one step that copies the data version's latest feature values to
the online store (``components/materialize.py``). Compiled to ``pipelines/materialize.yaml``; a
recurring run in ``pipelines/schedules.yaml`` keeps the online store current, and
``mlstack features materialize`` runs the same function locally."""

from kfp import dsl

from components.materialize import materialize
from mlstack.settings import DEFAULTS
from pipelines.common import use_data_secrets, use_feature_store


@dsl.pipeline(
    name="churn-features-materialize",
    description="Copy the latest customer features of a DVC data version to the online store.",
)
def materialize_pipeline(repo: str, data_rev: str, data_path: str = DEFAULTS.data_path) -> None:
    """``repo`` a git URL (or a local path when run locally), ``data_rev`` a branch or commit.
    Never cached: each run materializes up to its own time."""
    task = materialize(repo=repo, data_path=data_path, data_rev=data_rev)
    task.set_caching_options(False)
    use_data_secrets(task)  # the data version's DVC remote and a private repo's token
    use_feature_store(task)  # the cluster's registry and Redis
