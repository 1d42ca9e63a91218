"""Monitoring as code: the Grafana dashboards, and the PrometheusRule built from the plain rules.

``build()`` writes ``manifests/monitoring/dashboards/*.json`` and
``manifests/monitoring/prometheusrule.yaml`` (from ``rules.yaml``, the one source of the alerts);
a test fails when the checked-in files differ from what it would write, like the pipeline IR.
Dashboards ship as ConfigMaps labelled ``grafana_dashboard: "1"`` for Grafana's sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlstack.settings import DEFAULTS, code_root

M = f'model_name="{DEFAULTS.model_name}"'


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str = "short"
    legend: str = ""


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "churn-serving": (
        "Churn predictor: serving",
        [
            Panel(
                "Requests per second",
                f"sum(rate(request_predict_seconds_count{{{M}}}[5m]))",
                "reqps",
            ),
            Panel(
                "Predict latency p50",
                f"histogram_quantile(0.5, sum by (le) (rate(request_predict_seconds_bucket{{{M}}}[5m])))",
                "s",
                "p50",
            ),
            Panel(
                "Predict latency p95",
                f"histogram_quantile(0.95, sum by (le) (rate(request_predict_seconds_bucket{{{M}}}[5m])))",
                "s",
                "p95",
            ),
            Panel(
                "Predict latency p99",
                f"histogram_quantile(0.99, sum by (le) (rate(request_predict_seconds_bucket{{{M}}}[5m])))",
                "s",
                "p99",
            ),
            Panel(
                "Refused requests by reason",
                f"sum by (reason) (rate(model_input_errors_total{{{M}}}[5m]))",
                "reqps",
                "{{reason}}",
            ),
            Panel("Scrape health", 'up{job=~".*churn-predictor"}', "short", "{{instance}}"),
        ],
    ),
    "churn-model": (
        "Churn predictor: model",
        [
            Panel(
                "Prediction mix (share predicted to churn)",
                f'sum(rate(model_predictions_total{{{M},predicted_class="1"}}[15m])) / '
                f"sum(rate(model_predictions_total{{{M}}}[15m]))",
                "percentunit",
                "churn share",
            ),
            Panel(
                "Predictions by class",
                f"sum by (predicted_class) (rate(model_predictions_total{{{M}}}[5m]))",
                "reqps",
                "class {{predicted_class}}",
            ),
            Panel(
                "Feature drift (PSI against training)",
                f"max by (feature) (model_feature_drift_psi{{{M}}})",
                "short",
                "{{feature}}",
            ),
            Panel("Rows in the drift window", f"max(model_drift_window_rows{{{M}}})", "short"),
            Panel(
                "Model version serving",
                f"max by (model_version) (model_info{{{M}}})",
                "short",
                "v{{model_version}}",
            ),
        ],
    ),
    "churn-training": (
        "Churn model: training metrics by version",
        [
            Panel(
                "Held-out ROC AUC by model version",
                f'max by (model_version) (model_training_metric{{{M},metric="roc_auc"}})',
                "short",
                "v{{model_version}}",
            ),
            Panel(
                "Held-out F1 by model version",
                f'max by (model_version) (model_training_metric{{{M},metric="f1"}})',
                "short",
                "v{{model_version}}",
            ),
        ],
    ),
}


def dashboard(uid: str) -> dict[str, Any]:
    """The Grafana dashboard ``uid`` (a key of ``DASHBOARDS``) as JSON data; ``KeyError`` for
    another uid."""
    title, panels = DASHBOARDS[uid]
    return {
        "uid": uid,
        "title": title,
        "tags": ["mlstack", "churn"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": p.expr, "legendFormat": p.legend}],
            }
            for i, p in enumerate(panels)
        ],
    }


def expressions() -> list[str]:
    """Every PromQL expression the dashboards' panels query."""
    return [p.expr for _, panels in DASHBOARDS.values() for p in panels]


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule whose spec is ``rules`` (rules.yaml), labelled for the operator."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "churn-predictor",
            "labels": {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "mlstack"},
        },
        "spec": rules,
    }


def rendered(directory: Path | None = None) -> dict[Path, str]:
    """Every generated file and its content."""
    directory = directory or code_root() / "manifests" / "monitoring"
    rules = yaml.safe_load((directory / "rules.yaml").read_text())
    header = (
        "# Generated by `mlstack monitoring build` from rules.yaml: edit that file, not this one.\n"
    )
    out = {
        directory / "prometheusrule.yaml": header
        + yaml.safe_dump(prometheus_rule(rules), sort_keys=False, width=4096)
    }
    for uid in DASHBOARDS:
        out[directory / "dashboards" / f"{uid}.json"] = json.dumps(dashboard(uid), indent=2) + "\n"
    return out


def build(directory: Path | None = None) -> list[Path]:
    """Write every generated file (``rendered``), each replaced whole; returns the paths."""
    written = []
    for path, text in rendered(directory).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written


def stale(directory: Path | None = None) -> list[str]:
    """The names of the generated files that are missing or differ from a fresh render."""
    return [
        p.name for p, text in rendered(directory).items() if not p.exists() or p.read_text() != text
    ]
