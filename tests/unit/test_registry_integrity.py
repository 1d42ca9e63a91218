"""Registry integrity under faults: an unfinished registration, concurrent registrations, an alias
moved by an outside writer, a stale lock; what a version carries. A real sqlite store each."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.errors import StackError
from mlstack.settings import Gates
from mlstack.train import registry, tracking
from mlstack.train.evaluation import Decision, evaluate
from mlstack.train.training import HyperParams, TrainingLineage, TrainResult, train_and_log
from tests.support.cli import cli_argv

EXP, MODEL = "integrity", "integrity-model"
LINEAGE = TrainingLineage(
    "abc123", "data/churn.csv", "e" * 40, "kfp-id-9", "churn-training-y",
    feature_source_md5="f" * 32, feature_views="customer_features@0123456789abcdef",
)  # fmt: skip
GATES = Gates()


def _train(dataset: Path, uri: str, max_iter: int) -> TrainResult:
    return train_and_log(
        dataset,
        HyperParams(max_iter=max_iter),
        lineage=LINEAGE,
        tracking_uri=uri,
        experiment_name=EXP,
        test_size=0.25,
        split_seed=42,
    )


def _evaluate(dataset: Path, run_id: str, uri: str) -> Decision:
    return evaluate(
        dataset,
        run_id,
        model_name=MODEL,
        tracking_uri=uri,
        experiment_name=EXP,
        gates=GATES,
        test_size=0.25,
        split_seed=42,
    )


def _register(run: TrainResult, decision: Decision, uri: str) -> registry.Registration:
    return registry.register(
        run.run_id,
        run.model_uri,
        model_name=MODEL,
        decision=decision,
        tracking_uri=uri,
        experiment_name=EXP,
    )


def _versions(uri: str) -> list:
    client = MlflowClient(uri)
    found = client.search_model_versions(f"name='{MODEL}'")
    return sorted(
        (client.get_model_version(MODEL, v.version) for v in found), key=lambda v: int(v.version)
    )


@pytest.mark.reliability("registration-rollback-fails")
def test_a_registration_left_unfinished_is_redone_by_the_rerun(
    dataset_csv, tracking_uri, monkeypatch
):
    run = _train(dataset_csv, tracking_uri, 60)
    decision = _evaluate(dataset_csv, run.run_id, tracking_uri)

    def gone(*args, **kwargs):
        raise ConnectionError("registry went away")

    # the alias call fails, and so does the rollback: the version stays behind
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", gone)
    monkeypatch.setattr(MlflowClient, "delete_model_version", gone)
    with pytest.raises(ConnectionError):
        _register(run, decision, tracking_uri)
    monkeypatch.undo()
    (left,) = _versions(tracking_uri)
    assert left.aliases == [] and left.tags["registration"] == "pending"

    # the rerun does not report the orphan ('alias @None'): it removes it and registers anew
    again = _register(run, decision, tracking_uri)
    assert (again.alias, again.created) == ("champion", True)
    (version,) = _versions(tracking_uri)
    assert version.version == int(again.version) != left.version
    assert version.aliases == ["champion"] and version.tags["registration"] == "complete"
    # and a third call finds the finished version
    third = _register(run, decision, tracking_uri)
    assert (third.version, third.alias, third.created) == (again.version, "champion", False)


@pytest.mark.reliability("concurrent-first-registrations")
def test_two_first_registrations_racing_leave_one_champion(dataset_csv, tracking_uri):
    runs = [_train(dataset_csv, tracking_uri, n) for n in (60, 70)]
    # both evaluated before either registered: both saw no champion
    decisions = [_evaluate(dataset_csv, r.run_id, tracking_uri) for r in runs]
    assert [d.champion_version for d in decisions] == [None, None]

    start = threading.Barrier(2)
    results: list[registry.Registration | Exception] = [Exception("not run")] * 2

    def race(i: int) -> None:
        start.wait()
        try:
            results[i] = _register(runs[i], decisions[i], tracking_uri)
        except Exception as exc:  # what each racer ended with is the result
            results[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    won = [r for r in results if isinstance(r, registry.Registration)]
    lost = [r for r in results if not isinstance(r, registry.Registration)]
    assert len(won) == 1 and won[0].alias == "champion", results
    (loser,) = lost
    assert isinstance(loser, StackError)
    assert "the champion is now v" in str(loser) and "evaluate compared against none" in str(loser)
    # the registry: one version, the champion, complete; no orphan, no lock left
    (version,) = _versions(tracking_uri)
    assert str(version.version) == won[0].version and version.aliases == ["champion"]
    assert version.tags["registration"] == "complete"
    names = [m.name for m in MlflowClient(tracking_uri).search_registered_models()]
    assert names == [MODEL]


@pytest.mark.reliability("alias-moved-by-outside-writer")
def test_an_alias_moved_by_an_outside_writer_fails_the_registration(
    dataset_csv, tracking_uri, monkeypatch
):
    first = _train(dataset_csv, tracking_uri, 60)
    _register(first, _evaluate(dataset_csv, first.run_id, tracking_uri), tracking_uri)  # v1
    second = _train(dataset_csv, tracking_uri, 70)
    decision = _evaluate(dataset_csv, second.run_id, tracking_uri)
    assert decision.champion_version == "1"
    original = MlflowClient.set_registered_model_alias

    def and_then_someone_else(self, name, alias, version):
        original(self, name, alias, version)
        original(self, name, alias, "1")  # a writer outside the lock (UI, script) right after

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", and_then_someone_else)
    with pytest.raises(StackError, match="alias @challenger .* moved to v1 while v2"):
        _register(second, decision, tracking_uri)
    monkeypatch.undo()
    assert [v.version for v in _versions(tracking_uri)] == [1]  # v2 removed again


@pytest.mark.reliability("stale-registration-lock")
def test_a_stale_lock_is_broken_and_a_live_one_waited_for_in_bounds(tracking_uri):
    tracking.connect(tracking_uri, EXP)
    client = MlflowClient(tracking_uri)
    lock = MODEL + registry.LOCK_SUFFIX
    client.create_registered_model(lock)  # a registration killed while holding it
    with (
        pytest.raises(StackError, match="another registration of model .* retry later"),
        registry.registration_lock(client, MODEL, wait=0.5, stale=3600),
    ):
        pass
    with registry.registration_lock(client, MODEL, stale=0):  # older than 'stale': broken
        assert client.get_registered_model(lock).tags["holder"]
    assert [m.name for m in client.search_registered_models()] == []


@pytest.mark.reliability("version-carries-gates-digest")
def test_the_version_carries_lineage_gates_thresholds_and_digest(dataset_csv, tracking_uri):
    run = _train(dataset_csv, tracking_uri, 60)
    decision = _evaluate(dataset_csv, run.run_id, tracking_uri)
    client = MlflowClient(tracking_uri)
    # what evaluate records besides the gates (thresholds, digest), whoever writes it
    client.set_tag(run.run_id, f"{tracking.TAG_THRESHOLD_PREFIX}min_roc_auc", "0.5")
    client.set_tag(run.run_id, tracking.TAG_MODEL_DIGEST, "sha256:" + "a" * 64)
    client.set_tag(run.run_id, "unrelated", "not copied")
    reg = _register(run, decision, tracking_uri)
    tags = client.get_model_version(MODEL, reg.version).tags
    assert tags["gate.min_roc_auc"] == "pass" and tags["gate.vs_champion"] == "pass"
    assert tags["gate_threshold.min_roc_auc"] == "0.5"
    assert tags["model_digest"] == "sha256:" + "a" * 64
    for key in tracking.LINEAGE_TAGS:
        assert tags[key] == client.get_run(run.run_id).data.tags[key]
    assert "unrelated" not in tags and tags["mlflow_run_id"] == run.run_id


class _FailingMlflow(BaseHTTPRequestHandler):
    """An MLflow server that is up (``/health`` answers) but fails every API call with 503."""

    calls: list[str] = []

    def do_GET(self) -> None:
        if self.path != "/health":
            self.calls.append(self.path)
        status = 200 if self.path == "/health" else 503
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"OK" if status == 200 else b"no")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (upstream's name)
        pass


@pytest.mark.reliability("mlflow-answers-503")
def test_a_command_against_a_failing_mlflow_is_one_line_after_bounded_retries(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    # MLflow's own defaults, whatever an earlier test in this process set
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env.update(MLFLOW_TRACKING_URI=uri, MLSTACK_STATE_DIR=str(tmp_path / "state"))
    try:
        started = time.monotonic()
        done = subprocess.run(
            cli_argv("serve", "--version", "1"),
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"error: MLflow at {uri} failed to look up version 1 of model 'churn-classifier': "
    )  # not "has no version 1": the server failed, the version may well exist
    assert len(_FailingMlflow.calls) == 3  # one try and tracking.HTTP_LIMITS' two retries
    assert took < 3 * 30  # README: one line within 30 s (MLflow's defaults: over 4 minutes)


def test_cache_entries_naming_a_missing_run_are_dropped(tmp_path: Path, tracking_uri: str):
    from mlstack.pipeline.local import drop_stale_cache_entries

    experiment = tracking.connect(tracking_uri, EXP)
    live = MlflowClient(tracking_uri).create_run(experiment).info.run_id
    cache = tmp_path / "cache"
    cache.mkdir()
    entries = {
        "live": {"mlflow_run_id": live, "model_uri": "models:/m-1"},
        "gone": {"mlflow_run_id": "0" * 32, "model_uri": "models:/m-2"},
        "ingest": {"data_md5": "abc", "git_sha": "f" * 40},
    }
    for name, outputs in entries.items():
        (cache / f"{name}.json").write_text(json.dumps(outputs))
    assert drop_stale_cache_entries(cache, tracking_uri) == ["0" * 32]
    assert sorted(p.stem for p in cache.glob("*.json")) == ["ingest", "live"]
    # no store file at all: every entry naming a run goes, and no store is made by looking
    missing = f"sqlite:///{tmp_path / 'lost' / 'mlflow.db'}"
    assert drop_stale_cache_entries(cache, missing) == [live]
    assert not (tmp_path / "lost").exists()
