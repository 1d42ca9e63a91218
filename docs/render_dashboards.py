"""Render the Grafana dashboards (mlstack/monitor/dashboards.py) to PNG from the real metrics of a local run.

It trains and registers a model in a temporary MLflow store, serves it with the predictor on
127.0.0.1, has Prometheus (Debian's package) scrape it every second, and sends about three
minutes of traffic: calm rows, some refused requests, then a drifted batch. Each panel's PromQL is
then queried over the run (its rate windows shortened to 30 s to fit a short run) and drawn.

    .venv/bin/python docs/render_dashboards.py [--out docs/img] [--seconds 180]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from mlstack.data import generate  # noqa: E402
from mlstack.monitor import dashboards  # noqa: E402
from mlstack.schema import feature_names  # noqa: E402
from mlstack.settings import DEFAULTS, Gates  # noqa: E402
from mlstack.train import registry  # noqa: E402
from mlstack.train.evaluation import evaluate  # noqa: E402
from mlstack.train.tracking import sqlite_store  # noqa: E402
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log  # noqa: E402

MODEL = DEFAULTS.model_name
ENVIRONMENT = "local"  # the namespace label the local scrape gives the predictor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def wait(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} not ready")


def rows(df) -> list[dict]:
    out = []
    for rec in df[feature_names()].to_dict(orient="records"):
        out.append(
            {
                k: (
                    None
                    if str(v) in ("nan", "<NA>", "None")
                    else (v.item() if hasattr(v, "item") else v)
                )
                for k, v in rec.items()
            }
        )
    return out


def traffic(url: str, seconds: float) -> None:
    """Calm rows, a burst of bad requests, then drifted rows, each a third of the time."""
    calm, drifted = rows(generate.generate(3000, 90)), rows(generate.generate(3000, 91, drift=True))
    rng = random.Random(5)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        phase = elapsed / seconds
        source = calm if phase < 2 / 3 else drifted
        batch = rng.sample(source, rng.randint(1, 8))
        if 1 / 3 < phase < 1 / 2 and rng.random() < 0.3:
            batch = [{**batch[0], "contract": "lifetime"}]  # refused: unknown category
        post(url, {"instances": batch})
        time.sleep(0.02)


def draw(prom: str, uid: str, start: float, end: float, out: Path) -> Path:
    title, panels = dashboards.DASHBOARDS[uid]
    cols = 2
    rows_n = (len(panels) + 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3.2 * rows_n), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        expr = re.sub(r"\[(5m|15m)\]", "[30s]", panel.expr)
        expr = expr.replace(f"${dashboards.ENV_VARIABLE}", ENVIRONMENT)  # the picker's choice
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
        result = get(f"{prom}/api/v1/query_range?{query}")["data"]["result"]
        for series in result:
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) for _, v in series["values"]]
            label = panel.legend
            for key, value in series["metric"].items():
                label = label.replace("{{" + key + "}}", value)
            label = re.sub(r"\s*\{\{\w+\}\}", "", label)  # a label the local scrape lacks (pod)
            ax.plot(xs, ys, label=label or None)
        if not result:  # the pod panels: cAdvisor and kube-state-metrics run on a cluster only
            ax.text(0.5, 0.5, "no data in a local run", ha="center", va="center", fontsize=9)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.tick_params(labelsize=8)
        if any(panel.legend for _ in result) and result:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{title} (local run; rate windows 30 s)", fontsize=12)
    fig.tight_layout()
    path = out / f"{uid}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--seconds", type=float, default=180)
    args = parser.parse_args()
    prometheus = shutil.which("prometheus")
    if not prometheus:
        raise SystemExit("needs Debian's prometheus package: make tools")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        uri = sqlite_store(tmp / "mlflow")
        data = tmp / "train.csv"
        generate.write_csv(generate.generate(DEFAULTS.data_rows, DEFAULTS.data_seed), data)
        lineage = TrainingLineage("local-run", DEFAULTS.data_path, "0" * 40, "local")
        trained = train_and_log(
            data,
            HyperParams(),
            lineage=lineage,
            tracking_uri=uri,
            experiment_name="dashboards",
            test_size=0.25,
            split_seed=42,
        )
        decision = evaluate(
            data,
            trained.run_id,
            model_name=MODEL,
            tracking_uri=uri,
            experiment_name="dashboards",
            gates=Gates(),
            test_size=0.25,
            split_seed=42,
        )
        registry.register(
            trained.run_id,
            trained.model_uri,
            model_name=MODEL,
            decision=decision,
            tracking_uri=uri,
            experiment_name="dashboards",
        )
        p_port, prom_port = free_port(), free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            # the labels the PodMonitor's scrape gives a predictor: job <namespace>/churn-predictor
            "scrape_configs": [{"job_name": f"{ENVIRONMENT}/churn-predictor",
                                "static_configs": [{"targets": [f"127.0.0.1:{p_port}"],
                                                    "labels": {"namespace": ENVIRONMENT}}]}],
        }))  # fmt: skip
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
        predictor = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}@champion",
             "--host", "127.0.0.1", "--http_port", str(p_port), "--enable_grpc", "false",
             "--configure_logging", "false", "--drift_window", "500"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait(f"http://127.0.0.1:{p_port}/v2/health/ready", predictor)
            base = f"http://127.0.0.1:{prom_port}"
            wait(f"{base}/-/ready", prom)
            start = time.time()
            traffic(f"http://127.0.0.1:{p_port}/v1/models/{MODEL}:predict", args.seconds)
            time.sleep(3)
            for uid in dashboards.DASHBOARDS:
                print(f"wrote {draw(base, uid, start, time.time(), args.out)}")
        finally:
            for proc in (prom, predictor):
                proc.terminate()
                proc.wait(timeout=20)


if __name__ == "__main__":
    main()
