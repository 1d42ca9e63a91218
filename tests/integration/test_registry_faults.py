"""The whole local pipeline under registry faults: a lost store under a warm cache, data whose
held-out split lacks a class, an MLflow server killed mid-train."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient

from mlstack.data import versions
from mlstack.errors import StackError
from mlstack.pipeline.local import run_pipeline
from mlstack.settings import DEFAULTS, Settings
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log
from tests.conftest import free_port
from tests.support import servers
from tests.support.cli import cli_argv, run_cli
from tests.unit.test_validation import positives_only_in_training

pytestmark = pytest.mark.slow
DOCUMENTED_BOUND = 30.0  # README, "Bad input": an MLflow server dying mid-step


@pytest.mark.reliability("store-lost-cache-not-trusted")
def test_a_lost_store_is_not_served_from_the_cache(data_repo: Path, tmp_path: Path):
    env = {"MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(tmp_path / "state")}
    uri = Settings(repo_root=data_repo, state_dir=tmp_path / "state").mlflow_tracking_uri
    first = run_cli("pipeline", "run", "-o", "json", env=env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads(first.stdout)
    assert (before["model_version"], before["alias"]) == ("1", "champion")
    # the MLflow store (database and artifacts) is lost; the KFP cache under state/kfp is not
    store = Path(uri.removeprefix("sqlite:///"))
    store.unlink()
    shutil.rmtree(store.parent / "mlartifacts")

    again = run_cli("pipeline", "run", "-o", "json", env=env, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads(again.stdout)
    # the cached train step named a run that no longer exists: it ran again
    assert f"names MLflow run {before['mlflow_run_id']}" in again.stderr + again.stdout
    assert "train" in after["executed"] and after["mlflow_run_id"] != before["mlflow_run_id"]
    assert (after["model_version"], after["alias"], after["registered_now"]) == (
        "1",
        "champion",
        True,
    )
    client = MlflowClient(uri)
    assert client.get_run(after["mlflow_run_id"]).info.status == "FINISHED"
    mv = client.get_model_version(DEFAULTS.model_name, "1")
    assert mv.run_id == after["mlflow_run_id"] and mv.tags["registration"] == "complete"


def test_data_whose_held_out_split_lacks_a_class_stops_at_validate(
    settings, data_repo: Path, tmp_path: Path
):
    small = tmp_path / "small.csv"
    positives_only_in_training().to_csv(small, index=False)
    versions.add_version(data_repo, small, data_path="data/churn.csv", message="data: 200 rows")
    with pytest.raises(StackError) as err:
        run_pipeline(settings, out=io.StringIO())
    message = str(err.value)
    assert message.startswith("pipeline failed at step 'validate': data validation failed:")
    assert "the held-out split (test_size 0.25, split_seed 42" in message
    assert "no rows of class 1 (churned)" in message and "\n" not in message
    # training never ran: no MLflow run at all
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


class _KillingProxy(ThreadingHTTPServer):
    """Forwards every request to an MLflow server; once the answer to the request that creates
    a run has gone back, kills that server and stops listening: the server dies mid-train.
    With ``refuse_artifacts``, it answers every artifact upload 403 instead and kills nothing."""

    daemon_threads = True

    def __init__(
        self,
        port: int,
        target: str,
        server: subprocess.Popen | None,
        refuse_artifacts: bool = False,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Forward)
        self.target = urlsplit(target)
        self.server_process = server
        self.refuse_artifacts = refuse_artifacts
        self.killed_at: float | None = None

    def kill_backend(self) -> None:
        if self.killed_at is None and self.server_process is not None:
            servers.kill(self.server_process)  # mlflow server and its uvicorn child
            self.killed_at = time.monotonic()
            threading.Thread(target=self._close, daemon=True).start()

    def _close(self) -> None:
        self.shutdown()
        self.server_close()  # connections refused from now on


class _Forward(BaseHTTPRequestHandler):
    server: _KillingProxy

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.refuse_artifacts and self.command == "PUT" and "artifacts" in self.path:
            self.send_response(403)  # not retried by MLflow's client
            self.send_header("content-length", "0")
            self.end_headers()
            return
        target = self.server.target
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()
        if (
            self.command == "POST"
            and self.path.endswith("/runs/create")
            and not (self.server.refuse_artifacts)
        ):
            self.server.kill_backend()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (upstream's name)
        pass


@pytest.mark.reliability("mlflow-dies-mid-train")
def test_mlflow_dying_mid_train_is_one_line_within_the_stated_bound(
    data_repo: Path, tmp_path: Path
):
    port, proxy_port = free_port(), free_port()
    env = {**os.environ, **servers.MLFLOW_SERVER_ENV}
    backend = servers.start(
        servers.mlflow_server_argv(port, tmp_path),
        tmp_path / "mlflow.log",
        f"http://127.0.0.1:{port}/health",
        env=env,
    )
    proxy = _KillingProxy(proxy_port, f"http://127.0.0.1:{port}", backend)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    cli_env = {
        **env,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy_port}",
        "MLSTACK_REPO_ROOT": str(data_repo),
        "MLSTACK_STATE_DIR": str(tmp_path / "state"),
    }
    try:
        done = subprocess.run(
            cli_argv("pipeline", "run"), capture_output=True, text=True, env=cli_env, timeout=1200
        )
        ended = time.monotonic()
    finally:
        servers.stop(backend)
        if proxy.killed_at is None:
            proxy.server_close()
    assert proxy.killed_at is not None, "the run was never created:\n" + done.stderr[-2000:]
    assert done.returncode == 1, done.stdout[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "error: pipeline failed at step 'train': logging the training run to MLflow at "
        f"http://127.0.0.1:{proxy_port} failed: "
    ), done.stderr
    # a bound on the retries and timeouts, generously (three times what the README states)
    assert ended - proxy.killed_at < 3 * DOCUMENTED_BOUND


@pytest.mark.reliability("run-logging-fails")
def test_a_run_whose_logging_fails_is_ended_failed_in_one_line(dataset_csv: Path, tmp_path: Path):
    port, proxy_port = free_port(), free_port()
    with servers.mlflow_server(tmp_path, port) as uri:
        proxy = _KillingProxy(proxy_port, uri, None, refuse_artifacts=True)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            with pytest.raises(StackError) as err:
                train_and_log(
                    dataset_csv,
                    HyperParams(max_iter=20),
                    lineage=TrainingLineage(),
                    tracking_uri=f"http://127.0.0.1:{proxy_port}",
                    experiment_name="refused",
                    test_size=0.25,
                    split_seed=42,
                )
        finally:
            proxy.shutdown()
            proxy.server_close()
        message = str(err.value)
        assert message.startswith(
            f"logging the training run to MLflow at http://127.0.0.1:{proxy_port} failed: "
        )
        assert "\n" not in message
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("refused")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FAILED"  # not left RUNNING


_REGISTER = """
import sys, time
from pathlib import Path
from mlstack.errors import exit_on_error
from mlstack.train.evaluation import Decision
from mlstack.train.registry import register
go, run_id, model_uri, uri, decision = sys.argv[1:6]
Path(f"{go}.{run_id}").touch()  # imported, ready
while not Path(go).exists():
    time.sleep(0.01)
