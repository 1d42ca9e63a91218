"""Predictor throughput and latency: this predictor vs a baseline revision of it vs MLServer's
sklearn runtime, side by side, on loopback.

One model (the pipeline's HistGradientBoosting Pipeline, 4000 seeded rows, logged as training
logs it: skops and the classifier's ONNX graph) is served by
- this predictor (`python -m serving --configure_logging false`, as the image runs it);
- the same predictor at a baseline git revision (`--baseline`, by default the last one with the
  hand-written tree walker `serving/compiled.py`), exported with `git archive` and run from there;
- with `--mlserver DIR`: MLServer 1.7.1 with mlserver-sklearn in its best configuration here,
  `parallel_workers: 0` (its default, 1, measured slower: docs/serving.md); its own virtual
  environment (its starlette/fastapi pins clash with kserve's; `make bench-serving` creates it in
  .bench/).
All servers run at once and the loads are interleaved (each load on each server in turn), so a
change in the shared machine's speed hits them alike; the figures to read are this predictor's
ratios to the baseline. `wrk` (Debian package) sends the same V2 request (one input per feature,
probabilities requested) at concurrency 1, 8 and 32 with single rows and 8 with 32- and 256-row
batches, and V1 requests of 32 and 256 row objects at concurrency 8. The in-process floors are the
sklearn Pipeline's `predict_proba`, the baseline's `compiled.py`, onnxruntime's `run` alone on
the preprocessed rows, this predictor's engine (numpy preprocessing + onnxruntime) and its whole
model call (`ChurnModel.predict` on a decoded V2 request: codec, engine, metrics, drift window,
response): what a request costs over that is KServe's server. Every server binds 127.0.0.1;
every load is bounded in time and the run stops by itself.

    .venv/bin/python benchmarks/serving_throughput.py [--seconds 8] [--baseline REV] [--mlserver DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
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
from mlstack.train import onnx_export
from mlstack.train.artifacts import SKOPS_TRUSTED_TYPES, load_model
from mlstack.train.training import HyperParams, build_model, features
from serving import engine
from serving.codec import NAMES, Batch

# (protocol, concurrency, rows per request)
LOADS = [("v2", 1, 1), ("v2", 8, 1), ("v2", 32, 1), ("v2", 8, 32), ("v2", 8, 256),
         ("v1", 8, 32), ("v1", 8, 256)]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


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


def v1_body(rows) -> str:  # noqa: ANN001 (a DataFrame of schema rows)
    """V1 row objects, JSON null for a missing value."""
    records = rows[NAMES].astype(object).where(rows[NAMES].notna(), None).to_dict("records")
    return json.dumps({"instances": records})


def default_baseline() -> str:
    """The last revision with the hand-written tree walker (the parent of the commit that removed
    serving/compiled.py), or HEAD before that commit exists."""
    removed = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--diff-filter=D", "--", "serving/compiled.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return f"{removed}^" if removed else "HEAD"


def export_revision(rev: str, dst: Path) -> str:
    """The tree of ``rev`` in ``dst`` (no checkout: the work tree is left alone); its short SHA."""
    dst.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


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
    protocol: str
    concurrency: int
    rows: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows


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


@dataclass
class Server:
    name: str
    cmd: list[str]
    ready_url: str
    infer_url: dict[str, str]  # protocol -> URL
    bodies: dict[tuple[str, int], str]  # (protocol, rows) -> body
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self.cmd, env={**env, **(self.env or {})}, cwd=self.cwd,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_ready(self.ready_url, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def load(self, protocol: str, concurrency: int, rows: int, seconds: int, work: Path) -> Result:
        url, body = self.infer_url[protocol], self.bodies[(protocol, rows)]
        req = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        run_wrk(url, body, concurrency, 2, work)  # warm-up
        rps, p50, p99, errors = run_wrk(url, body, concurrency, seconds, work)
        result = Result(self.name, protocol, concurrency, rows, rps, p50, p99, errors,
                        rss_mb(self.proc.pid))  # fmt: skip
        print(f"  {self.name:<44} {protocol} c={concurrency:<2} rows={rows:<3} {rps:8.0f} req/s "
              f"{result.rows_per_s:8.0f} rows/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
              f"errors {errors}", flush=True)  # fmt: skip
        return result


def floor_us(fn, n: int = 2000) -> float:
    fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def predictor(name: str, model_dir: Path, bodies, cwd: Path | None = None) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "serving", "--model_dir", str(model_dir),
           "--model_name", "churn", "--model_version", "1", "--host", "127.0.0.1",
           "--http_port", str(port), "--enable_grpc", "false",
           "--enable_latency_logging", "false", "--configure_logging", "false"]  # fmt: skip
    # from an exported tree: its own packages first (python -m puts the cwd first on sys.path)
    env = {"PYTHONPATH": str(cwd)} if cwd else None
    infer = {"v2": f"{base}/v2/models/churn/infer", "v1": f"{base}/v1/models/churn:predict"}
    return Server(name, cmd, f"{base}/v2/health/ready", infer, bodies, cwd=cwd, env=env)


def mlserver_server(mlserver: Path, workers: int, work: Path, bodies) -> Server:
    root = work / f"mlserver-{workers}"
    root.mkdir()
    joblib.dump(joblib.load(work / "model.joblib"), root / "model.joblib")
    port = free_port()
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": workers,
    }))  # fmt: skip
    (root / "model-settings.json").write_text(json.dumps({
        "name": "churn", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    label = f"MLServer sklearn (parallel_workers: {workers})"
    return Server(label, [str(mlserver), "start", "."], f"{base}/v2/models/churn/ready",
                  {"v2": f"{base}/v2/models/churn/infer"}, bodies, cwd=root)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--baseline", help="git revision to compare with (default: the last "
                        "one with serving/compiled.py)")  # fmt: skip
    parser.add_argument("--mlserver", type=Path, default=Path(".bench/mlserver"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONPATH", None)

    import mlflow
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # the floors on one thread, as the servers run (OMP_NUM_THREADS=1)

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        baseline_rev = args.baseline or default_baseline()
        baseline_sha = export_revision(baseline_rev, work / "baseline")
        df = generate.generate(4000, 7)
        model = build_model(HyperParams())
        model.fit(features(df), df[TARGET])
        (work / "onnx").mkdir()
        onnx_file = onnx_export.write(model, work / "onnx")
        mlflow.sklearn.save_model(
            model, str(work / "model"), skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            extra_files=[str(onnx_file)],
            metadata={**onnx_export.model_metadata(onnx_file),
                      "reference_profile": profiles.to_dict(profiles.build(df))},
        )  # fmt: skip
        joblib.dump(model, work / "model.joblib")

        # MLServer's pandas codec has no nulls for str: complete rows for every body
        sample = generate.generate(400, 3).dropna().head(256)
        sizes = (1, 32, 256)
        ours = {("v2", n): v2_body(Batch.from_frame(sample.head(n)), "probabilities", False)
                for n in sizes}  # fmt: skip
        ours |= {("v1", n): v1_body(sample.head(n)) for n in sizes}
        theirs = {("v2", n): v2_body(Batch.from_frame(sample.head(n)), "predict_proba", True)
                  for n in sizes}  # fmt: skip

        floors = in_process_floors(model, work, sample, sizes, ours)
        for k, v in floors.items():
            print(f"  floor {k}: {v:.0f} µs", flush=True)

        new = "this predictor (onnxruntime engine)"
        old = f"baseline {baseline_sha} (compiled.py)"
        servers = [predictor(new, work / "model", ours),
                   predictor(old, work / "model", ours, cwd=work / "baseline")]  # fmt: skip
        mlserver = args.mlserver.resolve() / "bin" / "mlserver"
        if mlserver.exists():
            servers.append(mlserver_server(mlserver, 0, work, theirs))
        else:
            print(f"  (no MLServer at {mlserver}: `make bench-serving` creates it)")
        results = run_loads(servers, env, args.seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, floors, new, old, args.seconds)


def in_process_floors(model, work: Path, sample, sizes, bodies) -> dict[str, float]:  # noqa: ANN001
    """µs per call of the sklearn Pipeline, the baseline's compiled.py (loaded from the exported
    tree), onnxruntime's run alone, this predictor's engine and its model call on a decoded V2
    request (the ``bodies`` the servers get), on the same rows."""
    from kserve.protocol.infer_type import InferRequest

    from serving.model import ChurnModel
    from serving.surface import plain_infer_request

    spec = importlib.util.spec_from_file_location(
        "baseline_compiled", work / "baseline" / "serving" / "compiled.py"
    )
    compiled = None
    if spec and spec.loader and Path(spec.origin or "").exists():
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        compiled = module.compile_model(model)
    loaded = load_model(work / "model", None)
    ours = engine.load_recorded(loaded.onnx, loaded.onnx_sha256, 1)
    assert ours is not None, "the engine refused the benchmark's model"
    served = ChurnModel("churn-floor", work / "model", "1")
    assert served.load() and served.engine_name == "onnxruntime"
    floors = {}
    for n in sizes:
        batch = Batch.from_frame(sample.head(n))
        frame = batch.to_frame()
        batch.category_codes()
        x = ours.preprocessing.transform(batch)
        request = plain_infer_request(bodies[("v2", n)].encode(), "churn-floor")
        assert isinstance(request, InferRequest)
        floors[f"sklearn Pipeline.predict_proba, {n} rows"] = floor_us(
            lambda f=frame: model.predict_proba(f), 50
        )
        if compiled is not None:
            floors[f"baseline compiled.py, {n} rows"] = floor_us(
                lambda b=batch: compiled.predict_proba(b), 200
            )
        floors[f"onnxruntime run alone, {n} rows"] = floor_us(
            lambda x=x: onnx_export.run(ours.session, x), 200
        )
        floors[f"engine (numpy + onnxruntime), {n} rows"] = floor_us(
            lambda b=batch: ours.predict_proba(b), 200
        )
        floors[f"ChurnModel.predict on the decoded V2 request, {n} rows"] = floor_us(
            lambda r=request: served.predict(r, {}, {}), 200
        )
    return floors


def run_loads(servers: list[Server], env: dict[str, str], seconds: int, work: Path) -> list[Result]:
    results: list[Result] = []
    try:
        for server in servers:
            server.start(env)
        for protocol, concurrency, rows in LOADS:
            for server in servers:
                if (protocol, rows) in server.bodies:
                    results.append(server.load(protocol, concurrency, rows, seconds, work))
    finally:
        for server in servers:
            server.stop()
    return results


def report(results: list[Result], floors: dict[str, float], new: str, old: str, seconds: int):  # noqa: ANN201
    base = {(r.protocol, r.concurrency, r.rows): r for r in results if r.server == old}
    print()
    print(f"{os.cpu_count()} cores, wrk -t1, {seconds} s per cell after a 2 s warm-up, servers "
          "interleaved, JSON bodies, probabilities output")  # fmt: skip
    print("| server | protocol | concurrency | rows/request | req/s | rows/s | × baseline | "
          "p50 ms | p99 ms | errors | RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = base.get((r.protocol, r.concurrency, r.rows))
        ratio = f"{r.rows_per_s / ref.rows_per_s:.2f}" if ref and r.server != old else ""
        print(f"| {r.server} | {r.protocol.upper()} | {r.concurrency} | {r.rows} | {r.rps:.0f} | "
              f"{r.rows_per_s:.0f} | {ratio} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
              f"{r.rss_mb:.0f} |")  # fmt: skip
    print()
    print("| in-process floor | µs per call |")
    print("|---|---|")
    for k, v in floors.items():
        print(f"| {k} | {v:.0f} |")


if __name__ == "__main__":
    main()
