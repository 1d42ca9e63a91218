"""What a step's container is given (mounts, pipeline root, cache), without a container engine;
tests/integration/test_pipeline_containers.py runs the steps."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mlstack.errors import StackError
from mlstack.pipeline import containers
from mlstack.settings import DEFAULTS
from tests.conftest import make_data_repo


def test_mounts_repository_and_outside_remote_read_only(tmp_path: Path):
    repo = make_data_repo(tmp_path / "repo", tmp_path / "remote")
    # a second local remote inside the repository is covered by the repository's mount
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "inner", "../inner"],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    (repo / "inner").mkdir()
    root = tmp_path / "kfp-containers"

    mounts = containers.prepare(root, repo)

    by_target = {m["Target"]: m for m in mounts}
    assert set(by_target) == {"/etc/gitconfig", str(repo), str(tmp_path / "remote")}
    assert all(m["ReadOnly"] and m["Type"] == "bind" for m in mounts)
    assert by_target[str(repo)]["Source"] == str(repo)
    gitconfig = Path(by_target["/etc/gitconfig"]["Source"])
    assert gitconfig.read_text() == f"[safe]\n\tdirectory = {repo}\n"
    assert stat.S_IMODE(root.stat().st_mode) == 0o1777


def test_a_rebuilt_image_gets_its_own_cache(tmp_path: Path):
    one = containers.cache_root(tmp_path, ["sha256:aaa"])
    assert containers.cache_root(tmp_path, ["sha256:aaa"]) == one
    assert containers.cache_root(tmp_path, ["sha256:bbb"]) != one
    assert one.parent == tmp_path / ".kfp_cache"


def test_steps_need_a_tracking_server():
    containers.check_tracking_uri("http://127.0.0.1:5000")
    containers.check_tracking_uri("https://mlflow.example.com")
    with pytest.raises(StackError, match="tracking URI sqlite:///db: steps in containers"):
        containers.check_tracking_uri("sqlite:///db")


def test_ir_images_are_the_training_image():
    assert containers.ir_images(DEFAULTS.ir_path) == [DEFAULTS.training_image]
