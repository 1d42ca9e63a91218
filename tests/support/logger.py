"""What KServe 0.21's logger agent sends a payload sink, for tests: the binary-mode CloudEvent of
one request or response (``event``), and a loopback stand-in for the agent itself
(``LoggerForwarder``), since the real agent is a Go sidecar that only runs in a pod.

The agent (``pkg/logger``) sits in front of the predictor: it posts each request to the sink as a
``org.kubeflow.serving.inference.request`` event, forwards it to the predictor, and posts a 200
response as a ``...response`` event with the same ``Ce-Id`` (the request's own ``Ce-Id`` header,
else a fresh UUID), with the InferenceService's name and namespace, and the annotations named
by ``logger.metadataAnnotations`` as ``Ce-Annotations``. It does not retry."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent


def event(
    kind: str, event_id: str, data: Any, *, namespace: str = "ml-staging", **extra: str
) -> tuple[dict[str, str], bytes]:
    """The headers and body KServe's logger posts (pkg/logger/worker.go: binary mode)."""
    attributes = {
        "type": f"org.kubeflow.serving.inference.{kind}",
        "source": "http://localhost:9081/",
        "id": event_id,
        "inferenceservicename": "churn-classifier",
        "namespace": namespace,
        "component": "predictor",
        "endpoint": "default",
        "metadata": "{}",
        **extra,
    }
    headers, body = to_binary(CloudEvent(attributes, data))
    return {**headers, "Content-Type": "application/json"}, body


@dataclass
class Logged:
    """What the forwarder did: the ids it forwarded with a 200 answer, and the sink's status of
    each event it posted ((id, kind) -> status; 0 when the sink could not be reached), and what
    it answered when not 200."""

    answered: list[str] = field(default_factory=list)
    sink_status: dict[tuple[str, str], int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)  # the sink's answers other than 200
    lock: threading.Lock = field(default_factory=threading.Lock)


class LoggerForwarder:
    """A loopback HTTP server in front of ``predictor`` (host, port) that logs every request and
    every 200 response to ``sink`` (host, port) as the agent does, for an InferenceService
    ``name`` in ``namespace`` with ``annotations``. Use as a context manager; ``url`` is where
    clients send their inference requests."""

    def __init__(
        self,
        predictor: tuple[str, int],
        sink: tuple[str, int],
        *,
        name: str,
        namespace: str,
        annotations: dict[str, str],
    ) -> None:
        self.logged = Logged()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                event_id = self.headers.get("ce-id") or str(uuid.uuid4())
                outer._log("request", event_id, body)
                status, content_type, answer = outer._forward(self.path, body)
                if status == 200:
                    outer._log("response", event_id, answer)
                    with outer.logged.lock:
                        outer.logged.answered.append(event_id)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._predictor = predictor
        self._sink = sink
        self._attributes = {
            "inferenceservicename": name,
            "annotations": json.dumps(annotations),
        }
        self._namespace = namespace
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _forward(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(*self._predictor, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type", "application/json"), resp.read()
        finally:
            conn.close()

    def _log(self, kind: str, event_id: str, body: bytes) -> None:
        headers, data = event(
            kind, event_id, json.loads(body), namespace=self._namespace, **self._attributes
        )
        conn = http.client.HTTPConnection(*self._sink, timeout=60)
        try:
            conn.request("POST", "/", body=data, headers=headers)
            resp = conn.getresponse()
            answer = resp.read().decode(errors="replace")
            status = resp.status
        except OSError as exc:
            answer, status = str(exc), 0
        finally:
            conn.close()
        with self.logged.lock:
            self.logged.sink_status[(event_id, kind)] = status
            if status != 200:
                self.logged.refusals.append(f"{event_id} {kind}: {status} {answer[:300]}")

    def __enter__(self) -> LoggerForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)
