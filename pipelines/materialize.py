"""The materialization pipeline: one step that copies the data version's latest feature values to
the online store (``components/materialize.py``). Compiled to ``pipelines/materialize.yaml``; a
recurring run in ``pipelines/schedules.yaml`` keeps the online store current, and
``mlstack features materialize`` runs the same function locally."""

from kfp import dsl, kubernetes

from components.materialize import materialize
from mlstack.settings import DEFAULTS
from pipelines.common import DVC_SECRET_KEYS, GIT_SECRET_KEYS


@dsl.pipeline(
    name="churn-features-materialize",
    description="Copy the latest customer features of a DVC data version to the online store.",
)
def materialize_pipeline(repo: str, data_rev: str, data_path: str = DEFAULTS.data_path) -> None:
    """``repo`` a git URL (or a local path when run locally), ``data_rev`` a branch or commit.
    Never cached: each run materializes up to its own time."""
    task = materialize(repo=repo, data_path=data_path, data_rev=data_rev)
    task.set_caching_options(False)
    # the data version's DVC remote and a private repository's token, as the ingest step reads
    # them (optional: the local runner and a public remote need neither)
    kubernetes.use_secret_as_env(
        task,
        secret_name=DEFAULTS.dvc_secret,
        secret_key_to_env={key: key for key in DVC_SECRET_KEYS},
        optional=True,
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=DEFAULTS.git_secret,
        secret_key_to_env={key: key for key in GIT_SECRET_KEYS},
        optional=True,
    )
