"""A canary analysed and acted on for real, on 127.0.0.1: two predictor processes (``python -m
serving``: the stable version 1 and the canary version 2 of a model trained and registered by
the pipeline's own steps) scraped every second by a real Prometheus with the target labels the
Prometheus Operator gives KServe's predictor pods (namespace, pod, container, endpoint; the
predictor's own model_name and model_version), a bounded traffic driver sending a fixed number
of requests split 90/10, then ``rollout.analyze`` over the window of that traffic and the
lifecycle action on its verdict in a scratch git repository holding the manifests.

The predictors and Prometheus are shared by the cases: each case drives its own traffic, waits
until Prometheus has scraped all of it, and is analysed over its own window (``at`` = the end of
its traffic, the window reaching back to its start only), so the cases do not see each other."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlstack.data import generate
from mlstack.deploy import lifecycle, promote, rollout
from mlstack.settings import CanaryThresholds, code_root
from mlstack.train.training import TrainingLineage
from serving.codec import NAMES, NUMERIC
from tests.conftest import free_port, git
from tests.support.servers import call, running, two_releases

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,  # two predictors, a Prometheus and ~6000 requests
    pytest.mark.skipif(not PROMETHEUS, reason="make tools installs prometheus"),
]

MODEL = "churn-canary"
NAMESPACE = "ml-production"
ENV = "production"
LINEAGE = TrainingLineage("md5-cn", "data/churn.csv", "c" * 40, "kfp-run-c", "churn-training-c")
PROD = "manifests/overlays/production/promotion.yaml"
ROWS_PER_REQUEST = 8
# the project's thresholds, but for the latency floor: this test runs beside other work on a
# shared machine, and a scheduler stall of the canary's process is not a slower model (the
# latency check is covered on fixed series in tests/unit/test_rollout.py)
THRESHOLDS = CanaryThresholds(p99_latency_floor_s=2.0)
# enough requests for min_requests on the canary at 10 % (with a margin for extrapolation)
FULL = 3000
QUIET = 600  # the canary gets 60: below min_requests


@dataclass
class Pod:
    name: str  # the pod name Prometheus labels its series with
    version: str
    url: str
    ok: int = 0  # requests answered 200 so far (all cases)
    refused: int = 0  # requests refused 400 so far


@dataclass
class Stack:
    uri: str  # the store the predictors serve from (v1 @champion, v2 @challenger)
    db: Path
    releases: dict[str, promote.Release]
    prometheus: str
    stable: Pod
    canary: Pod
    rows: list[list[object]]  # request rows (JSON-ready, in NAMES order)
    scores: np.ndarray  # the stable model's churn score of each row
    last_at: float = 0.0  # the end of the last case's window
    log: list[str] = field(default_factory=list)


def json_rows(rows: int, seed: int) -> list[list[object]]:
    df = generate.generate(rows, seed)[NAMES]
    out = []
    for rec in df.itertuples(index=False):
        row: list[object] = []
        for v in rec:
            if pd.isna(v):  # a missing value (NaN, pd.NA) is JSON null
                row.append(None)
            elif hasattr(v, "item"):
                row.append(v.item())
            else:
                row.append(v)
        out.append(row)
    return out


def refused_row(row: list[object]) -> list[object]:
    """``row`` with a numeric feature below its minimum: the predictor refuses it (400,
    ``model_input_errors_total{reason="out_of_range"}``)."""
    feature = next(f for f in NUMERIC if f.min is not None)
    bad = list(row)
    bad[NAMES.index(feature.name)] = feature.min - 1
    return bad


def predictor(pod: Pod, port: int, uri: str, log: Path):
    argv = [
        sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}/{pod.version}",
        "--model_name", MODEL, "--host", "127.0.0.1", "--http_port", str(port),
        "--enable_grpc", "false",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return running(argv, log, f"{pod.url}/v2/health/ready", env=env, timeout=240)


def prometheus_config(path: Path, pods: list[tuple[Pod, int]]) -> None:
    """What the Prometheus Operator makes of manifests/base/podmonitor.yaml for the predictor's
    stable and canary pods: their namespace, pod, container and endpoint as target labels,
    honor_labels off, /metrics; scraped every second here (15 s in the cluster)."""
    targets = [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {
                "namespace": NAMESPACE,
                "pod": pod.name,
                "container": "kserve-container",
                "endpoint": "user-port",
            },
        }
        for pod, port in pods
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": f"{NAMESPACE}/churn-predictor",
                "honor_labels": False,
                "metrics_path": "/metrics",
                "static_configs": targets,
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("canary")
    # v1 the bootstrap champion, v2 the challenger (the same parameters)
    uri, releases = two_releases(root, model=MODEL, lineage=LINEAGE, experiment="canary")
    ports = {"stable": free_port(), "canary": free_port()}
    stable = Pod(
        "churn-classifier-predictor-7d9f8b6c5-stab1", "1", f"http://127.0.0.1:{ports['stable']}"
    )
    canary = Pod(
        "churn-classifier-predictor-canary-5b8c7d9f6-can42", "2",
        f"http://127.0.0.1:{ports['canary']}",
    )  # fmt: skip
    prom_port = free_port()
    prometheus_config(
        root / "prometheus.yml", [(stable, ports["stable"]), (canary, ports["canary"])]
    )
    prom = f"http://127.0.0.1:{prom_port}"
    prom_argv = [
        str(PROMETHEUS), f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip
    with (
        predictor(stable, ports["stable"], uri, root / "stable.log"),
        predictor(canary, ports["canary"], uri, root / "canary.log"),
        running(prom_argv, root / "prometheus.log", f"{prom}/-/ready", timeout=120),
    ):
        rows = json_rows(2000, 11)
        scores = []
        for i in range(0, len(rows), 200):  # the stable model's scores of the request rows
            status, _, body = call(
                f"{stable.url}/v1/models/{MODEL}:predict",
                {"instances": rows[i : i + 200], "parameters": {"probabilities": True}},
            )
            assert status == 200, body
            scores.extend(p[1] for p in json.loads(body)["probabilities"])
            stable.ok += 1
        stack = Stack(
            uri, Path(uri.removeprefix("sqlite:///")), releases, prom, stable, canary, rows,
            np.asarray(scores),
        )  # fmt: skip
        stack.last_at = wait_scraped(stack)  # the scoring requests: before every case's window
        yield stack


def prom_query(stack: Stack, expr: str) -> list[dict]:
    status, _, body = call(f"{stack.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def scraped(stack: Stack) -> dict[str, tuple[float, float]]:
    """(predict calls, refusals) of each pod in Prometheus' newest samples."""
    out: dict[str, list[float]] = {p.name: [0.0, 0.0] for p in (stack.stable, stack.canary)}
    sel = f'namespace="{NAMESPACE}",model_name="{MODEL}"'
    for i, expr in enumerate(
        (
            f"sum by (pod) (request_predict_seconds_count{{{sel}}})",
            f"sum by (pod) (model_input_errors_total{{{sel}}})",
        )
    ):
        for r in prom_query(stack, expr):
            if r["metric"].get("pod") in out:
                out[r["metric"]["pod"]][i] = float(r["value"][1])
    return {pod: (v[0], v[1]) for pod, v in out.items()}


