"""Canary analysis: compare a canary's model version with the stable one in Prometheus.

``analyze`` queries Prometheus' HTTP API over a window ending at ``at`` and answers promote,
wait or rollback with one line per check (docs/gitops.md, "Canary analysis"):

- traffic: each version served at least ``min_requests`` requests (else wait, never a guess)
- error ratio: refused requests (``model_input_errors_total``) over all requests, per version.
  KServe 0.21's predictor exposes no status-code counter (``request_predict_seconds`` counts every
  predict call, failed or not), so refusals are the errors measured per version here.
- p99 latency: ``histogram_quantile(0.99, …request_predict_seconds_bucket…)`` per version
- score divergence: PSI (``mlstack.data.profile.psi``) of the canary's
  ``model_prediction_score`` histogram against the stable version's

KServe's metrics carry only ``model_name``; they are joined to the version on the ``pod`` target
label with ``model_info{model_version}`` (the PodMonitor's scrape adds ``pod`` and ``namespace``).
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlstack.data.profile import psi
from mlstack.errors import StackError
from mlstack.settings import CanaryThresholds

PROMOTE, WAIT, ROLLBACK = "promote", "wait", "rollback"
# the exit code of `mlstack rollout analyze` for each verdict (1 is an error)
EXIT_CODES = {PROMOTE: 0, WAIT: 10, ROLLBACK: 20}
PASS, FAIL = "pass", "fail"
# each environment's namespace (manifests/overlays/<env>/kustomization.yaml)
NAMESPACES = {"staging": "ml-staging", "production": "ml-production"}
TIMEOUT_S = 10.0
_WINDOW = re.compile(r"^[1-9][0-9]*[smhd]$")
# a Kubernetes name (namespace, InferenceService): nothing that could break out of a PromQL label
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | wait
    line: str


@dataclass(frozen=True)
class Verdict:
    decision: str  # promote | wait | rollback
    stable_version: str
    canary_version: str
    namespace: str
    window: str
    checks: tuple[Check, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def query(prometheus_url: str, promql: str, at: float | None) -> list[dict[str, Any]]:
    """The instant vector ``promql`` evaluates to (at ``at``, Unix seconds, or now);
    ``StackError`` in one line when Prometheus is unreachable or refuses the query."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            detail = " ".join(str(json.load(exc).get("error", "")).split())
        except ValueError:
            detail = ""
        raise StackError(
            f"Prometheus at {prometheus_url} refused the query (HTTP {exc.code}: {detail or exc.reason})"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StackError(
            f"cannot query Prometheus at {prometheus_url} ({reason}): set --prometheus or "
            "MLSTACK_PROMETHEUS_URL to its address (e.g. a port-forward of kube-prometheus-stack)"
        ) from None
    if body.get("status") != "success" or body["data"]["resultType"] != "vector":
        raise StackError(f"Prometheus at {prometheus_url} answered: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _by_version(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("model_version", ""): float(r["value"][1]) for r in rows}


def discover_versions(
    prometheus_url: str, *, model_name: str, namespace: str, window: str, at: float | None
) -> tuple[str, str]:
    """(stable, canary) from the ``model_info`` series of the namespace over the window: exactly
    two versions, the canary being the higher registry version (a canary is always a newer
    registration: going back to an older version is a revert, not a canary)."""
    rows = query(
        prometheus_url,
        f'max by (model_version) (max_over_time(model_info{{namespace="{namespace}",'
        f'model_name="{model_name}"}}[{window}]))',
        at,
    )
    versions = sorted({r["metric"].get("model_version", "") for r in rows} - {""})
    if len(versions) != 2:
        found = ", ".join(versions) or "none"
        raise StackError(
            f"expected 2 versions of {model_name} serving in {namespace} over {window} (a stable "
            f"and a canary), found {found}: is a canary deployed? (or give --stable and --canary)"
        )
    if not all(v.isdigit() for v in versions):
        raise StackError(
            f"versions {', '.join(versions)} are not registry numbers: give --stable and --canary"
        )
    stable, canary = sorted(versions, key=int)
    return stable, canary


def _score_counts(rows: list[dict[str, Any]], version: str) -> np.ndarray:
    """Per-bin counts of one version from its cumulative ``_bucket`` increases."""
    cumulative = sorted(
        (float(r["metric"]["le"]), float(r["value"][1]))
        for r in rows
        if r["metric"].get("model_version") == version
    )
    values = np.array([max(v, 0.0) for _, v in cumulative])
    if values.size == 0:
        return values
    return np.diff(values, prepend=0.0).clip(min=0.0)


def analyze(
    prometheus_url: str,
    *,
    model_name: str,
    namespace: str,
    thresholds: CanaryThresholds,
    window: str = "10m",
    stable_version: str | None = None,
    canary_version: str | None = None,
    at: float | None = None,
) -> Verdict:
    """The verdict on the canary of ``model_name`` in ``namespace`` over ``window`` ending at
    ``at`` (Unix seconds; default now). Versions are discovered from ``model_info`` when not given.
    Rollback when any check fails with enough traffic; wait when either version served fewer than
    ``thresholds.min_requests`` requests or a value is missing; promote otherwise."""
    if not _WINDOW.match(window):
        raise StackError(f"window {window!r} is not a Prometheus duration like 10m, 1h or 90s")
    for what, name in (("namespace", namespace), ("model name", model_name)):
        if not _NAME.match(name):
            raise StackError(f"{what} {name!r} is not a Kubernetes name (lowercase, digits, '-')")
    for version in (stable_version, canary_version):
        if version is not None and not version.isdigit():
            raise StackError(f"version {version!r} is not a registry version number")
    if (stable_version is None) != (canary_version is None):
        raise StackError("give both --stable and --canary, or neither (discovered from model_info)")
    if stable_version is None or canary_version is None:
        stable_version, canary_version = discover_versions(
            prometheus_url, model_name=model_name, namespace=namespace, window=window, at=at
        )
    if stable_version == canary_version:
        raise StackError(f"stable and canary are both version {stable_version}: nothing to compare")
    sel = f'namespace="{namespace}",model_name="{model_name}"'
    join = (
        f"on (pod) group_left (model_version) "
        f"max by (pod, model_version) (max_over_time(model_info{{{sel}}}[{window}]))"
    )

    def per_version(expr: str) -> dict[str, float]:
        return _by_version(query(prometheus_url, expr, at))

    served = per_version(
        f"sum by (model_version) (sum by (pod) (increase(request_predict_seconds_count{{{sel}}}"
        f"[{window}])) * {join})"
    )
    refused = per_version(
        f"sum by (model_version) (sum by (pod) (increase(model_input_errors_total{{{sel}}}"
        f"[{window}])) * {join})"
    )
    p99 = per_version(
        f"histogram_quantile(0.99, sum by (le, model_version) (sum by (pod, le) "
        f"(rate(request_predict_seconds_bucket{{{sel}}}[{window}])) * {join}))"
    )
    scores = query(
        prometheus_url,
        f"sum by (le, model_version) (increase(model_prediction_score_bucket{{{sel},"
        f'model_version=~"{re.escape(stable_version)}|{re.escape(canary_version)}"}}[{window}]))',
        at,
    )
    versions = {"stable": stable_version, "canary": canary_version}
    checks: list[Check] = []

    # traffic
    # the predictor refuses a request inside predict: request_predict_seconds counts refused
    # requests too (max: a refusal before predict, e.g. by the HTTP surface, is counted once)
    total = {v: max(served.get(v, 0.0), refused.get(v, 0.0)) for v in versions.values()}
    short = [f"{role} v{v}" for role, v in versions.items() if total[v] < thresholds.min_requests]
    counts = ", ".join(f"{role} v{v} {total[v]:.0f}" for role, v in versions.items())
    if short:
        checks.append(
            Check(
                "traffic",
                WAIT,
                f"traffic: {counts} requests over {window}; {', '.join(short)} below "
                f"{thresholds.min_requests}: wait for more",
            )
        )
    else:
        checks.append(
            Check(
                "traffic",
                PASS,
                f"traffic: {counts} requests over {window} (>= {thresholds.min_requests})",
            )
        )

    # error ratio
    ratio = {v: refused.get(v, 0.0) / total[v] if total[v] > 0 else math.nan for v in total}
    s_ratio, c_ratio = ratio[stable_version], ratio[canary_version]
    if math.isnan(s_ratio) or math.isnan(c_ratio):
        checks.append(Check("error_ratio", WAIT, "error ratio: no requests to compare yet"))
    else:
        limit = s_ratio + thresholds.max_error_ratio_increase
        ok = c_ratio <= limit
        checks.append(
            Check(
                "error_ratio",
                PASS if ok else FAIL,
                f"error ratio: canary {c_ratio:.2%} {'<=' if ok else '>'} stable {s_ratio:.2%} + "
                f"{thresholds.max_error_ratio_increase:.2%} (refused requests)",
            )
        )

    # p99 latency
    s_p99, c_p99 = p99.get(stable_version, math.nan), p99.get(canary_version, math.nan)
    if math.isnan(s_p99) or math.isnan(c_p99):
        checks.append(
            Check("p99_latency", WAIT, "p99 latency: no predict latencies to compare yet")
        )
    else:
        limit = max(s_p99 * thresholds.max_p99_latency_ratio, thresholds.p99_latency_floor_s)
        ok = c_p99 <= limit
        checks.append(
            Check(
                "p99_latency",
                PASS if ok else FAIL,
                f"p99 latency: canary {c_p99 * 1000:.1f} ms {'<=' if ok else '>'} "
                f"{limit * 1000:.1f} ms (stable {s_p99 * 1000:.1f} ms x "
                f"{thresholds.max_p99_latency_ratio:g}, at least "
                f"{thresholds.p99_latency_floor_s * 1000:.0f} ms)",
            )
        )

    # score divergence
    expected, observed = (
        _score_counts(scores, stable_version),
        _score_counts(scores, canary_version),
    )
    if expected.sum() <= 0 or observed.sum() <= 0 or expected.size != observed.size:
        checks.append(Check("score_psi", WAIT, "score PSI: no score histograms to compare yet"))
    else:
        value = psi(expected / expected.sum(), observed)
        ok = value <= thresholds.max_score_psi
        checks.append(
            Check(
                "score_psi",
                PASS if ok else FAIL,
                f"score PSI: {value:.3f} {'<=' if ok else '>'} {thresholds.max_score_psi:g} "
                "(canary's predicted-score histogram against stable's)",
            )
        )

    # too little traffic: wait whatever the other checks say; then any failure rolls back
    statuses = {c.status for c in checks}
    if checks[0].status == WAIT:
        decision = WAIT
    elif FAIL in statuses:
        decision = ROLLBACK
    elif WAIT in statuses:
        decision = WAIT
    else:
        decision = PROMOTE
    return Verdict(decision, stable_version, canary_version, namespace, window, tuple(checks))
