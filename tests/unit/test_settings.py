from pathlib import Path

import pytest

from mlstack.settings import DEFAULTS, load_settings


def test_defaults_give_a_local_sqlite_store_under_the_repo(tmp_path: Path):
    s = load_settings(repo_root=tmp_path)
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.mlstack' / 'mlflow.db'}"
    assert s.pipeline_root == tmp_path / ".mlstack" / "kfp"


def test_environment_overrides(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MLSTACK_MODEL_NAME", "other-model")
    monkeypatch.setenv("MLSTACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    s = load_settings()
    assert s.model_name == "other-model"
    assert s.state == tmp_path
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert DEFAULTS.model_name == "churn-classifier"  # the compile-time defaults do not move


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(modle_name="typo")
