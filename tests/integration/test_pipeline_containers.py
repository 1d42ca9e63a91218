"""The pipeline's steps and the Katib trial in the training image, as its non-root user.

The checked-in IR runs with ``kfp.local.DockerRunner`` against the container engine that built
the image (podman's Docker-compatible service on a socket under tmp, or a docker daemon), every
step in the image, against an MLflow server on 127.0.0.1; the Katib trial command from
``katib/experiment.yaml`` runs in the image as the tune step would create it; and the image lets
its user write where KFP's launcher maps a cluster's pipeline root.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.data import generate as datagen
from mlstack.data import versions as dvcdata
from mlstack.errors import StackError
from mlstack.pipeline import containers
from mlstack.pipeline.local import run_pipeline
from mlstack.settings import DEFAULTS, Settings
from mlstack.train.tracking import LINEAGE_TAGS
from mlstack.tune import cluster, spec
from tests.conftest import free_port, git, make_data_repo
from tests.support import podspec, servers
from tests.support.images import ensure_images

pytestmark = pytest.mark.slow
STEPS = ["evaluate", "ingest", "register", "train", "validate"]
IMAGE_UID = 10001  # components/Dockerfile's USER


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The training image built, and ``DOCKER_HOST`` pointing at the engine that built it: for
    podman, its Docker-compatible service on a socket under tmp, stopped at the end."""
    import docker

    built = ensure_images("training")
    if built.engine != "podman":
        yield built.engine
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    url = f"unix://{sock}"
    log = (sock.parent / "service.log").open("w")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(300):
            if service.poll() is not None:
                pytest.fail(
                    f"podman system service exited: {(sock.parent / 'service.log').read_text()}"
                )
            try:
                docker.DockerClient(base_url=url).ping()
                break
            except docker.errors.DockerException:
                subprocess.run(["sleep", "0.2"], check=True)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DOCKER_HOST", url)
            yield built.engine
    finally:
        servers.stop(service)
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1, artifacts proxied (as the platform's): the steps' store."""
    root = tmp_path_factory.mktemp("mlflow")
    with servers.mlflow_server(root, free_port(), timeout=180) as uri:
        yield uri


def _image_id() -> str:
    import docker

    client = docker.from_env()
    try:
        return client.images.get(DEFAULTS.training_image).id
    finally:
        client.close()


def _settings(repo: Path, tmp_path: Path, tracking_uri: str) -> Settings:
    # one server for the module: a model and experiment name per test
    name = f"churn-{uuid.uuid4().hex[:6]}"
    return Settings(
        repo_root=repo,
        state_dir=tmp_path / "state",
        tracking_uri=tracking_uri,
        model_name=name,
        experiment_name=name,
    )


def test_ir_runs_in_containers_and_registers_a_model(engine, mlflow_server, tmp_path: Path):
    repo = make_data_repo(tmp_path / "repo", tmp_path / "remote")
    # no local DVC cache: the ingest step reads the version from the (read-only) remote
    shutil.rmtree(repo / ".dvc" / "cache")
    settings = _settings(repo, tmp_path, mlflow_server)
    out = io.StringIO()

    image_before = _image_id()
    summary = run_pipeline(settings, runner="docker", out=out)

    assert summary.executed == STEPS and summary.cached == []
    assert (summary.model_version, summary.alias) == ("1", "champion")
    assert summary.data_md5 == dvcdata.pointer_md5(repo / "data/churn.csv.dvc")
    assert summary.git_sha == git(repo, "rev-parse", "HEAD")
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version(settings.model_name, "1")
    run = client.get_run(summary.mlflow_run_id)
    for tag in LINEAGE_TAGS:
        assert mv.tags[tag] == run.data.tags[tag], tag
    assert mv.tags["data_md5"] == summary.data_md5 and mv.tags["git_sha"] == summary.git_sha
    assert mv.tags["kfp_run_name"] == summary.kfp_run_name
    assert mv.tags["kfp_run_id"] and "{{" not in mv.tags["kfp_run_id"]
    assert mv.run_id == summary.mlflow_run_id
    # each step wrote its outputs as the image's user, in the containers' pipeline root
    assert summary.run_dir.parent == settings.state / "kfp-containers"
    for step in STEPS:
        assert (summary.run_dir / step).stat().st_uid == IMAGE_UID, step
    dataset = summary.run_dir / "ingest" / "dataset"
    assert dataset.stat().st_uid == IMAGE_UID and dataset.stat().st_size > 0
    # ingest built the training set through the image's embedded feature store (its
    # feature_repo/, MLSTACK_FEAST_CONFIG), its files in the state directory the runner gave it
    feast_dir = summary.run_dir.parent / containers.STEP_STATE / "feast"
    for name in ("customer_features.parquet", "registry.db"):
        assert (feast_dir / name).stat().st_uid == IMAGE_UID, name
    # the read-only repository was left as it was
    assert git(repo, "status", "--porcelain") == ""

    # same data, same image: every step but evaluate and register (never cached: they read the
    # registry as it is now) is a cache hit; an image rebuilt meanwhile (make images, on a
    # shared machine) is a new cache, and every step runs again
    again = run_pipeline(settings, runner="docker", out=io.StringIO())
    if _image_id() == image_before:
        assert again.executed == ["evaluate", "register"]
        assert again.cached == ["ingest", "train", "validate"]
        assert again.mlflow_run_id == summary.mlflow_run_id
    else:
        assert again.executed == STEPS and again.mlflow_run_id != summary.mlflow_run_id


def test_a_failing_step_fails_the_run(engine, mlflow_server, tmp_path: Path):
    repo = make_data_repo(tmp_path / "repo", tmp_path / "remote")
    settings = _settings(repo, tmp_path, mlflow_server)
    bad = datagen.generate(600, 3).astype({"monthly_charges": object})
    bad.loc[3, "monthly_charges"] = "unknown"
    bad_path = tmp_path / "bad.csv"
    bad.to_csv(bad_path, index=False)
    dvcdata.add_version(repo, bad_path, data_path="data/churn.csv", message="data: corrupt")

    with pytest.raises(StackError, match="step 'ingest'.*column 'monthly_charges': dtype"):
        run_pipeline(settings, runner="docker", out=io.StringIO())
    assert MlflowClient(mlflow_server).search_model_versions(f"name='{settings.model_name}'") == []


def test_container_exit_status_and_output_reach_kfp(engine, capsys):
    """The step's own exit status decides, and its output is shown, however fast it exits.

    kfp.local's own wait, measured here under podman 4.3 on 8 runs each of ``exit 3``: 0 (a false
    SUCCESS) or an APIError 500 (the container removed before its logs were read), never 3."""
    from kfp.local import DockerRunner, docker_task_handler, status

    for code in (3, 3, 0):
        handler = docker_task_handler.DockerTaskHandler(
            image=DEFAULTS.training_image,
            full_command=["sh", "-c", f"echo step output; echo 'error: boom' >&2; exit {code}"],
            pipeline_root="/tmp",
            runner=DockerRunner(),
        )
        with containers.exit_status_kept():
            got = handler.run()
        assert got == (status.Status.FAILURE if code else status.Status.SUCCESS)
        printed = capsys.readouterr().out
        assert "step output" in printed and "error: boom" in printed


def test_docker_runner_needs_a_tracking_server(data_repo: Path, tmp_path: Path):
    """A sqlite store is files of this machine the container's user would write: refused in one
    line, before anything is written; an unknown runner likewise."""
    env = {
        **os.environ,
        "MLSTACK_REPO_ROOT": str(data_repo),
        "MLSTACK_STATE_DIR": str(tmp_path / "state"),
    }
    for runner, needles in [
        ("docker", ("error: tracking URI sqlite:///", "steps in containers need an MLflow server")),
        ("kubernetes", ("error: runner 'kubernetes': one of subprocess, docker",)),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "mlstack.cli", "pipeline", "run", "--runner", runner],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 1
        assert done.stderr.startswith(needles[0]) and done.stderr.count("\n") == 1, done.stderr
        assert all(n in done.stderr for n in needles), done.stderr
    assert not (tmp_path / "state" / "kfp-containers").exists()


def _first_feasible(param: spec.Parameter) -> str:
    """A value from the parameter's feasible space, as Katib's suggestion hands it over."""
    if param.values:
        return param.values[0]
    return str(int(param.min)) if param.type == "int" else str(param.min)


def test_katib_trial_command_prints_what_the_collector_reads(engine, mlflow_server, tmp_path: Path):
    exp = spec.load(DEFAULTS.katib_experiment)
    repo = make_data_repo(tmp_path / "repo", tmp_path / "remote")
    sha = git(repo, "rev-parse", "HEAD")
    experiment = f"tuning-{uuid.uuid4().hex[:6]}"
    # what the tune step creates (its env filled in), then what Katib makes of the template
    body = cluster.for_cluster(
        exp,
        "ml-training",
        {
            "MLSTACK_DATA_REPO": str(repo),
            "MLSTACK_DATA_REV": sha,
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLSTACK_EXPERIMENT_NAME": experiment,
        },
    )
    by_name = {p.name: _first_feasible(p) for p in exp.parameters}
    values = {tp: by_name[ref] for tp, ref in exp.trial_parameters.items()}
    template = body["spec"]["trialTemplate"]
    pod = spec.substitute(template["trialSpec"]["spec"]["template"]["spec"], values)
    image = podspec.Image.inspect(DEFAULTS.training_image, podman=engine)
    name = f"trial-{uuid.uuid4().hex[:8]}"
    argv = podspec.run_argv(
        pod,
        template["primaryContainerName"],
        image,
        podspec.PodContext(),
        name=name,
        network="host",
        podman=engine,
    )
    # the data repository and its remote at their paths, as the pipeline's steps get them
    mounts = []
    for m in containers.prepare(tmp_path / "root", repo):
        mounts += ["--volume", f"{m['Source']}:{m['Target']}:ro"]
    argv = [*argv[:2], *mounts, *argv[2:]]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    try:
        code = subprocess.run(
            [engine, "wait", name], capture_output=True, text=True, timeout=600, check=True
        ).stdout.strip()
        logs = subprocess.run(
            [engine, "logs", name], capture_output=True, text=True, timeout=60, check=True
        )
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)
    output = logs.stdout + logs.stderr
    assert code == "0", output[-3000:]

    # Katib v0.19's StdOut collector: lines that name a metric, the first word the timestamp
    # (RFC 3339), every match of the metrics format a (name, value) pair
    names = [exp.objective, *exp.additional]
    reported: list[dict[str, float]] = []
    for line in output.splitlines():
        if not any(n in line for n in names):
            continue
        pairs = dict(spec.parse_metrics(line, exp.metrics_format, names))
        if pairs:
            assert datetime.fromisoformat(line.split(" ", 1)[0]).tzinfo is not None, line
            reported.append(pairs)
    assert len(reported) >= 2, output[-3000:]  # one per boosting chunk, then the final one
    assert all(set(r) == set(names) for r in reported)
    assert all(0.5 < r[exp.objective] <= 1.0 for r in reported)
    runs = MlflowClient(mlflow_server).search_runs(
        [MlflowClient(mlflow_server).get_experiment_by_name(experiment).experiment_id]
    )
    assert len(runs) == 1
    assert runs[0].data.params["max_iter"] == by_name["max_iter"]
    assert reported[-1][exp.objective] == pytest.approx(runs[0].data.metrics["roc_auc"], abs=1e-6)


def test_image_user_writes_where_the_launcher_maps_pipeline_roots(engine):
    """KFP's launcher (2.17, ``LocalPathForURI``) maps gs://, minio:// and s3:// artifact URIs to
    local paths, the SDK the same way (``Artifact.path``), and creates their directories as the
    step's user before the step starts."""
    from kfp.dsl import Artifact
    from kfp.dsl.types.artifact_types import RemotePrefix

    paths = [
        Artifact(uri=f"{p.value}mlpipeline/v2/artifacts/churn-training/run-1/train/model").path
        for p in RemotePrefix
        if p is not RemotePrefix.OCI  # a model image's mount, read only
    ]
    assert {p.split("/")[1] for p in paths} == {"gcs", "minio", "s3"}
    script = " && ".join(f"mkdir -p {os.path.dirname(p)} && echo x > {p}" for p in paths)
    done = subprocess.run(
        [engine, "run", "--rm", DEFAULTS.training_image, "sh", "-ec", f"{script} && id -u"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(IMAGE_UID)
