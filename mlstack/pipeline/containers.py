"""Run the pipeline's steps in containers on this machine: ``kfp.local.DockerRunner``, given what
the steps reach on a cluster by other means, and one correction to how kfp.local waits for a step.

Each step runs in its IR's image (the training image) as the image's non-root user, and gets,
each at its path on this machine (so the IR's path arguments and the repository's DVC config hold
unchanged):

* the pipeline root, which kfp.local mounts itself (its only mount); it is made writable by any
  user (mode 1777, like /tmp) because the steps write their outputs there as the image's user,
  who owns nothing on this machine;
* the data repository and its local-directory DVC remotes, read-only: DVC reads a version
  without writing to either;
* ``/etc/gitconfig`` naming that one repository a ``safe.directory``: git and libgit2 (DVC reads
  revisions with it) refuse a repository owned by another user unless a system or global config
  allows it, and libgit2 reads no ``GIT_CONFIG_*`` environment;
* this machine's network, so ``127.0.0.1`` is this machine's loopback: the MLflow tracking server
  there is the steps' store, as the platform's MLflow server is on a cluster. A sqlite store is
  refused: the container's user would write the database and artifact directories of the host;
* ``MLSTACK_DVC_REMOTE`` and the ``AWS_*`` keys from this environment, as the cluster's Secret
  gives them to the ingest step;
* ``MLSTACK_STATE_DIR``: a directory in the pipeline root that any user may write (``state``,
  mode 1777), where the ingest step keeps the embedded feature store (the image's
  ``MLSTACK_FEAST_CONFIG`` names ``feature_repo/feature_store.yaml``, whose files go under
  ``<state dir>/feast``); the image's working directory is root's, and its user writes nowhere
  else but ``/tmp``.

The correction: kfp.local (2.17) starts each container with ``auto_remove=True`` and, when the
container is gone by the time it asks for the exit status, assumes 0. Under podman it is always
gone, so a failing step would be reported SUCCESS with no outputs. ``exit_status_kept`` replaces
kfp.local's ``run_docker_container`` with ``run_container`` for the duration of a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlstack.errors import StackError

if TYPE_CHECKING:
    import docker
    from kfp.local import DockerRunner

GITCONFIG = "/etc/gitconfig"
# the steps' MLSTACK_STATE_DIR, in the pipeline root (kfp.local's run directories are named by the
# pipeline, so they never collide with it)
STEP_STATE = "state"


def run_container(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    *,
    volumes: dict[str, Any],
    **run_args: Any,
) -> int:
    """What kfp.local's ``run_docker_container`` does, without ``auto_remove``: start the step,
    print its output, return its real exit status, then remove the container."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    container = client.containers.run(
        image=add_latest_tag_if_not_present(image),
        command=command,
        detach=True,
        volumes=volumes,
        **run_args,
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


