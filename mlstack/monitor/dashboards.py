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
# the environment: the namespace the PodMonitor's scrape (and kube-state-metrics, cAdvisor) puts on
# every series, chosen by the dashboards' `namespace` variable; every panel keeps it apart
ENV_VARIABLE = "namespace"
N = f'namespace=~"${ENV_VARIABLE}"'
MN = f"{M},{N}"
PREDICTOR_JOB = 'job=~".*/churn-predictor"'  # <namespace>/<PodMonitor name>
# the InferenceService's predictor pods (KServe names them <isvc>-predictor-<revision>-…) and
# their containers, without the pod's own cgroup (container="") and the pause container
PODS = f'{N},pod=~"{DEFAULTS.model_name}-predictor-.*"'
CONTAINERS = f'{PODS},container!="",container!="POD"'


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str = "short"
    legend: str = ""


def _quantile(q: float) -> Panel:
    name = f"p{round(q * 100)}"
    return Panel(
        f"Predict latency {name}",
        f"histogram_quantile({q}, sum by (namespace, le) "
        f"(rate(request_predict_seconds_bucket{{{MN}}}[5m])))",
        "s",
        f"{{{{namespace}}}} {name}",
    )


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "churn-serving": (
        "Churn predictor: serving",
        [
            Panel(
                "Requests per second",
                f"sum by (namespace) (rate(request_predict_seconds_count{{{MN}}}[5m]))",
                "reqps",
                "{{namespace}}",
            ),
            _quantile(0.5),
            _quantile(0.95),
            _quantile(0.99),
            Panel(
                "Refused requests by reason",
                f"sum by (namespace, reason) (rate(model_input_errors_total{{{MN}}}[5m]))",
                "reqps",
                "{{namespace}} {{reason}}",
            ),
            # refused requests are counted in request_predict_seconds_count too (all requests)
            Panel(
                "Refused share of requests",
                f"sum by (namespace) (rate(model_input_errors_total{{{MN}}}[5m])) / "
                f"sum by (namespace) (rate(request_predict_seconds_count{{{MN}}}[5m]))",
                "percentunit",
                "{{namespace}}",
            ),
            Panel(
                "Scrape health",
                f"up{{{PREDICTOR_JOB},{N}}}",
                "short",
                "{{namespace}} {{pod}}",
            ),
            # cAdvisor (the kubelet's /metrics/cadvisor) and kube-state-metrics, as
            # kube-prometheus-stack scrapes them
            Panel(
                "Pod CPU (cores)",
                f"sum by (namespace, pod, container) "
                f"(rate(container_cpu_usage_seconds_total{{{CONTAINERS}}}[5m]))",
                "short",
                "{{namespace}} {{pod}} {{container}}",
            ),
            Panel(
                "Pod memory (working set)",
                f"sum by (namespace, pod, container) "
                f"(container_memory_working_set_bytes{{{CONTAINERS}}})",
                "bytes",
                "{{namespace}} {{pod}} {{container}}",
            ),
            Panel(
                "Container restarts (1 h)",
                f"sum by (namespace, pod, container) "
                f"(increase(kube_pod_container_status_restarts_total{{{PODS}}}[1h]))",
                "short",
                "{{namespace}} {{pod}} {{container}}",
            ),
        ],
    ),
    "churn-model": (
        "Churn predictor: model",
        [
            Panel(
                "Prediction mix (share predicted to churn)",
                f'sum by (namespace) (rate(model_predictions_total{{{MN},predicted_class="1"}}[15m]))'
                f" / sum by (namespace) (rate(model_predictions_total{{{MN}}}[15m]))",
                "percentunit",
                "{{namespace}} churn share",
            ),
            Panel(
                "Predictions by class",
                f"sum by (namespace, predicted_class) (rate(model_predictions_total{{{MN}}}[5m]))",
                "reqps",
                "{{namespace}} class {{predicted_class}}",
            ),
            Panel(
                "Feature drift (PSI against training)",
                f"max by (namespace, feature) (model_feature_drift_psi{{{MN}}})",
                "short",
                "{{namespace}} {{feature}}",
            ),
            Panel(
                "Rows in the drift window",
                f"max by (namespace) (model_drift_window_rows{{{MN}}})",
                "short",
                "{{namespace}}",
            ),
            Panel(
                "Model version serving",
                f"max by (namespace, model_version) (model_info{{{MN}}})",
                "short",
                "{{namespace}} v{{model_version}}",
            ),
            # live quality from delayed labels (mlstack.monitor.live_quality); the alert
            # ChurnModelLiveQualityLow fires below the gate's minimum roc_auc
            Panel(
                f"Live ROC AUC by version (labelled window; gate minimum "
                f"{DEFAULTS.gates.min_roc_auc})",
                f"min by (namespace, model_version) (model_live_roc_auc{{{MN}}})",
                "short",
                "{{namespace}} v{{model_version}}",
            ),
            Panel(
                "Live F1 by version (labelled window)",
                f"min by (namespace, model_version) (model_live_f1{{{MN}}})",
                "short",
                "{{namespace}} v{{model_version}}",
            ),
        ],
    ),
    "churn-training": (
        "Churn model: training metrics by version",
        [
            Panel(
                "Held-out ROC AUC by model version",
                f'max by (namespace, model_version) (model_training_metric{{{MN},metric="roc_auc"}})',
                "short",
                "{{namespace}} v{{model_version}}",
            ),
            Panel(
                "Held-out F1 by model version",
                f'max by (namespace, model_version) (model_training_metric{{{MN},metric="f1"}})',
                "short",
                "{{namespace}} v{{model_version}}",
            ),
        ],
    ),
}


def _environment_variable() -> dict[str, Any]:
    """The dashboards' environment picker: the namespaces with a churn predictor target."""
    query = f"label_values(up{{{PREDICTOR_JOB}}}, namespace)"
    return {
        "name": ENV_VARIABLE,
        "label": "Environment",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "definition": query,
        "query": {"query": query, "refId": "environment"},
        "refresh": 2,  # on time range change: a new environment appears without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
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
                },
                _environment_variable(),
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