def wait_scraped(stack: Stack, timeout: float = 120) -> float:
    """Poll Prometheus until its newest samples of both pods hold every request sent so far;
    returns the time then (every sample of the traffic is at or before it)."""
    # KServe's request_predict_seconds times every predict call, refused ones included
    want = {
        p.name: (float(p.ok + p.refused), float(p.refused)) for p in (stack.stable, stack.canary)
    }
    deadline = time.monotonic() + timeout
    got: dict[str, tuple[float, float]] = {}
    while time.monotonic() < deadline:
        got = scraped(stack)
        if got == want:
            time.sleep(1.5)  # one more scrape: the newest sample lies inside the window too
            return time.time()
        time.sleep(0.5)
    pytest.fail(f"Prometheus did not scrape the traffic within {timeout} s: {got} != {want}")


def drive(stack: Stack, requests: list[tuple[Pod, list[list[object]]]]) -> Counter[tuple[str, int]]:
    """Send each request (a pod and its rows) once, two at a time; counts of (pod, status)."""

    def send(item: tuple[Pod, list[list[object]]]) -> tuple[str, int]:
        pod, rows = item
        status, _, _ = call(f"{pod.url}/v1/models/{MODEL}:predict", {"instances": rows})
        return pod.name, status

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = Counter(pool.map(send, requests))
    for pod in (stack.stable, stack.canary):
        pod.ok += results[(pod.name, 200)]
        pod.refused += results[(pod.name, 400)]
    return results


