"""What a continuous-training trigger is about to train on, before anything trains.

``.github/workflows/train.yml`` runs ``mlstack pipeline check-data --rev REV`` as its data step:
the data version at REV is read through the configured DVC remote (``MLSTACK_DVC_REMOTE``, the
setting every other data path reads: CLI, ingest step, Katib trials, the cluster's Secret), its
md5 checked against the pointer, and compared with the data the current ``@champion`` was trained
on (its ``data_md5`` lineage tag). A drift alert on data the champion was already trained on
would retrain on the very same rows: the workflow records it and skips (exit 10).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlstack.errors import StackError
from mlstack.settings import Settings

EXIT_NEW_DATA = 0
EXIT_UNCHANGED = 10


@dataclass(frozen=True)
class DataCheck:
    md5: str
    git_sha: str
    remote: str  # the DVC remote it was read from ("default": the repository's default)
    champion: str | None  # the @champion's version, None when there is none
    champion_md5: str | None  # the data md5 the champion was trained on

    @property
    def unchanged(self) -> bool:
        """The champion was trained on this very data version."""
        return self.champion_md5 is not None and self.champion_md5 == self.md5

    def render(self) -> str:
        """Two lines: what was read, and how it compares with the champion's data."""
        read = (
            f"data md5 {self.md5} at git {self.git_sha[:12]} read from DVC remote '{self.remote}'"
        )
        if self.champion is None:
            return f"{read}\nno @champion yet: train"
        if self.unchanged:
            return (
                f"{read}\n@champion (version {self.champion}) was trained on this data version: "
                "nothing new to train on"
            )
        return (
            f"{read}\n@champion (version {self.champion}) was trained on data md5 "
            f"{self.champion_md5 or 'unknown'}: new data, train"
        )


def champion_data_md5(settings: Settings) -> tuple[str | None, str | None]:
    """(version, data md5 tag) of the model's ``@champion``; (None, None) when there is none.

    Raises ``StackError`` in one line when the tracking server is unreachable or fails."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlstack.train import tracking

    uri = settings.mlflow_tracking_uri
    store = uri.removeprefix("sqlite:///")
    if store != uri and not Path(store).exists():
        return None, None  # a store never written holds no champion
    tracking.bound_http_retries()
    tracking.check_reachable(uri)
    try:
        version = MlflowClient(uri).get_model_version_by_alias(settings.model_name, "champion")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None, None
        text = str(exc.message).strip()
        raise StackError(
            f"MLflow at {uri} failed to look up @champion of model '{settings.model_name}': "
            f"{text.splitlines()[0] if text else exc.error_code}"
        ) from None
    return str(version.version), (version.tags or {}).get(tracking.TAG_DATA_MD5)


def check_data(settings: Settings, rev: str) -> DataCheck:
    """Read the data version at ``rev`` through ``settings.dvc_remote`` (md5 checked) and compare
    it with the champion's. Raises ``StackError`` (one line) when the rev, the remote or MLflow
    fails."""
    from mlstack.data.versions import read_version

    with tempfile.TemporaryDirectory() as tmp:
        version = read_version(
            str(settings.repo_root),
            settings.data_path,
            rev=rev,
            out=Path(tmp) / "data.csv",
            remote=settings.dvc_remote or None,
        )
    champion, md5 = champion_data_md5(settings)
    return DataCheck(
        md5=version.md5,
        git_sha=version.git_sha,
        remote=settings.dvc_remote or "default",
        champion=champion,
        champion_md5=md5,
    )
