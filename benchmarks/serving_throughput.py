"""Predictor throughput and latency vs MLServer's sklearn runtime, side by side, on loopback.

One model (the pipeline's HistGradientBoosting Pipeline, 4000 seeded rows) is served by
- this predictor (`python -m serving`), with KServe's default logging and with
  `--configure_logging false`;
- MLServer 1.7.1 with mlserver-sklearn, default settings (`parallel_workers: 1`) and
  `parallel_workers: 0` (it needs its own virtual environment: its starlette/fastapi pins clash
  with kserve's; `make bench-serving` creates it in .bench/);
and `wrk` (Debian package) sends the same V2 request (one input per feature, probabilities
requested) at concurrency 1, 8 and 32 with single rows, and 8 with 32-row batches. The in-process
floors are the sklearn Pipeline's `predict_proba` and this predictor's compiled fast path.
Every server binds 127.0.0.1; every load is bounded in time.

    .venv/bin/python benchmarks/serving_throughput.py [--seconds 8] [--mlserver .bench/mlserver]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import joblib

from mlstack.data import generate
from mlstack.data import profile as profiles
from mlstack.schema import TARGET
from mlstack.train.artifacts import SKOPS_TRUSTED_TYPES
from mlstack.train.training import HyperParams, build_model, features
from serving.codec import NAMES, Batch
from serving.compiled import compile_model

LOADS = [(1, 1), (8, 1), (32, 1), (8, 32)]  # (concurrency, rows per request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def v2_body(rows: Batch, output: str, pandas: bool) -> str:
    inputs = []
    for j, name in enumerate(NAMES[:5]):
        inputs.append(
            {"name": name, "shape": [len(rows)], "datatype": "FP64",
             "data": rows.numeric[:, j].tolist()}
        )  # fmt: skip
    for j, name in enumerate(NAMES[5:]):
        inputs.append(
            {"name": name, "shape": [len(rows)], "datatype": "BYTES",
             "data": [v or "" for v in rows.categorical[:, j]]}
        )  # fmt: skip
    body: dict = {"inputs": inputs, "outputs": [{"name": output}]}
    if pandas:  # MLServer's codec turns the inputs into the DataFrame the Pipeline needs
        body["parameters"] = {"content_type": "pd"}
        for inp in inputs:
            inp["parameters"] = {"content_type": "str" if inp["datatype"] == "BYTES" else "np"}
    return json.dumps(body)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total / 1024


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


@dataclass
class Result:
    server: str
    concurrency: int
    rows: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    url: str, body: str, concurrency: int, seconds: int, work: Path
) -> tuple[float, float, float, int]:
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, p50, p99, errors


def bench_server(
    name, cmd, env, ready_url, infer_url, bodies, seconds, work, cwd=None
) -> list[Result]:
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results = []
    try:
        wait_ready(ready_url, proc)
        for concurrency, rows in LOADS:
            body = bodies[rows]
            req = urllib.request.Request(infer_url, data=body.encode(), method="POST",
                                         headers={"content-type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
            run_wrk(infer_url, body, concurrency, 2, work)  # warm-up
            rps, p50, p99, errors = run_wrk(infer_url, body, concurrency, seconds, work)
            results.append(Result(name, concurrency, rows, rps, p50, p99, errors, rss_mb(proc.pid)))
            print(f"  {name:<34} c={concurrency:<2} rows={rows:<2} {rps:8.0f} req/s  "
                  f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return results


def floor_us(fn, n: int = 2000) -> float:
    fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--mlserver", type=Path, default=Path(".bench/mlserver"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

    import mlflow

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    df = generate.generate(4000, 7)
    model = build_model(HyperParams())
    model.fit(features(df), df[TARGET])
    mlflow.sklearn.save_model(
        model, str(work / "model"), skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        metadata={"reference_profile": profiles.to_dict(profiles.build(df))},
    )  # fmt: skip
    (work / "mlserver").mkdir()
    joblib.dump(model, work / "mlserver" / "model.joblib")

    sample = generate.generate(64, 3).dropna()  # MLServer's pandas codec has no nulls for str
    bodies_ours = {
        n: v2_body(Batch.from_frame(sample.head(n)), "probabilities", False) for n in (1, 32)
    }
    bodies_mls = {
        n: v2_body(Batch.from_frame(sample.head(n)), "predict_proba", True) for n in (1, 32)
    }

    one, b32 = Batch.from_frame(sample.head(1)), Batch.from_frame(sample.head(32))
    compiled = compile_model(model)
    frame1, frame32 = one.to_frame(), b32.to_frame()
    floors = {
        "sklearn Pipeline.predict_proba, 1 row": floor_us(lambda: model.predict_proba(frame1), 300),
        "sklearn Pipeline.predict_proba, 32 rows": floor_us(
            lambda: model.predict_proba(frame32), 300
        ),
        "compiled fast path, 1 row": floor_us(lambda: compiled.predict_proba(one)),
        "compiled fast path, 32 rows": floor_us(lambda: compiled.predict_proba(b32)),
    }
    for k, v in floors.items():
        print(f"  floor {k}: {v:.0f} µs")

    results: list[Result] = []
    for label, extra in (("this predictor (kserve logging)", []),
                         ("this predictor (--configure_logging false)", ["--configure_logging", "false"])):  # fmt: skip
        port = free_port()
        cmd = [sys.executable, "-m", "serving", "--model_dir", str(work / "model"),
               "--model_name", "churn", "--model_version", "1", "--host", "127.0.0.1",
               "--http_port", str(port), "--enable_grpc", "false",
               "--enable_latency_logging", "false", *extra]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        results += bench_server(label, cmd, env, f"{base}/v2/health/ready",
                                f"{base}/v2/models/churn/infer", bodies_ours, args.seconds, work)  # fmt: skip

    mlserver = args.mlserver.resolve() / "bin" / "mlserver"
    if mlserver.exists():
        for workers in (1, 0):
            port = free_port()
            (work / "mlserver" / "settings.json").write_text(json.dumps({
                "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                "metrics_port": free_port(), "parallel_workers": workers,
            }))  # fmt: skip
            (work / "mlserver" / "model-settings.json").write_text(json.dumps({
                "name": "churn", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }))  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            label = f"MLServer sklearn (parallel_workers: {workers})"
            results += bench_server(label, [str(mlserver), "start", "."], env,
                                    f"{base}/v2/models/churn/ready", f"{base}/v2/models/churn/infer",
                                    bodies_mls, args.seconds, work, cwd=work / "mlserver")  # fmt: skip
    else:
        print(f"  (no MLServer at {mlserver}: `make bench-serving` creates it)")

    print()
    print(f"{os.cpu_count()} cores, wrk -t1, {args.seconds} s per cell after a 2 s warm-up, "
          "V2 JSON, probabilities output")  # fmt: skip
    print("| server | concurrency | rows/request | req/s | p50 ms | p99 ms | errors | RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.server} | {r.concurrency} | {r.rows} | {r.rps:.0f} | {r.p50_ms:.2f} | "
              f"{r.p99_ms:.2f} | {r.errors} | {r.rss_mb:.0f} |")  # fmt: skip
    print()
    print("| in-process floor | µs per call |")
    print("|---|---|")
    for k, v in floors.items():
        print(f"| {k} | {v:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
