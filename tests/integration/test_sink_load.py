"""The payload sink under a bounded load on loopback, as a process of its own: events sent vs rows
stored, with and without a SIGKILL in the middle of the load.

The client plays KServe's logger: a few workers (the agent's pool) each keeping one HTTP/1.1
connection, posting each request's CloudEvent and then its response's (binary mode, built by the
CloudEvents SDK), one row per request. The figures (printed with -s) are in docs/monitoring.md,
"Capture"; no assertion is on time."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlstack.data import generate
from mlstack.monitor import capture
from tests.conftest import free_port
from tests.support.logger import event
from tests.support.servers import start, stop

pytestmark = pytest.mark.slow

WORKERS = 4
REQUESTS = 1500  # per run: 3000 events


def payloads(n: int) -> list[tuple[dict, dict]]:
    frame = generate.generate(n, seed=17).drop(columns=["churned"])
    rows = json.loads(frame.to_json(orient="records"))
    out = []
    for i, row in enumerate(rows):
        p = (i % 100) / 100
        out.append(({"instances": [row]}, {"predictions": [int(p >= 0.5)],
                                          "probabilities": [[1 - p, p]]}))  # fmt: skip
    return out


@dataclass
class Tally:
    acked: set[tuple[str, str]] = field(default_factory=set)  # (id, kind) answered 200
    failed: set[tuple[str, str]] = field(default_factory=set)  # sent, no 200 (connection lost)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send(port: int, items: list[tuple[str, dict, dict]], tally: Tally) -> None:
    """One logger worker: request then response event of each item, over one connection
    (reopened after a failure, as Go's client does)."""
    conn: http.client.HTTPConnection | None = None
    for event_id, request, response in items:
        for kind, data in (("request", request), ("response", response)):
            headers, body = event(kind, event_id, data)
            began = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/", body=body, headers=headers)
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError:
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
            with tally.lock:
                if ok:
                    tally.acked.add((event_id, kind))
                    tally.latencies.append(time.perf_counter() - began)
                else:
                    tally.failed.add((event_id, kind))
    if conn is not None:
        conn.close()


def run_load(port: int, items: list[tuple[str, dict, dict]], tally: Tally) -> float:
    shares = [items[i::WORKERS] for i in range(WORKERS)]
    threads = [threading.Thread(target=send, args=(port, s, tally)) for s in shares]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return time.perf_counter() - began


def sink_process(tmp: Path, port: int, log: str):
    cmd = [sys.executable, "-m", "mlstack.monitor.sink", "--root", str(tmp / "captures"),
           "--wal", str(tmp / "wal"), "--port", str(port)]  # fmt: skip
    env = {**os.environ, "MLSTACK_STATE_DIR": str(tmp / "state")}
    return start(cmd, tmp / log, f"http://127.0.0.1:{port}/healthz", env=env, timeout=120)


def figures(name: str, tally: Tally, seconds: float) -> str:
    lat = sorted(tally.latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    line = (f"{name}: {len(tally.acked)} events acknowledged in {seconds:.1f} s "
            f"({len(tally.acked) / seconds:.0f}/s, {WORKERS} workers), ack p50 {p50:.1f} ms "
            f"p99 {p99:.1f} ms, {len(tally.failed)} not acknowledged")  # fmt: skip
    print(line)
    return line


def paired(tally: Tally) -> set[str]:
    """Ids whose request and response were both acknowledged."""
    ids = {i for i, _ in tally.acked}
    return {i for i in ids if (i, "request") in tally.acked and (i, "response") in tally.acked}


def test_every_acknowledged_pair_is_stored_once_under_load(tmp_path: Path) -> None:
    port = free_port()
    proc = sink_process(tmp_path, port, "sink.log")
    items = [(f"load-{i}", q, r) for i, (q, r) in enumerate(payloads(REQUESTS))]
    tally = Tally()
    try:
        seconds = run_load(port, items, tally)
    finally:
        stop(proc, grace=60)  # SIGTERM: the waiting batch is written
    figures("steady", tally, seconds)
    assert proc.returncode == 0, (tmp_path / "sink.log").read_text()[-2000:]
    assert not tally.failed
    stored = capture.read_captures(tmp_path / "captures")
    assert len(stored) == REQUESTS
    assert set(stored["id"]) == paired(tally) == {i for i, _, _ in items}
    assert stored["prediction"].notna().all() and stored["score"].notna().all()


@pytest.mark.reliability("payload-sink-sigkill-under-load")
def test_a_sigkill_in_the_middle_of_the_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    port = free_port()
    items = [(f"kill-{i}", q, r) for i, (q, r) in enumerate(payloads(REQUESTS))]
    tally = Tally()
    proc = sink_process(tmp_path, port, "sink-1.log")
    killer_done = threading.Event()

    def killer() -> None:
        # once a third of the events are acknowledged, SIGKILL: no handler, no flush
        while len(tally.acked) < (2 * REQUESTS) // 3 and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killer_done.set()

    k = threading.Thread(target=killer)
    k.start()
    first = items[: REQUESTS // 2]
    seconds = run_load(port, first, tally)
    k.join(timeout=120)
    assert killer_done.is_set() and proc.returncode == -signal.SIGKILL
    assert list((tmp_path / "wal").glob("wal-*.log")), "the log the kill left"
    acked_before_kill = set(tally.acked)

    proc = sink_process(tmp_path, port, "sink-2.log")  # replays the log
    try:
        # the logger does not retry: what failed during the kill stays failed; the rest goes on
        seconds += run_load(port, items[REQUESTS // 2 :], tally)
    finally:
        stop(proc, grace=60)
    figures("sigkill", tally, seconds)
    log = (tmp_path / "sink-2.log").read_text()
    replayed = int(log.split("replayed ", 1)[1].split()[0])
    print(f"sigkill: {len(acked_before_kill)} acknowledged before the kill, {replayed} replayed")
    assert proc.returncode == 0, log[-2000:]

    stored = capture.read_captures(tmp_path / "captures")
    want = paired(tally)
    assert want <= set(stored["id"]), f"lost: {sorted(want - set(stored['id']))[:5]}"
    # nothing invented: every stored id had both its events sent
    assert set(stored["id"]) <= {i for i, _, _ in items}
    assert len(stored) == len(set(stored["id"]))  # one row each (read_captures drops repeats)
    print(f"sigkill: {len(want)} pairs acknowledged, {len(stored)} stored, "
          f"{len(tally.failed)} events refused by the dead sink")  # fmt: skip
