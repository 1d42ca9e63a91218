"""Promotion policy: gate floors, what a version must prove before `promote` writes it, storage
URIs a cluster can read, the model card before the overlay, no temp files after a kill.

Real sqlite MLflow stores in tmp_path, the real CLI in a subprocess, real SIGKILLs."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.deploy import policy, promote
from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.settings import GATE_FLOORS, Gates, check_gate_floors, code_root
from mlstack.train import tracking
from mlstack.train.evaluation import evaluate
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log
from tests.conftest import git
from tests.support.cli import run_cli
from tests.support.servers import train_and_register

MODEL = "churn-policy"
EXP = "policy"
LINEAGE = TrainingLineage("md5-pol", "data/churn.csv", "c" * 40, "kfp-run-p", "churn-training-p")
DIGEST_A = "ghcr.io/mlstack/churn-predictor@sha256:" + "a" * 64
DIGEST_B = "ghcr.io/mlstack/churn-predictor@sha256:" + "b" * 64


@pytest.fixture
def registered(dataset_csv: Path, tracking_uri: str) -> str:
    """Version 1 of MODEL, registered by the pipeline's own train, evaluate and register."""
    train_and_register(
        dataset_csv,
        params=HyperParams(max_iter=40),
        lineage=LINEAGE,
        model=MODEL,
        tracking_uri=tracking_uri,
        experiment=EXP,
        gates=Gates(),
    )
    return tracking_uri


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    repo = tmp_path / "gitops"
    shutil.copytree(code_root() / "manifests", repo / "manifests")
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "manifests")
    return repo / "manifests"


def run_of(uri: str, version: str = "1") -> str:
    return MlflowClient(uri).get_model_version(MODEL, version).run_id


