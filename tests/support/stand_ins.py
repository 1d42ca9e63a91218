"""Local stand-ins for the cluster's services and GitHub's API, each bound to 127.0.0.1 of the
network namespace it is started in (a test's own, or a pod's: tests/support/pods.py) and stopped
on exit."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextlib.contextmanager
def postgres(port: int, user: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL (Debian's, `make tools`) on 127.0.0.1:``port``, run as the
    `postgres` user when we are root (it refuses root), in a directory outside pytest's root-only
    temporary tree; yields its SQLAlchemy URI (trust authentication, database `postgres`)."""
    [bin_dir] = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [None]
    assert bin_dir, "make tools installs PostgreSQL (Debian's postgresql)"
    data = Path(tempfile.mkdtemp(prefix="mlstack-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    try:
        subprocess.run([*as_postgres, f"{bin_dir}/initdb", "-D", str(data), "-U", user,
                        "-A", "trust", "--no-sync"], check=True, capture_output=True)  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
        subprocess.run([*as_postgres, f"{bin_dir}/pg_ctl", "-D", str(data), "-o", options,
                        "-l", str(data / "log"), "-w", "start"], check=True, capture_output=True)  # fmt: skip
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(data, ignore_errors=True)


def redis_cli(port: int, *args: str, password: str | None = None) -> str:
    """Debian's redis-cli (`make tools`) against 127.0.0.1:``port`` of the calling thread's
    network namespace, with ``password`` (REDISCLI_AUTH) or none; its answer, stripped."""
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password:
        env["REDISCLI_AUTH"] = password
    done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    return (done.stdout + done.stderr).strip()


@contextlib.contextmanager
def redis(port: int, root: Path, password: str) -> Iterator[None]:
    """Debian's redis-server (`make tools`) on 127.0.0.1:``port``, its password in a config
    file as the dev StatefulSet gives it (``requirepass``), no persistence; stopped on exit."""
    from tests.support.servers import stop

    assert shutil.which("redis-server"), "make tools installs redis-server (Debian's package)"
    root.mkdir(parents=True)
    (root / "redis.conf").write_text(f"requirepass {password}\n")
    proc = subprocess.Popen(
        ["redis-server", str(root / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(root), "--save", "", "--appendonly", "no"],
        stdout=(root / "log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while redis_cli(port, "ping", password=password) != "PONG":
            assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()
            time.sleep(0.2)
        yield
    finally:
        stop(proc)


@contextlib.contextmanager
def s3(port: int) -> Iterator[str]:
    """moto's S3 on 127.0.0.1:``port``, empty; yields its endpoint URL.

    moto keeps its buckets in process-wide state, so an earlier test's objects would still be
    there (and us-east-1's CreateBucket answers 200 for a bucket that exists): its reset endpoint
    empties them first."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # its socket is made in a thread started here: in this thread's namespace
    try:
        url = f"http://127.0.0.1:{port}"
        reset = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(reset, timeout=60) as answer:
            assert answer.status == 200, answer.status
        yield url
    finally:
        server.stop()


class FakeGitHub:
    """Answers POST /repos/<owner>/<repo>/dispatches with 204 and records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