def split(
    stack: Stack,
    total: int,
    *,
    canary_rows: np.ndarray | None = None,
    canary_refused_every: int = 0,
) -> list[tuple[Pod, list[list[object]]]]:
    """``total`` requests of ROWS_PER_REQUEST rows, every tenth to the canary (90/10); the
    canary's rows from ``canary_rows`` (indexes) when given, and every
    ``canary_refused_every``-th canary request carrying a row the predictor refuses."""
    rng = np.random.default_rng(total + canary_refused_every)
    pool_all = np.arange(len(stack.rows))
    out = []
    for i in range(total):
        to_canary = i % 10 == 0
        source = canary_rows if (to_canary and canary_rows is not None) else pool_all
        rows = [stack.rows[j] for j in rng.choice(source, ROWS_PER_REQUEST)]
        if to_canary and canary_refused_every and (i // 10) % canary_refused_every == 0:
            rows[0] = refused_row(rows[0])
        out.append((stack.canary if to_canary else stack.stable, rows))
    return out


def run_case(stack: Stack, requests: list[tuple[Pod, list[list[object]]]]) -> rollout.Verdict:
    """Drive ``requests`` in a window of their own and analyse it: the window starts just after
    the previous case's end (every sample of its traffic lies before that) and holds a few
    scrapes of the counters at rest before this case's first request (the base ``increase``
    counts from, even if a scrape comes late on a busy machine)."""
    opens = stack.last_at + 0.5
    while time.time() < opens + 3.5:
        time.sleep(0.2)
    results = drive(stack, requests)
    assert sum(n for (_, status), n in results.items() if status not in (200, 400)) == 0, results
    at = wait_scraped(stack)
    stack.last_at = at
    window = f"{math.floor(at - opens)}s"
    return rollout.analyze(
        stack.prometheus,
        model_name=MODEL,
        namespace=NAMESPACE,
        thresholds=THRESHOLDS,
        window=window,
        at=at,
    )


@dataclass(frozen=True)
class World:
    """A copy of the store, and a git repository whose production overlay went v1 at 100 %
    then v2 as a 10 % canary, each a commit (what the stack serves)."""

    uri: str
    manifests: Path
    repo: Path
    stable_sha: str
    canary_sha: str

    @property
    def overlay(self) -> Path:
        return self.repo / PROD

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    def text_at(self, sha: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), "show", f"{sha}:{PROD}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def alias(self, alias: str) -> str | None:
        try:
            return str(MlflowClient(self.uri).get_model_version_by_alias(MODEL, alias).version)
        except MlflowException:
            return None

    def tags(self, version: str) -> dict[str, str]:
        return dict(MlflowClient(self.uri).get_model_version(MODEL, version).tags)


@pytest.fixture
def world(stack: Stack, tmp_path: Path) -> World:
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(stack.db, db)
    root = tmp_path / "gitops"
    shutil.copytree(code_root() / "manifests", root / "manifests")
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    git(root, "add", ".")
    git(root, "commit", "-qm", "manifests")
    manifests = root / "manifests"
    promote.promote(manifests, ENV, stack.releases["1"], canary=100)
    git(root, "commit", "-qam", "promote v1 to production")
    stable = git(root, "rev-parse", "HEAD")
    promote.promote(manifests, ENV, stack.releases["2"], canary=10)
    git(root, "commit", "-qam", "promote v2 to production: 10 % canary")
    return World(f"sqlite:///{db}", manifests, root, stable, git(root, "rev-parse", "HEAD"))


def act(verdict: rollout.Verdict, world: World) -> lifecycle.Outcome | None:
    """What the rollout workflow does with a verdict: promote, roll back (the failed checks as
    the reason), or nothing on wait."""
    if verdict.decision == rollout.PROMOTE:
        return lifecycle.promote_canary(
            world.manifests, ENV, model_name=MODEL, tracking_uri=world.uri, actor="test",
            allow_local_storage=True,
        )  # fmt: skip
    if verdict.decision == rollout.ROLLBACK:
        reason = "; ".join(c.line for c in verdict.checks if c.status == rollout.FAIL)
        return lifecycle.rollback_canary(
            world.manifests, ENV, model_name=MODEL, tracking_uri=world.uri, actor="test",
            reason=reason,
        )  # fmt: skip
    return None


def statuses(verdict: rollout.Verdict) -> dict[str, str]:
    return {c.name: c.status for c in verdict.checks}


def explain(verdict: rollout.Verdict) -> str:
    return "\n".join([verdict.decision, *(c.line for c in verdict.checks)])


def assert_rolled_back(world: World, outcome: lifecycle.Outcome | None, before: str) -> None:
    assert outcome is not None and (outcome.version, outcome.other_version) == ("2", "1")
    assert outcome.committed and outcome.recorded
    head = world.head()
    assert git(world.repo, "rev-parse", "HEAD~1") == before
    assert world.overlay.read_text() == world.text_at(world.stable_sha)  # the revert
    assert git(world.repo, "show", "--name-only", "--format=", "HEAD") == PROD
    assert lifecycle.overlay_state(world.overlay.read_text(), world.overlay) == (
        lifecycle.OverlayState("1", 100)
    )
    assert world.alias("champion") == "1" and world.alias("previous") is None
    tags = world.tags("2")
    assert tags["rolled_back"] == "true" and tags["rolled_back.commit"] == head


def test_too_little_canary_traffic_waits_and_changes_nothing(stack: Stack, world: World):
    verdict = run_case(stack, split(stack, QUIET))
    assert verdict.decision == rollout.WAIT, explain(verdict)
    assert (verdict.stable_version, verdict.canary_version) == ("1", "2")
    traffic = next(c for c in verdict.checks if c.name == "traffic")
    assert traffic.status == rollout.WAIT and "canary v2" in traffic.line, traffic.line
    assert act(verdict, world) is None
    assert world.head() == world.canary_sha and git(world.repo, "status", "--porcelain") == ""
    assert world.alias("champion") == "1"


def test_a_healthy_canary_is_promoted_through_a_commit_and_becomes_champion(
    stack: Stack, world: World
):
    verdict = run_case(stack, split(stack, FULL))
    assert verdict.decision == rollout.PROMOTE, explain(verdict)
    assert set(statuses(verdict).values()) == {rollout.PASS}, explain(verdict)
    outcome = act(verdict, world)
    assert outcome is not None and outcome.committed and outcome.recorded, outcome
    head = world.head()
    assert outcome.commit == head and git(world.repo, "rev-parse", "HEAD~1") == world.canary_sha
    assert git(world.repo, "show", "--name-only", "--format=", "HEAD") == PROD
    assert lifecycle.overlay_state(world.overlay.read_text(), world.overlay) == (
        lifecycle.OverlayState("2", 100)
    )
    assert (world.alias("champion"), world.alias("previous")) == ("2", "1")
    assert world.tags("2")["champion.commit"] == head


@pytest.mark.reliability("canary-for-real-errors")
def test_a_canary_refusing_more_requests_is_reverted_and_the_champion_stays(
    stack: Stack, world: World
):
    # one canary request in four carries a row out of range: ~25 % refused against stable's 0 %
    verdict = run_case(stack, split(stack, FULL, canary_refused_every=4))
    assert verdict.decision == rollout.ROLLBACK, explain(verdict)
    failed = {n for n, s in statuses(verdict).items() if s == rollout.FAIL}
    assert failed == {"error_ratio"}, explain(verdict)
    assert_rolled_back(world, act(verdict, world), world.canary_sha)
    assert world.tags("2")["rolled_back.reason"].startswith("error ratio: canary ")


@pytest.mark.reliability("canary-for-real-score-shift")
def test_a_canary_whose_scores_diverge_is_reverted_and_the_champion_stays(
    stack: Stack, world: World
):
    # the canary scores only customers the stable model gives >= 0.5: its score histogram
    # diverges from stable's
    high = np.flatnonzero(stack.scores >= 0.5)
    assert high.size >= 50
    verdict = run_case(stack, split(stack, FULL, canary_rows=high))
    assert verdict.decision == rollout.ROLLBACK, explain(verdict)
    failed = {n for n, s in statuses(verdict).items() if s == rollout.FAIL}
    assert failed == {"score_psi"}, explain(verdict)
    assert_rolled_back(world, act(verdict, world), world.canary_sha)
    assert world.tags("2")["rolled_back.reason"].startswith("score PSI: ")
