"""What Feast costs (issue 16 item 6), on this machine, in one run.

1. **Training sets**: ``get_historical_features`` (``mlstack.features.training.historical``, what
   the ingest step calls) on the embedded default (file offline store) for entity frames of 4k,
   100k and 1M rows: the seeded generator's data of that many rows is the source, and every one
   of its rows is an entity row (customer id, label time, label). Wall time of the call, the
   source written and the definitions applied beforehand.
2. **Serving** (unless ``--skip-serving``): the transformer's added latency per request. One
   model (the pipeline's Pipeline on 4000 seeded rows, saved as training saves it) is served by the
   predictor (``python -m serving``); two transformers (``python -m serving.transformer_main``)
   stand in front of it, one on the embedded default's SQLite online store, one on Redis
   (Debian's ``redis-server`` on 127.0.0.1, password required, through
   ``feature_repo/feature_store.cluster.yaml``; its registry a SQLite file through the same SQL
   registry code as Postgres), both materialized from the same source. ``wrk`` sends a V1
   request for one customer: its id to the transformers, its latest features to the predictor
   (what the transformer forwards), at concurrency 1 and 8; the loads are interleaved (each load
   on each server in turn). The figures to read are the ratios to the predictor alone.

    .venv/bin/python benchmarks/features.py [--rows 4000 100000 1000000] [--seconds 8]
                                            [--skip-serving]

Every server binds 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-redis-password"


def _throughput_module():  # noqa: ANN202 (the sibling benchmark's helpers: Server, run_wrk, ...)
    spec = importlib.util.spec_from_file_location("serving_throughput", ROOT / "benchmarks" / "serving_throughput.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_throughput"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def materialized(data, state: Path) -> None:  # noqa: ANN001 (a generated frame)
    """The data's source written under ``state`` and materialized into the store that
    ``open_store`` opens with the current environment."""
    from mlstack.features import repo
    from mlstack.features.sources import source_frame, write_source
    from mlstack.settings import load_settings

    settings = load_settings(state_dir=state)
    source = str(state / "customer_features.parquet")
    state.mkdir(parents=True, exist_ok=True)
    write_source(source_frame(data), source)
    store = repo.open_store(settings)
    repo.apply(store, source)
    store.materialize_incremental(end_date=datetime.now(UTC))


def historical_times(sizes: list[int], work: Path) -> list[tuple[int, float]]:
    from mlstack.data.generate import generate
    from mlstack.features import repo
    from mlstack.features.sources import source_frame, write_source
    from mlstack.features.training import entity_frame, historical
    from mlstack.settings import load_settings

    out = []
    for n in sizes:
        state = work / f"hist-{n}"
        state.mkdir()
        data = generate(n, 7)
        settings = load_settings(state_dir=state)
        source = str(state / "customer_features.parquet")
        write_source(source_frame(data), source)
        store = repo.open_store(settings)
        repo.apply(store, source)
        entities = entity_frame(data)
        start = time.perf_counter()
        got = historical(store, entities)
        seconds = time.perf_counter() - start
        assert len(got) == n
        print(f"  get_historical_features {n:>9,} entity rows: {seconds:8.2f} s", flush=True)
        out.append((n, seconds))
        shutil.rmtree(state, ignore_errors=True)
    return out


@contextlib.contextmanager
def redis_server(root: Path, port: int) -> Iterator[None]:
    root.mkdir(parents=True)
    (root / "redis.conf").write_text(f"requirepass {PASSWORD}\n")
    proc = subprocess.Popen(
        ["redis-server", str(root / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(root), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        env = {**os.environ, "REDISCLI_AUTH": PASSWORD}
        for _ in range(100):
            ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], env=env,
                                  capture_output=True, text=True)  # fmt: skip
            if ping.stdout.strip() == "PONG":
                break
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def serving_latency(seconds: int, work: Path) -> list:  # noqa: ANN001
    import mlflow

    from mlstack.data import generate
    from mlstack.features.training import entity_frame
    from mlstack.schema import ENTITY, EVENT_TIME, TARGET
    from mlstack.train import onnx_export
    from mlstack.train.artifacts import SKOPS_TRUSTED_TYPES
    from mlstack.train.training import HyperParams, build_model, features

    bench = _throughput_module()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONPATH", None)
    for name in ("MLSTACK_FEAST_CONFIG", "MLSTACK_FEAST_REGISTRY", "MLSTACK_FEAST_REDIS"):
        env.pop(name, None)

    df = generate.generate(4000, 7)
    model = build_model(HyperParams())
    model.fit(features(df), df[TARGET])
    (work / "onnx").mkdir(parents=True)
    onnx_file = onnx_export.write(model, work / "onnx")
    mlflow.sklearn.save_model(
        model, str(work / "model"), skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        extra_files=[str(onnx_file)], metadata=onnx_export.model_metadata(onnx_file),
    )  # fmt: skip

    # one customer: its id for the transformers, its latest snapshot for the predictor
    latest = df.sort_values(EVENT_TIME).groupby(ENTITY).tail(1).dropna()
    row = latest.iloc[0]
    customer = str(row[ENTITY])
    assert entity_frame(df)[ENTITY].eq(customer).any()
    raw = json.loads(latest.head(1)[[c for c in features(latest).columns]].to_json(orient="records"))  # fmt: skip
    bodies_raw = {("v1", 1): json.dumps({"instances": raw})}
    bodies_id = {("v1", 1): json.dumps({"instances": [{ENTITY: customer}]})}

    predictor = bench.predictor("predictor alone", work / "model", bodies_raw)
    pport = int(predictor.ready_url.split(":")[2].split("/")[0])

    redis_port = bench.free_port()
    sqlite_state = work / "sqlite-store"
    redis_env = {
        "MLSTACK_FEAST_CONFIG": str(ROOT / "feature_repo" / "feature_store.cluster.yaml"),
        "MLSTACK_FEAST_REGISTRY": f"sqlite:///{work / 'redis-registry.db'}",
        "MLSTACK_FEAST_REDIS": f"127.0.0.1:{redis_port},password={PASSWORD}",
    }

    def transformer(name: str, extra: dict[str, str]) -> object:
        port = bench.free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "serving.transformer_main", "--model_name", "churn",
               "--predictor_host", f"127.0.0.1:{pport}", "--host", "127.0.0.1",
               "--http_port", str(port), "--enable_grpc", "false",
               "--enable_latency_logging", "false", "--configure_logging", "false"]  # fmt: skip
        return bench.Server(name, cmd, f"{base}/v2/health/ready",
                            {"v1": f"{base}/v1/models/churn:predict"}, bodies_id, env=extra)  # fmt: skip

    with redis_server(work / "redis", redis_port):
        saved = dict(os.environ)
        try:
            os.environ.pop("MLSTACK_FEAST_CONFIG", None)
            materialized(df, sqlite_state)
            os.environ.update(redis_env)
            materialized(df, work / "redis-state")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        servers = [
            predictor,
            transformer("transformer, SQLite online store", {"MLSTACK_STATE_DIR": str(sqlite_state)}),
            transformer("transformer, Redis online store", redis_env),
        ]  # fmt: skip
        results = []
        try:
            for server in servers:
                server.start(env)
            for concurrency in (1, 8):
                for server in servers:
                    results.append(server.load("v1", concurrency, 1, seconds, work))
        finally:
            for server in reversed(servers):
                server.stop()
    return results


def report(hist: list[tuple[int, float]], serving: list, seconds: int) -> None:  # noqa: ANN001
    print("\n| entity rows | `get_historical_features` |\n|---:|---:|")
    for n, s in hist:
        print(f"| {n:,} | {s:.2f} s |")
    if not serving:
        return
    print(f"\n| V1, one id | concurrency | p50 | p99 | req/s | p50 / predictor | p99 / predictor |"
          f"\n|---|---:|---:|---:|---:|---:|---:|   ({seconds} s per load)")  # fmt: skip
    alone = {r.concurrency: r for r in serving if r.server == "predictor alone"}
    for r in serving:
        base = alone[r.concurrency]
        print(f"| {r.server} | {r.concurrency} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
              f"{r.rps:.0f} | {r.p50_ms / base.p50_ms:.2f}x | {r.p99_ms / base.p99_ms:.2f}x |")  # fmt: skip
    bad = sum(r.errors for r in serving)
    if bad:
        print(f"\n{bad} requests failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 100_000, 1_000_000])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args()
    if not args.skip_serving:
        for tool in ("wrk", "redis-server", "redis-cli"):
            if not shutil.which(tool):
                raise SystemExit(f"needs {tool}: make tools (redis-server), apt-get install wrk")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        serving = [] if args.skip_serving else serving_latency(args.seconds, work / "serving")
        hist = historical_times(args.rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(hist, serving, args.seconds)


if __name__ == "__main__":
    main()
