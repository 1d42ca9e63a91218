"""Canary analysis against a real Prometheus: deterministic series of a stable and a canary pod
per namespace are backfilled with ``promtool tsdb create-blocks-from openmetrics``, a
``prometheus`` serves them on 127.0.0.1, and ``mlstack rollout analyze`` is evaluated at a fixed
time (``--at``), so nothing depends on the wall clock."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mlstack.deploy import rollout
from mlstack.errors import StackError
from mlstack.settings import CanaryThresholds
from tests.conftest import free_port
from tests.support.cli import run_cli
from tests.support.servers import running

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="needs the prometheus and promtool binaries (Debian package prometheus)",
)

MODEL = "churn-classifier"
AT = 1_767_227_400  # 2026-01-01T00:30:00Z: the evaluation time of every case
START = AT - 1800
STEP = 15
LATENCY_LE = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
FAST = (0.2, 0.6, 0.9, 0.97, 0.985, 0.995, 1.0, 1.0, 1.0)  # cumulative shares
SLOW = (0.0, 0.05, 0.3, 0.6, 0.8, 0.9, 0.97, 1.0, 1.0)
SCORE_LE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCORES = (0.3, 0.2, 0.12, 0.08, 0.06, 0.06, 0.05, 0.05, 0.04, 0.04)  # per-bin shares
SHIFTED = tuple(reversed(SCORES))


@dataclass(frozen=True)
class Pod:
    version: str
    rps: float  # predict calls per second (KServe's request_predict_seconds: refused ones too)
    refused_rps: float
    latency: tuple[float, ...] = FAST
    scores: tuple[float, ...] = SCORES


STABLE = Pod("3", rps=4.0, refused_rps=0.02)
# namespace -> the canary (version 4) beside STABLE
CASES = {
    "healthy": Pod("4", rps=1.0, refused_rps=0.005),
    "erroring": Pod("4", rps=1.0, refused_rps=0.15),
    "slow": Pod("4", rps=1.0, refused_rps=0.005, latency=SLOW),
    "shifted": Pod("4", rps=1.0, refused_rps=0.005, scores=SHIFTED),
    "quiet": Pod("4", rps=0.2, refused_rps=0.001),  # 120 requests in 10 minutes
}


def _cumulative(shares: tuple[float, ...]) -> list[float]:
    out, total = [], 0.0
    for share in shares:
        total += share
        out.append(min(total, 1.0))
    return out


def openmetrics() -> str:
    """Every series of every case, 30 minutes at a 15 s scrape interval, ending at ``AT``."""
    times = range(START, AT + 1, STEP)
    fams: dict[str, list[str]] = {
        "request_predict_seconds": [],
        "model_input_errors": [],
        "model_prediction_score": [],
        "model_info": [],
    }
    for ns, canary in CASES.items():
        for name, pod in (("stable", STABLE), ("canary", canary)):
            base = f'namespace="{ns}",pod="{ns}-{name}",model_name="{MODEL}"'
            versioned = f'{base},model_version="{pod.version}"'

            lat = fams["request_predict_seconds"]
            for le, share in zip((*LATENCY_LE, "+Inf"), (*pod.latency, 1.0), strict=True):
                lat.extend(
                    f'request_predict_seconds_bucket{{{base},le="{le}"}} '
                    f"{round(pod.rps * (t - START) * share)} {t}"
                    for t in times
                )
            lat.extend(
                f"request_predict_seconds_count{{{base}}} {round(pod.rps * (t - START))} {t}"
                for t in times
            )
            lat.extend(
                f"request_predict_seconds_sum{{{base}}} {pod.rps * (t - START) * 0.01:.3f} {t}"
                for t in times
            )
            fams["model_input_errors"].extend(
                f'model_input_errors_total{{{base},reason="out_of_range"}} '
                f"{round(pod.refused_rps * (t - START))} {t}"
                for t in times
            )
            score = fams["model_prediction_score"]
            cumulative = _cumulative(pod.scores)
            for le, share in zip((*SCORE_LE, "+Inf"), (*cumulative, 1.0), strict=True):
                score.extend(
                    f'model_prediction_score_bucket{{{versioned},le="{le}"}} '
                    f"{round(pod.rps * (t - START) * share)} {t}"
                    for t in times
                )
            score.extend(
                f"model_prediction_score_count{{{versioned}}} {round(pod.rps * (t - START))} {t}"
                for t in times
            )
            fams["model_info"].extend(
                f'model_info{{{versioned},data_md5="x",git_sha="y"}} 1 {t}' for t in times
            )
    kinds = {
        "request_predict_seconds": "histogram",
        "model_input_errors": "counter",
        "model_prediction_score": "histogram",
        "model_info": "gauge",
    }
    lines = []
    for fam, samples in fams.items():
        lines.append(f"# TYPE {fam} {kinds[fam]}")
        lines.extend(samples)
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prometheus")
    source = root / "series.om"
    source.write_text(openmetrics())
    data = root / "data"
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    config = root / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=100y",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(argv, root / "prometheus.log", f"{url}/-/ready", timeout=120):
        yield url


def analyze(url: str, namespace: str) -> rollout.Verdict:
    return rollout.analyze(
        url, model_name=MODEL, namespace=namespace, thresholds=CanaryThresholds(), at=AT
    )


def lines(verdict: rollout.Verdict) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.line) for c in verdict.checks}


def test_a_healthy_canary_is_promoted_with_exit_0(prometheus: str):
    verdict = analyze(prometheus, "healthy")
    assert (verdict.decision, verdict.stable_version, verdict.canary_version) == (
        rollout.PROMOTE,
        "3",
        "4",
    )
    assert {status for status, _ in lines(verdict).values()} == {rollout.PASS}
    done = run_cli(
        "rollout", "analyze", "--env", "production", "--namespace", "healthy",
        "--prometheus", prometheus, "--at", str(AT), "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["decision"] == "promote" and report["exit_code"] == 0
    assert [c["name"] for c in report["checks"]] == [
        "traffic",
        "error_ratio",
        "p99_latency",
        "score_psi",
    ]


@pytest.mark.reliability("canary-error-ratio")
def test_a_canary_refusing_more_requests_is_rolled_back_with_exit_20(prometheus: str):
    verdict = analyze(prometheus, "erroring")
    assert verdict.decision == rollout.ROLLBACK
    status, line = lines(verdict)["error_ratio"]
    assert status == rollout.FAIL and line.startswith("error ratio: canary 15.0")
    assert {n for n, (s, _) in lines(verdict).items() if s == rollout.FAIL} == {"error_ratio"}
    done = run_cli(
        "rollout", "analyze", "--env", "production", "--namespace", "erroring",
        "--prometheus", prometheus, "--at", str(AT),
    )  # fmt: skip
    assert done.returncode == 20, done.stderr
    assert done.stdout.startswith("rollback: churn-classifier canary v4 against stable v3")
    assert "fail  error ratio: canary" in done.stdout


@pytest.mark.reliability("canary-latency")
def test_a_slower_canary_is_rolled_back(prometheus: str):
    verdict = analyze(prometheus, "slow")
    assert verdict.decision == rollout.ROLLBACK
    assert {n for n, (s, _) in lines(verdict).items() if s == rollout.FAIL} == {"p99_latency"}


@pytest.mark.reliability("canary-score-shift")
def test_a_canary_with_shifted_scores_is_rolled_back_on_psi(prometheus: str):
    verdict = analyze(prometheus, "shifted")
    assert verdict.decision == rollout.ROLLBACK
    status, line = lines(verdict)["score_psi"]
    assert status == rollout.FAIL and line.startswith("score PSI: ")
    assert float(line.split()[2]) > CanaryThresholds().max_score_psi
    assert {n for n, (s, _) in lines(verdict).items() if s == rollout.FAIL} == {"score_psi"}


@pytest.mark.reliability("canary-too-little-traffic")
def test_too_little_canary_traffic_waits_with_exit_10(prometheus: str):
    verdict = analyze(prometheus, "quiet")
    assert verdict.decision == rollout.WAIT
    status, line = lines(verdict)["traffic"]
    assert status == rollout.WAIT and "canary v4" in line and "below 200" in line
    done = run_cli(
        "rollout", "analyze", "--env", "production", "--namespace", "quiet",
        "--prometheus", prometheus, "--at", str(AT),
    )  # fmt: skip
    assert done.returncode == 10, done.stderr


@pytest.mark.reliability("canary-absent")
def test_a_namespace_without_a_canary_is_one_error_line(prometheus: str):
    done = run_cli(
        "rollout", "analyze", "--env", "production", "--prometheus", prometheus,
        "--at", str(AT),
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: expected 2 versions of churn-classifier serving in ")
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.reliability("canary-prometheus-unreachable")
def test_an_unreachable_prometheus_is_one_error_line():
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("rollout", "analyze", "--env", "production", env={"MLSTACK_PROMETHEUS_URL": url})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"error: cannot query Prometheus at {url} (")
    assert "MLSTACK_PROMETHEUS_URL" in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--window", "10 minutes"), "error: window '10 minutes' is not a Prometheus duration"),
        (("--stable", "3"), "error: give both --stable and --canary, or neither"),
        (("--stable", "3", "--canary", "3"), "error: stable and canary are both version 3"),
        (("--env", "qa"), "error: unknown environment 'qa'"),
        (("--namespace", 'x"} or vector(1'), "error: namespace 'x\"} or vector(1' is not a"),
        (("--stable", "3", "--canary", "4|.*"), "error: version '4|.*' is not a registry"),
    ],
)
@pytest.mark.reliability("canary-bad-request")
def test_a_bad_request_is_one_error_line_before_any_query(args: tuple[str, ...], says: str):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the refusal comes first
    argv = ("rollout", "analyze", "--env", "production", "--prometheus", url, *args)
    done = run_cli(*argv)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(says) and len(done.stderr.splitlines()) == 1


def test_a_query_prometheus_refuses_is_one_line_with_its_reason(prometheus: str):
    with pytest.raises(StackError) as refused:
        rollout.query(prometheus, "sum by (", AT)
    message = str(refused.value)
    assert message.startswith(f"Prometheus at {prometheus} refused the query (HTTP 400: ")
    assert "\n" not in message
