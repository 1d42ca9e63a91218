"""Ingest: the dataset as it is at a git rev, read through DVC, with its md5."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def ingest(repo: str, data_path: str, data_rev: str, dataset: Output[Dataset]) -> NamedTuple(
    "IngestOutputs", [("data_md5", str), ("git_sha", str)]
):
    from mlstack.data.versions import read_version
    from mlstack.errors import exit_on_error
    from mlstack.settings import load_settings

    with exit_on_error():
        remote = load_settings().dvc_remote  # MLSTACK_DVC_REMOTE in the pod, else the default
        version = read_version(repo, data_path, rev=data_rev, out=dataset.path, remote=remote)
    dataset.metadata.update({"md5": version.md5, "git_sha": version.git_sha, "path": data_path})
    return (version.md5, version.git_sha)
