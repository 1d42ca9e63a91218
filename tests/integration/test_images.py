"""The images `make images` builds (scripts/images.sh) start and work as their non-root users."""

import subprocess

import pytest

from mlstack.settings import DEFAULTS
from tests.support.images import Images, ensure_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images() -> Images:
    return ensure_images()


def inspect(images: Images, image: str, field: str) -> str:
    return subprocess.run(
        [images.engine, "image", "inspect", "--format", "{{" + field + "}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_names_are_the_settings_names(images):
    assert (images.training, images.predictor, images.mlflow) == tuple(DEFAULTS.images.values())


@pytest.mark.parametrize("key", ["training", "predictor", "mlflow"])
def test_image_runs_as_its_non_root_user(images, key):
    image = getattr(images, key)
    assert inspect(images, image, ".Config.User") == "10001"
    done = images.run(
        image,
        "-c",
        "import os, pathlib; print(os.getuid(), pathlib.Path.home())",
        options=["--entrypoint", "python"],
    )
    assert done.returncode == 0, done.stderr
    uid, home = done.stdout.split()
    assert uid == "10001" and home.startswith("/home/")


def test_training_image_has_the_pipeline_stack_and_git(images):
    done = images.run(
        images.training,
        "python",
        "-c",
        "import mlstack, components, pipelines, kfp, dvc, mlflow, sklearn, kubernetes, optuna;"
        "print(kfp.__version__, dvc.__version__, mlflow.__version__)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.17.0", "3.67.1", "3.17.2"]
    git = images.run(images.training, "git", "--version")
    assert git.returncode == 0 and git.stdout.startswith("git version 2."), git.stderr


def test_predictor_image_starts_its_server_entrypoint(images):
    done = images.run(images.predictor, "--help")
    assert done.returncode == 0, done.stderr
    assert "--model_dir" in done.stdout and "--model_name" in done.stdout
    # the serving image is runtime only: no pipeline stack in it
    absent = images.run(
        images.predictor,
        "-c",
        "import kserve, mlstack, serving; import kfp",
        options=["--entrypoint", "python"],
    )
    assert absent.returncode != 0 and "No module named 'kfp'" in absent.stderr


def test_mlflow_image_is_the_pinned_mlflow_with_its_drivers(images):
    done = images.run(images.mlflow, "--version")
    assert done.returncode == 0, done.stderr
    assert DEFAULTS.mlflow_image.rsplit(":", 1)[1] in done.stdout
    drivers = images.run(
        images.mlflow, "-c", "import psycopg2, boto3", options=["--entrypoint", "python"]
    )
    assert drivers.returncode == 0, drivers.stderr