@contextlib.contextmanager
def exit_status_kept() -> Iterator[None]:
    """kfp.local's Docker task handler runs its steps with ``run_container`` while inside."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def engine() -> docker.DockerClient:
    """The container engine at ``DOCKER_HOST`` (docker's default socket when unset);
    ``StackError`` saying how to start one when none answers."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "docker's default socket"
        raise StackError(
            f"no container engine answers at {where} ({str(exc).splitlines()[0]}): start docker, "
            "or podman's Docker-compatible service (podman system service --time=0 "
            "unix:///tmp/podman.sock) and set DOCKER_HOST=unix:///tmp/podman.sock"
        ) from None
    return client


def image_ids(client: docker.DockerClient, images: Sequence[str]) -> list[str]:
    """The engine's ID of each image, pulled when it is not on this machine; ``StackError``
    when an image is missing and cannot be pulled."""
    import docker

    ids = []
    for image in images:
        try:
            found = client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                found = client.images.pull(image)
            except docker.errors.DockerException as exc:
                raise StackError(
                    f"image {image} is not on this machine and cannot be pulled "
                    f"({str(exc).splitlines()[0]}): build it with 'make images'"
                ) from None
        ids.append(found.id)
    return ids


def cache_root(pipeline_root: Path, ids: Sequence[str]) -> Path:
    """kfp.local's cache keys name the image, not its content: a cache per set of image IDs, so a
    rebuilt image never reuses the outputs of the one before."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
    return pipeline_root / ".kfp_cache" / digest


def local_remotes(repo: Path) -> list[Path]:
    """The repository's DVC remotes that are directories of this machine."""
    from dvc.config import Config

    config = Config(dvc_dir=str(repo / ".dvc"), validate=True)
    urls = [str(remote.get("url", "")) for remote in config["remote"].values()]
    return [Path(url) for url in urls if url and "://" not in url and Path(url).is_dir()]


def check_tracking_uri(tracking_uri: str) -> None:
    """``StackError`` unless ``tracking_uri`` is an MLflow server (http or https)."""
    if not tracking_uri.startswith(("http://", "https://")):
        raise StackError(
            f"tracking URI {tracking_uri}: steps in containers need an MLflow server "
            "(MLFLOW_TRACKING_URI=http://127.0.0.1:PORT, reached over host networking), "
            "not a store of files on this machine"
        )


def step_state_dir(pipeline_root: Path) -> Path:
    """The steps' state directory (``MLSTACK_STATE_DIR``): in the pipeline root, writable by any
    user (mode 1777) as the pipeline root is."""
    state = pipeline_root / STEP_STATE
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o1777)
    return state


def prepare(pipeline_root: Path, repo: Path) -> list[Any]:
    """The pipeline root (and the steps' state directory in it) made writable by the image's
    user, and the mounts a step gets."""
    from docker.types import Mount

    repo = repo.resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    pipeline_root.chmod(0o1777)
    step_state_dir(pipeline_root)
    gitconfig = pipeline_root / ".gitconfig"
    gitconfig.write_text(f"[safe]\n\tdirectory = {repo}\n")
    mounts = [
        Mount(GITCONFIG, str(gitconfig), type="bind", read_only=True),
        Mount(str(repo), str(repo), type="bind", read_only=True),
    ]
    for remote in local_remotes(repo):
        if not remote.is_relative_to(repo):
            mounts.append(Mount(str(remote), str(remote), type="bind", read_only=True))
    return mounts


def docker_runner(pipeline_root: Path, repo: Path) -> DockerRunner:
    """The runner for ``kfp.local.init``: host network, the mounts, the DVC remote's env and the
    steps' state directory."""
    from kfp.local import DockerRunner

    from pipelines.common import DVC_SECRET_KEYS

    mounts = prepare(pipeline_root, repo)
    env = {key: os.environ[key] for key in DVC_SECRET_KEYS if os.environ.get(key)}
    env["MLSTACK_STATE_DIR"] = str(step_state_dir(pipeline_root))
    return DockerRunner(network_mode="host", mounts=mounts, environment=env)


def ir_images(ir_path: Path) -> list[str]:
    """The images the IR's steps run in."""
    from mlstack.pipeline.compile import read_ir

    spec, _ = read_ir(ir_path)
    executors = spec["deploymentSpec"]["executors"].values()
    return sorted({e["container"]["image"] for e in executors if "container" in e})


def setup(
    pipeline_root: Path, repo: Path, *, ir_path: Path, tracking_uri: str
) -> tuple[DockerRunner, Path]:
    """Checked before anything is written: an MLflow server, an engine, the IR's images. Then the
    runner for ``kfp.local.init`` and its cache root.

    Returns (runner, cache root); raises ``StackError`` when the tracking URI is not a server, no
    engine answers, or an image is missing."""
    check_tracking_uri(tracking_uri)
    client = engine()
    try:
        ids = image_ids(client, ir_images(ir_path))
    finally:
        client.close()
    return docker_runner(pipeline_root, repo), cache_root(pipeline_root, ids)
