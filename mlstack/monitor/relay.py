"""Alertmanager webhook → GitHub ``repository_dispatch``: drift alerts start continuous training.

Alertmanager posts its webhook JSON to ``POST /alertmanager``; every firing alert labelled
``retrain="true"`` becomes one ``repository_dispatch`` of type ``drift-detected`` (the event
``.github/workflows/train.yml`` listens to), at most once per alert fingerprint per
``--cooldown`` (Alertmanager repeats notifications while an alert fires). The token comes from
the file named by ``GITHUB_TOKEN_FILE`` (a mounted Secret) or from ``GITHUB_TOKEN``, never from a
flag.

    python -m mlstack.monitor.relay --repo owner/name [--host 0.0.0.0] [--port 8080]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

EVENT_TYPE = "drift-detected"
MAX_BODY = 1 << 20


@dataclass
class Relay:
    repo: str
    token: str
    api_url: str = "https://api.github.com"
    cooldown_seconds: float = 6 * 3600
    clock: Callable[[], float] = time.monotonic
    _sent: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def select(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The alerts to dispatch: firing, ``retrain="true"``, not sent within the cooldown;
        ``ValueError`` when ``alerts`` is not a list (the server answers 400)."""
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ValueError("'alerts' must be a list")
        chosen = []
        now = self.clock()
        with self._lock:
            for alert in alerts:
                if not isinstance(alert, dict) or alert.get("status") != "firing":
                    continue
                labels = alert.get("labels") or {}
                if labels.get("retrain") != "true":
                    continue
                key = alert.get("fingerprint") or json.dumps(labels, sort_keys=True)
                if now - self._sent.get(key, -self.cooldown_seconds - 1) <= self.cooldown_seconds:
                    continue
                self._sent[key] = now
                chosen.append(alert)
        return chosen

    def dispatch(self, alerts: list[dict[str, Any]]) -> None:
        """Send ``alerts`` as one ``repository_dispatch`` event; raises ``RuntimeError`` on an
        answer other than 204 (``urllib.error.URLError``/``OSError`` when unreachable)."""
        body = {
            "event_type": EVENT_TYPE,
            "client_payload": {
                "alerts": [
                    {
                        "alertname": a.get("labels", {}).get("alertname", ""),
                        "model_name": a.get("labels", {}).get("model_name", ""),
                        "feature": a.get("labels", {}).get("feature", ""),
                        "startsAt": a.get("startsAt", ""),
                        "summary": a.get("annotations", {}).get("summary", ""),
                    }
                    for a in alerts
                ]
            },
        }
        request = urllib.request.Request(
            f"{self.api_url.rstrip('/')}/repos/{self.repo}/dispatches",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self.token}",
                "X-GitHub-Api-Version": "2022-11-28",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (https API)
            if response.status != 204:
                raise RuntimeError(f"GitHub answered {response.status}")

    def handle(self, payload: dict[str, Any]) -> int:
        """Dispatch what the payload asks for; returns how many alerts were sent."""
        alerts = self.select(payload)
        if alerts:
            try:
                self.dispatch(alerts)
            except (urllib.error.URLError, OSError, RuntimeError):
                with self._lock:  # not sent: let Alertmanager's next repeat try again
                    for alert in alerts:
                        key = alert.get("fingerprint") or json.dumps(
                            alert.get("labels"), sort_keys=True
                        )
                        self._sent.pop(key, None)
                raise
        return len(alerts)


def make_server(relay: Relay, host: str, port: int) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving): ``GET /healthz``, and ``POST /alertmanager``, which
    answers 400 for a bad body, 413 for an oversized one, 502 when GitHub fails."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/healthz":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            if self.path != "/alertmanager":
                self._reply(404, {"error": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, {"error": f"body over {MAX_BODY} bytes"})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(payload, dict):
                    raise ValueError("body must be a JSON object")
                sent = relay.handle(payload)
            except (ValueError, json.JSONDecodeError) as exc:
                self._reply(400, {"error": str(exc)})
                return
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                self._reply(502, {"error": f"GitHub dispatch failed: {exc}"})
                return
            self._reply(200, {"dispatched": sent})

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write(f"relay: {fmt % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def stop_on_signals(
    server: socketserver.BaseServer, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """Make ``signums`` end ``server.serve_forever()`` running in the main thread. The kubelet
    stops a container with SIGTERM, and a container's PID 1 (this process, when a Deployment runs
    it as its command) gets no default action for it: without a handler it is ignored until the
    grace period ends in SIGKILL. The handler runs in the main thread, inside the serving loop,
    and ``shutdown()`` waits for that loop to end: it is called from a thread of its own."""

    def handle(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, name="relay-shutdown", daemon=True).start()

    for signum in signums:
        signal.signal(signum, handle)


def main(argv: list[str] | None = None) -> None:
    """The entry point (``python -m mlstack.monitor.relay``): serves until SIGTERM or SIGINT;
    exits with one error line without a repository or a token."""
    parser = argparse.ArgumentParser(prog="python -m mlstack.monitor.relay", description=__doc__)
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY", ""))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cooldown", type=float, default=6 * 3600, help="seconds per alert")
    args = parser.parse_args(argv)
    token_file = os.environ.get("GITHUB_TOKEN_FILE")
    token = (
        Path(token_file).read_text().strip() if token_file else os.environ.get("GITHUB_TOKEN", "")
    )
    if not args.repo or not token:
        raise SystemExit("error: needs --repo (or GITHUB_REPOSITORY) and GITHUB_TOKEN(_FILE)")
    relay = Relay(
        args.repo,
        token,
        os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        args.cooldown,
    )
    server = make_server(relay, args.host, args.port)
    print(
        f"relay: {args.host}:{args.port} -> {relay.api_url}/repos/{args.repo}/dispatches",
        flush=True,
    )
    stop_on_signals(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    print("relay: stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