def refused_by_cli(uri: str, manifests: Path, *args: str) -> str:
    """``mlstack promote`` of ``args`` exits 1 with one ``error:`` line and leaves the overlay
    repository as it was; returns that line."""
    env = {"MLFLOW_TRACKING_URI": uri, "MLSTACK_MODEL_NAME": MODEL}
    done = run_cli(
        "promote", "--env", "staging", "--manifests", str(manifests), "--allow-local-storage",
        *args, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert git(manifests.parent, "status", "--porcelain", "--ignored") == ""  # nothing written
    return lines[0]


def refusal(uri: str, ref: str) -> str:
    """Why ``resolve_release`` (what the CLI calls before any write) refuses ``ref``."""
    with pytest.raises(StackError) as refused:
        promote.resolve_release(MODEL, ref, tracking_uri=uri, allow_local_storage=True)
    return str(refused.value)


# --- gate floors ---------------------------------------------------------------------------------


def test_gate_floors_allow_tightening_only():
    check_gate_floors(GATE_FLOORS)
    check_gate_floors(Gates(min_roc_auc=0.9, min_f1=0.5, max_regression=0.0))
    for loose, floor in (
        (Gates(min_roc_auc=0.0), "min_roc_auc=0.0 is looser than its floor 0.75"),
        (Gates(min_f1=0.39), "min_f1=0.39 is looser than its floor 0.4"),
        (Gates(max_regression=1.0), "max_regression=1.0 is looser than its floor 0.01"),
        (Gates(primary_metric="f1"), "primary_metric=f1 differs from roc_auc"),
    ):
        with pytest.raises(StackError, match=floor):
            check_gate_floors(loose)


@pytest.mark.slow
@pytest.mark.reliability("lowered-gate-evaluate")
def test_evaluate_refuses_gates_looser_than_the_floors(dataset_csv, tracking_uri):
    trained = train_and_log(
        dataset_csv, HyperParams(max_iter=40), lineage=LINEAGE, tracking_uri=tracking_uri,
        experiment_name=EXP, test_size=0.25, split_seed=42,
    )  # fmt: skip
    # what `--param min_roc_auc=0 --param max_regression=1` hands the evaluate step
    with pytest.raises(StackError) as refused:
        evaluate(
            dataset_csv, trained.run_id, model_name=MODEL, tracking_uri=tracking_uri,
            experiment_name=EXP, gates=Gates(min_roc_auc=0.0, max_regression=1.0),
            test_size=0.25, split_seed=42,
        )  # fmt: skip
    assert str(refused.value).startswith(
        "gate threshold min_roc_auc=0.0 is looser than its floor 0.75"
    )
    tags = MlflowClient(tracking_uri).get_run(trained.run_id).data.tags
    assert tracking.TAG_GATES_PASSED not in tags  # nothing decided, nothing to register
    assert not [t for t in tags if t.startswith(tracking.TAG_GATE_PREFIX)]
    # the floors themselves, or tighter, are accepted and recorded on the run
    evaluate(
        dataset_csv, trained.run_id, model_name=MODEL, tracking_uri=tracking_uri,
        experiment_name=EXP, gates=Gates(min_f1=0.45), test_size=0.25, split_seed=42,
    )  # fmt: skip
    tags = MlflowClient(tracking_uri).get_run(trained.run_id).data.tags
    assert tags["gate_threshold.min_roc_auc"] == "0.75"
    assert tags["gate_threshold.min_f1"] == "0.45"
    assert tags["gate_threshold.max_regression"] == "0.01"


@pytest.mark.reliability("lowered-gate-param")
def test_the_command_line_refuses_looser_gates_before_any_step(tmp_path):
    env = {"MLSTACK_STATE_DIR": str(tmp_path / "state")}
    for argv in (
        ("pipeline", "run", "--param", "min_roc_auc=0", "--param", "max_regression=1"),
        ("pipeline", "run", "--tuning", "--param", "min_f1=0.1"),
        ("run", "submit", "--endpoint", "http://127.0.0.1:9", "--param", "max_regression=1"),
    ):
        done = run_cli(*argv, env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("error: gate threshold ") and "is looser than its floor" in line
        assert "a run may tighten the gates, never loosen them" in line
    assert not (tmp_path / "state").exists()  # no step ran, nothing was stored


def test_the_evaluate_component_refuses_in_one_line(dataset_csv, tracking_uri, tmp_path, capsys):
    from kfp.dsl import Dataset, Metrics

    from components.evaluate import evaluate as component

    def artifact(cls, path: Path):
        a = cls(name=path.name, uri=str(path))
        return a

    trained = train_and_log(
        dataset_csv, HyperParams(max_iter=40), lineage=LINEAGE, tracking_uri=tracking_uri,
        experiment_name=EXP, test_size=0.25, split_seed=42,
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        component.python_func(
            dataset=artifact(Dataset, dataset_csv), mlflow_run_id=trained.run_id,
            model_name=MODEL, tracking_uri=tracking_uri, experiment_name=EXP, test_size=0.25,
            split_seed=42, min_roc_auc=0.75, min_f1=0.4, max_regression=1.0,
            comparison=artifact(Metrics, tmp_path / "c.json"), decision=str(tmp_path / "d"),
        )  # fmt: skip
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: gate threshold max_regression=1.0 is looser than its floor")
    assert not (tmp_path / "d").exists()  # no decision for the register step


# --- what a version must prove -------------------------------------------------------------------


def test_a_version_the_pipeline_registered_is_promoted(registered, manifests):
    release = promote.resolve_release(
        MODEL, "champion", tracking_uri=registered, allow_local_storage=True
    )
    assert release.version == "1" and release.storage_uri.startswith("file://")
    recorded = MlflowClient(registered).get_run(run_of(registered)).data.tags
    assert release.digest == recorded[tracking.TAG_MODEL_DIGEST]  # the files just checked
    assert promote.promote(manifests, "staging", release)
    assert release.digest in promote.overlay_file(manifests, "staging").read_text()


@pytest.mark.reliability("forged-version")
def test_a_version_created_by_hand_is_refused(registered, manifests):
    client = MlflowClient(registered)
    real = client.get_model_version(MODEL, "1")
    # a foreign bucket, the gates tag set by hand
    forged = client.create_model_version(
        MODEL, source="s3://foreign-bucket/x", tags={tracking.TAG_GATES_PASSED: "true"}
    )
    line = refused_by_cli(registered, manifests, "--version", str(forged.version))
    assert line == (
        f"error: refusing to promote {MODEL} v{forged.version}: it names no run, so nothing "
        "shows how it was evaluated"
    )
    # ... naming the real run
    forged = client.create_model_version(
        MODEL, "s3://foreign-bucket/x", run_id=real.run_id, tags={tracking.TAG_GATES_PASSED: "true"}
    )
    assert "its source s3://foreign-bucket/x is not a model logged by a training run" in (
        refusal(registered, str(forged.version))
    )
    # ... the real run's files, claimed for another run (one never evaluated)
    other = client.create_run(client.get_experiment_by_name(EXP).experiment_id)
    forged = client.create_model_version(
        MODEL, real.source, run_id=other.info.run_id, tags={tracking.TAG_GATES_PASSED: "true"}
    )
    assert f"was logged by run {real.run_id}, not {other.info.run_id}" in (
        refusal(registered, str(forged.version))
    )
    # ... a run that does not exist
    forged = client.create_model_version(
        MODEL, real.source, run_id="0" * 32, tags={tracking.TAG_GATES_PASSED: "true"}
    )
    assert f"its run {'0' * 32} does not exist" in refusal(registered, str(forged.version))


@pytest.mark.reliability("lowered-gate-promote")
def test_a_version_evaluated_with_lowered_gates_is_refused(registered, manifests):
    client = MlflowClient(registered)
    run_id = run_of(registered)
    # what a run evaluated with `--param min_roc_auc=0` recorded before floors existed
    client.set_tag(run_id, "gate_threshold.min_roc_auc", "0.0")
    assert refused_by_cli(registered, manifests, "--alias", "champion") == (
        f"error: refusing to promote {MODEL} v1: its run was evaluated with looser gates than "
        "the repository's floors: min_roc_auc=0.0 is looser than its floor 0.75"
    )
    client.set_tag(run_id, "gate_threshold.min_roc_auc", "0.8")
    client.set_tag(run_id, "gate_threshold.max_regression", "1")
    assert "max_regression=1.0 is looser than its floor 0.01" in refusal(registered, "1")
    client.delete_tag(run_id, "gate_threshold.max_regression")  # evaluated before thresholds
    assert "no max_regression threshold recorded" in refusal(registered, "1")
    client.set_tag(run_id, "gate_threshold.max_regression", "0.01")
    client.set_tag(run_id, "gate.vs_champion", "fail")  # a failed gate, gates_passed still true
    assert "its run recorded gate vs_champion as not passed" in refusal(registered, "1")
    client.set_tag(run_id, "gate.vs_champion", "pass")
    client.set_tag(run_id, tracking.TAG_GATES_PASSED, "false")  # the version's tag says true
    assert "its run did not record gates_passed=true" in refusal(registered, "1")
    client.set_tag(run_id, tracking.TAG_GATES_PASSED, "true")
    assert promote.resolve_release(MODEL, "1", tracking_uri=registered, allow_local_storage=True)


@pytest.mark.reliability("tampered-digest-promote")
def test_files_changed_after_evaluation_are_refused(registered, manifests):
    client = MlflowClient(registered)
    location = client.get_model_version_download_uri(MODEL, "1")
    model_dir = Path(location.removeprefix("file://"))
    target = model_dir / "MLmodel"
    target.write_text(target.read_text() + "\n# changed after evaluation\n")
    line = refused_by_cli(registered, manifests, "--version", "1")
    assert line.startswith(f"error: refusing to promote {MODEL} v1: the files at {location} ")
    assert line.endswith("its run recorded at evaluation (changed after evaluation)")
    (model_dir / "MLmodel").write_text(target.read_text().removesuffix(
        "\n# changed after evaluation\n"
    ))  # fmt: skip
    (model_dir / "extra.py").write_text("import os\n")  # a file added
    assert "changed after evaluation" in refusal(registered, "1")
    (model_dir / "extra.py").unlink()
    client.delete_tag(run_of(registered), tracking.TAG_MODEL_DIGEST)
    assert refusal(registered, "1").endswith("its run recorded no model_digest")


# --- storage URIs a cluster can read -------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://mlflow-artifacts/1/models/m-1/artifacts",
        "gs://bucket/models/m-1/artifacts",
        "hdfs://namenode:8020/models/m-1",
        "webhdfs://namenode/models/m-1",
        "pvc://models-claim/m-1",
        "https://account.blob.core.windows.net/container/m-1",
        "https://account.file.core.windows.net/share/m-1",
    ],
)
def test_storage_uris_the_storage_initializer_reads_are_accepted(uri):
    policy.check_cluster_readable(uri)


@pytest.mark.reliability("storage-file-uri")
def test_a_local_store_version_is_refused_unless_allowed(registered, manifests):
    env = {"MLFLOW_TRACKING_URI": registered, "MLSTACK_MODEL_NAME": MODEL}
    done = run_cli(
        "promote", "--env", "staging", "--alias", "champion", "--manifests", str(manifests),
        env=env,
    )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: storage URI file:///")
    assert "is on this machine's file system, which no cluster can read" in line
    assert "--artifacts-destination s3://mlflow-artifacts" in line
    assert "--allow-local-storage" in line
    assert git(manifests.parent, "status", "--porcelain") == ""
    with pytest.raises(StackError, match="no cluster can read"):
        policy.check_cluster_readable("file:///srv/models/m-1")


@pytest.mark.reliability("storage-local-path")
@pytest.mark.parametrize("uri", ["/srv/mlartifacts/1/models/m-1", "mlartifacts/1/m-1", "C:/m-1"])
def test_a_local_path_is_refused(uri):
    with pytest.raises(StackError, match=r"on this machine's file system.*--allow-local-storage"):
        policy.check_cluster_readable(uri)


@pytest.mark.reliability("storage-unmapped-proxy")
def test_an_unmapped_proxy_uri_is_refused():
    uri = "mlflow-artifacts:/1/models/m-1/artifacts"
    with pytest.raises(StackError, match="set MLSTACK_ARTIFACTS_DESTINATION"):
        promote.storage_location(uri, "")
    with pytest.raises(StackError, match="artifact proxy.*set MLSTACK_ARTIFACTS_DESTINATION"):
        policy.check_cluster_readable(uri)
    # mapped onto a destination that is itself local: still refused
    with pytest.raises(StackError, match="no cluster can read"):
        policy.check_cluster_readable(promote.storage_location(uri, "/srv/mlflow-artifacts"))
    policy.check_cluster_readable(promote.storage_location(uri, "s3://mlflow-artifacts"))


@pytest.mark.reliability("storage-plain-http")
@pytest.mark.parametrize(
    "uri", ["http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/m-1", "https://example.com/m"]
)
def test_a_plain_http_url_is_refused(uri):
    with pytest.raises(StackError, match="reads as one file"):
        policy.check_cluster_readable(uri)


@pytest.mark.reliability("storage-other-scheme")
@pytest.mark.parametrize(
    "uri",
    [
        "dbfs:/databricks/mlflow/1/m-1",
        "ftp://host/m-1",
        "sftp://host/m-1",
        "wasbs://container@account.blob.core.windows.net/m-1",
        "runs:/0123/model",
        "models:/m-0123",
        "s3:///no-bucket",
    ],
)
def test_a_scheme_the_storage_initializer_does_not_read_is_refused(uri):
    with pytest.raises(StackError, match=r"does not read|names no bucket"):
        policy.check_cluster_readable(uri)


# --- the command line: the model card first, no debris after a kill ------------------------------


@pytest.mark.reliability("bad-model-card-path")
def test_a_model_card_that_cannot_be_written_stops_before_the_overlay(registered, manifests):
    line = refused_by_cli(
        registered, manifests, "--version", "1", "--model-card", "/nonexistent/dir/card.md"
    )
    assert line.startswith("error: cannot write the model card to /nonexistent/dir/card.md: ")
    assert "nothing promoted" in line
    with pytest.raises(IsADirectoryError):  # a directory where the card should go: also OSError
        write_atomic(manifests, "card")
    assert git(manifests.parent, "status", "--porcelain", "--ignored") == ""


def test_write_atomic_keeps_the_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "promotion.yaml"
    path.write_text("old\n")
    path.chmod(0o640)
    (tmp_path / ".promotion.yaml.stale1").write_text("")  # a killed write's debris
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["promotion.yaml"]
    fresh = tmp_path / "card.md"
    write_atomic(fresh, "card\n")
    assert fresh.read_text() == "card\n"


_LOOP = """
import sys
from pathlib import Path
from mlstack.deploy import promote
manifests, a, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print("started", flush=True)
while True:
    promote.promote(manifests, "staging", None, image=a)
    promote.promote(manifests, "staging", None, image=b)
"""


@pytest.mark.reliability("killed-promote")
def test_killed_promotions_leave_the_old_or_new_overlay_and_no_temp_files(manifests, tmp_path):
    overlay = promote.overlay_file(manifests, "staging")
    expected = {}
    for image in (DIGEST_A, DIGEST_B):  # the two texts the loop writes, made the same way
        copy = tmp_path / f"copy-{image[-1]}"
        shutil.copytree(manifests, copy)
        promote.promote(copy, "staging", None, image=image)
        expected[image] = promote.overlay_file(copy, "staging").read_text()
    texts = {overlay.read_text(), *expected.values()}
    rng = random.Random(17)
    kills = 30
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOOP, str(manifests), DIGEST_A, DIGEST_B],
            stdout=subprocess.PIPE, text=True, cwd=code_root(),
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "started\n"
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the write loop
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()
        assert overlay.read_text() in texts  # the old or a new text, never a torn one
        debris = list(overlay.parent.glob(f".{overlay.name}.*"))
        # a temp file gets its name only once complete: at most one, and whole
        assert len(debris) <= 1 and all(p.read_text() in texts for p in debris)
    promote.promote(manifests, "staging", None, image=DIGEST_A)  # the next promote cleans up
    assert overlay.read_text() == expected[DIGEST_A]
    assert not list(overlay.parent.glob(f".{overlay.name}.*"))