with exit_on_error():
    reg = register(run_id, model_uri, model_name="raced", decision=Decision.from_json(decision),
                   tracking_uri=uri, experiment_name="raced")
print(reg.version, reg.alias)
"""


@pytest.mark.reliability("concurrent-registrations-on-a-server")
def test_two_processes_racing_on_one_mlflow_server_leave_one_champion(
    dataset_csv: Path, tmp_path: Path
):
    from mlstack.settings import Gates
    from mlstack.train.evaluation import evaluate

    with servers.mlflow_server(tmp_path, free_port()) as uri:
        runs = [
            train_and_log(
                dataset_csv,
                HyperParams(max_iter=n),
                lineage=TrainingLineage(),
                tracking_uri=uri,
                experiment_name="raced",
                test_size=0.25,
                split_seed=42,
            )
            for n in (60, 70)
        ]
        decisions = [
            evaluate(
                dataset_csv,
                r.run_id,
                model_name="raced",
                tracking_uri=uri,
                experiment_name="raced",
                gates=Gates(),
                test_size=0.25,
                split_seed=42,
            )
            for r in runs
        ]
        assert [d.champion_version for d in decisions] == [None, None]
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [
                    sys.executable, "-c", _REGISTER,
                    str(go), r.run_id, r.model_uri, uri, d.to_json(),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r, d in zip(runs, decisions, strict=True)
        ]  # fmt: skip
        ready = [Path(f"{go}.{r.run_id}") for r in runs]
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()  # both imported and polling: they start within milliseconds of each other
        results = [p.communicate(timeout=600) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 1], results
        (winner,) = [
            out.split() for (out, _), p in zip(results, procs, strict=True) if p.returncode == 0
        ]
        (loser_err,) = [
            err for (_, err), p in zip(results, procs, strict=True) if p.returncode == 1
        ]
        assert winner[1] == "champion"
        assert loser_err.strip().splitlines()[-1].startswith("error: not registering run ")
        client = MlflowClient(uri)
        versions = client.search_model_versions("name='raced'")
        assert [str(v.version) for v in versions] == [winner[0]]
        assert str(client.get_model_version_by_alias("raced", "champion").version) == winner[0]
        assert [m.name for m in client.search_registered_models()] == ["raced"]  # lock released
