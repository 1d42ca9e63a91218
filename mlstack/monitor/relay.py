"""Alertmanager webhook → GitHub ``repository_dispatch``: drift alerts start continuous training.

Alertmanager posts its webhook JSON to ``POST /alertmanager`` with ``Authorization: Bearer
<credential>`` (its ``http_config``; the AlertmanagerConfig reads the credential from a Secret);
every firing alert labelled ``retrain="true"`` becomes one ``repository_dispatch`` of type
``drift-detected`` (the event ``.github/workflows/train.yml`` listens to), at most once per alert
per ``--cooldown`` (Alertmanager repeats notifications while an alert fires). An alert is known by
its label set, hashed here: never by the ``fingerprint`` the sender writes.

The request is parsed strictly (one ``Content-Length`` of at most ``MAX_BODY`` bytes, no
``Transfer-Encoding``, ``Content-Type: application/json``, a JSON object of well-formed alerts:
anything else is a 4xx), and it must arrive whole within ``REQUEST_DEADLINE`` seconds. When the
dispatch did not happen (GitHub unreachable, or any answer but 204, a redirect included: none is
followed) the answer is 502, so Alertmanager retries, and the alert is not held by the cooldown.

The GitHub token comes from the file named by ``GITHUB_TOKEN_FILE`` (a mounted Secret) or from
``GITHUB_TOKEN``; the webhook credential from ``RELAY_WEBHOOK_TOKEN_FILE`` or
``RELAY_WEBHOOK_TOKEN``; never from a flag. The token goes only to ``GITHUB_API_URL``, which must
be https (http only for 127.0.0.1 or localhost, for tests).

    python -m mlstack.monitor.relay --repo owner/name [--host 0.0.0.0] [--port 8080]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import io
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlstack.errors import StackError

EVENT_TYPE = "drift-detected"
MAX_BODY = 1 << 20  # bytes; no header lifts it
READ_TIMEOUT = 10.0  # seconds one read of a request may wait
REQUEST_DEADLINE = 30.0  # seconds for a whole request (line, headers, body) to arrive
MAX_CONNECTIONS = 32  # connections served at once; more are closed at once
DISPATCH_TIMEOUT = 10.0  # seconds per socket operation towards GitHub's API
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_LENGTH = re.compile(r"[0-9]{1,16}")


class BadRequest(Exception):
    """A request the relay refuses: ``status`` is the 4xx it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DispatchError(Exception):
    """The ``repository_dispatch`` did not happen (GitHub unreachable or not answering 204)."""


@dataclass(frozen=True)
class Alert:
    """One alert of Alertmanager's webhook payload, as far as the relay reads it."""

    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str = ""

    @property
    def identity(self) -> str:
        """The alert's identity for the cooldown: sha256 of its sorted label set (what makes an
        alert the same alert), computed here whatever the sender claims."""
        canonical = json.dumps(sorted(self.labels.items()), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _strings(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(400, f"{where} must be an object of strings")
    return dict(value)


def parse_alerts(payload: object) -> list[Alert]:
    """The alerts of a webhook payload; ``BadRequest`` (400) naming the first malformed part."""
    if not isinstance(payload, dict):
        raise BadRequest(400, "body must be a JSON object")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadRequest(400, "'alerts' must be a list")
    out = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise BadRequest(400, f"alerts[{i}] must be an object")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise BadRequest(400, f"alerts[{i}].status must be 'firing' or 'resolved'")
        labels = _strings(alert.get("labels"), f"alerts[{i}].labels")
        if not labels:
            raise BadRequest(400, f"alerts[{i}].labels must not be empty")
        annotations = _strings(alert.get("annotations", {}), f"alerts[{i}].annotations")
        starts_at = alert.get("startsAt", "")
        if not isinstance(starts_at, str):
            raise BadRequest(400, f"alerts[{i}].startsAt must be a string")
        out.append(Alert(status, labels, annotations, starts_at))
    return out


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in one object")
    return dict(pairs)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_json(data: bytes) -> object:
    """The JSON value of a UTF-8 body; ``BadRequest`` (400) for anything else (duplicate keys,
    NaN, nesting deeper than the parser's recursion limit included)."""
    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(400, f"body is not JSON: {str(exc)[:200]}") from None


def content_length(headers: Message, limit: int = MAX_BODY, what: str = "body") -> int:
    """The body's length from the request headers: one ``Content-Length``, a plain non-negative
    integer of at most ``limit``; ``Transfer-Encoding`` refused (``BadRequest``). The payload
    sink reads its events' lengths with it too."""
    if headers.get_all("Transfer-Encoding"):
        raise BadRequest(400, "Transfer-Encoding is not accepted: send one Content-Length")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise BadRequest(411, "Content-Length required")
    if len(values) > 1:
        raise BadRequest(400, "one Content-Length header, not several")
    value = values[0].strip(" \t")
    if not _LENGTH.fullmatch(value):
        raise BadRequest(400, "Content-Length must be a non-negative integer")
    if int(value) > limit:
        raise BadRequest(413, f"{what} over {limit} bytes")
    return int(value)


def check_content_type(headers: Message) -> None:
    """``BadRequest`` (415) unless the body is declared as one ``application/json``."""
    values = headers.get_all("Content-Type") or []
    if len(values) != 1 or values[0].split(";", 1)[0].strip().lower() != "application/json":
        raise BadRequest(415, "Content-Type must be application/json")


def check_api_url(url: str) -> str:
    """``url`` without its trailing slash when it is https (http only for a loopback host, for
    tests) and carries no credentials, query or fragment; ``StackError`` otherwise: the token is
    sent to this host and nowhere else."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https" and bool(parts.hostname)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not (secure or loopback) or parts.username or parts.password or parts.query:
        raise StackError(
            f"GITHUB_API_URL must be an https URL (http only for 127.0.0.1 or localhost), "
            f"without credentials or query: got {url!r}"
        )
    if parts.fragment:
        raise StackError(f"GITHUB_API_URL must not have a fragment: got {url!r}")
    return url.rstrip("/")


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """An opener that sends a request to its own URL only: no redirect handling (a 3xx is an
    ``HTTPError`` like any other non-2xx), no proxies from the environment, certificates
    verified."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _secret_value(value: str, what: str) -> str:
    if not value:
        raise StackError(f"{what} is empty")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise StackError(f"{what} has spaces or control characters")
    return value


@dataclass
class Relay:
    repo: str
    token: str
    credential: str  # what Alertmanager sends as its bearer token
    api_url: str = "https://api.github.com"
    cooldown_seconds: float = 6 * 3600
    clock: Callable[[], float] = time.monotonic
    _sent: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _opener: urllib.request.OpenerDirector = field(default_factory=no_redirect_opener)

    def __post_init__(self) -> None:
        if not _REPO.fullmatch(self.repo) or ".." in self.repo:
            raise StackError(f"--repo must be owner/name, got {self.repo!r}")
        _secret_value(self.token, "the GitHub token (GITHUB_TOKEN_FILE or GITHUB_TOKEN)")
        _secret_value(
            self.credential,
            "the webhook credential (RELAY_WEBHOOK_TOKEN_FILE or RELAY_WEBHOOK_TOKEN)",
        )
        self.api_url = check_api_url(self.api_url)

    def authorized(self, values: list[str]) -> bool:
        """Whether the request's ``Authorization`` headers are exactly one ``Bearer`` with the
        credential (compared in constant time)."""
        if len(values) != 1:
            return False
        scheme, _, presented = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(
            hashlib.sha256(presented.strip().encode()).digest(),
            hashlib.sha256(self.credential.encode()).digest(),
        )

    def select(self, alerts: list[Alert]) -> list[Alert]:
        """The alerts to dispatch: firing, ``retrain="true"``, none with the same identity sent
        within the cooldown (they are marked sent now; ``release`` unmarks them)."""
        chosen = []
        now = self.clock()
        with self._lock:
            for key in [k for k, t in self._sent.items() if now - t > self.cooldown_seconds]:
                del self._sent[key]
            for alert in alerts:
                if alert.status != "firing" or alert.labels.get("retrain") != "true":
                    continue
                if alert.identity in self._sent:
                    continue
                self._sent[alert.identity] = now
                chosen.append(alert)
        return chosen

    def release(self, alerts: list[Alert]) -> None:
        """Forget that ``alerts`` were sent: Alertmanager's retry dispatches them."""
        with self._lock:
            for alert in alerts:
                self._sent.pop(alert.identity, None)

    def dispatch(self, alerts: list[Alert]) -> None:
        """Send ``alerts`` as one ``repository_dispatch`` event; ``DispatchError`` unless GitHub
        answers 204 (a redirect is not followed: the token goes to ``api_url``'s host only)."""
        body = {
            "event_type": EVENT_TYPE,
            "client_payload": {
                "alerts": [
                    {
                        "alertname": a.labels.get("alertname", ""),
                        "model_name": a.labels.get("model_name", ""),
                        "feature": a.labels.get("feature", ""),
                        "startsAt": a.starts_at,
                        "summary": a.annotations.get("summary", ""),
                    }
                    for a in alerts
                ]
            },
        }
        request = urllib.request.Request(
            f"{self.api_url}/repos/{self.repo}/dispatches",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self.token}",
                "X-GitHub-Api-Version": "2022-11-28",
                "Content-Type": "application/json",
            },
        )
        try:
            with self._opener.open(request, timeout=DISPATCH_TIMEOUT) as response:
                status = response.status
        except urllib.error.HTTPError as exc:  # any non-2xx, 3xx included
            status = exc.code
            exc.close()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise DispatchError(f"no answer from {self.api_url}: {exc}") from None
        if status != 204:
            raise DispatchError(f"GitHub answered {status}, not 204")

    def handle(self, alerts: list[Alert]) -> int:
        """Dispatch what the alerts ask for; returns how many were sent. On ``DispatchError``
        nothing stays marked sent, so Alertmanager's retry tries again."""
        chosen = self.select(alerts)
        if chosen:
            try:
                self.dispatch(chosen)
            except DispatchError:
                self.release(chosen)
                raise
        return len(chosen)


class _DeadlineReader(io.RawIOBase):
    """A connection's reads: each waits at most ``read_timeout``, and none starts after
    ``deadline`` (``time.monotonic``): a client sending slowly is cut off either way."""

    def __init__(self, sock: socket.socket, read_timeout: float, deadline: float) -> None:
        super().__init__()
        self._sock, self._read_timeout, self._deadline = sock, read_timeout, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received within its deadline")
        self._sock.settimeout(min(self._read_timeout, left))
        return self._sock.recv_into(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once (more are closed); closing
    the server does not wait for them (a slow client must not delay a SIGTERM's exit)."""

    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, with the slot freed before the connection is closed: a client that
        # sees its connection end and connects again must find the slot free
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._slots.release()
            self.shutdown_request(request)


def make_server(
    relay: Relay,
    host: str,
    port: int,
    *,
    read_timeout: float = READ_TIMEOUT,
    request_deadline: float = REQUEST_DEADLINE,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving): ``GET /healthz`` (unauthenticated: the probes), and
    ``POST /alertmanager``, which answers 401 without the credential, 400/411/413/415 for a
    malformed request, 408 for a body that does not arrive in time, 502 when the dispatch did
    not happen, 200 ``{"dispatched": n}`` otherwise. One request per connection."""

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain socket file: replaced by one under the deadline
            deadline = time.monotonic() + request_deadline
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, read_timeout, deadline))

        def _reply(self, status: int, body: dict[str, Any], **headers: str) -> None:
            self.connection.settimeout(read_timeout)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:  # the client left: nothing to answer
                self.close_connection = True

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's own refusals, as 4xx: a method other than GET and POST is 405 (not
            501), an HTTP version other than 1.x is 400 (not 505)."""
            if code == HTTPStatus.NOT_IMPLEMENTED:
                code, message = HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST"
            elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
                code, message = HTTPStatus.BAD_REQUEST, "only HTTP/1.0 and HTTP/1.1"
                self.request_version = "HTTP/1.0"  # not read yet: the answer gets a status line
            super().send_error(code, message, explain)

        def parse_request(self) -> bool:
            """http.server's parsing, and 400 for what it lets through: a header line without a
            colon or before the first header, a folded (multi-line) header value."""
            if not super().parse_request():
                return False
            folded = any("\r" in v or "\n" in v for v in self.headers.values())
            if self.headers.defects or folded:
                self.send_error(HTTPStatus.BAD_REQUEST, "malformed header line")
                return False
            return True

        def _discard_body(self) -> None:
            """Read a refused request's body (when its length is valid) so that closing the
            connection does not reset it before the client reads the answer."""
            with contextlib.suppress(BadRequest, OSError):
                self.rfile.read(content_length(self.headers))

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/healthz":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            if self.path != "/alertmanager":
                self._discard_body()
                self._reply(404, {"error": f"no route {self.path}"})
                return
            if not relay.authorized(self.headers.get_all("Authorization") or []):
                self._discard_body()
                self._reply(
                    401, {"error": "a valid bearer credential is required"},
                    WWW_Authenticate='Bearer realm="retrain-relay"',
                )  # fmt: skip
                return
            try:
                length = content_length(self.headers)
                try:
                    check_content_type(self.headers)
                except BadRequest:
                    self._discard_body()
                    raise
                try:
                    data = self.rfile.read(length)
                except TimeoutError:
                    raise BadRequest(408, "body not received in time") from None
                if len(data) != length:
                    raise BadRequest(400, "body shorter than its Content-Length")
                alerts = parse_alerts(decode_json(data))
            except BadRequest as exc:
                self._reply(exc.status, {"error": str(exc)})
                return
            try:
                sent = relay.handle(alerts)
            except DispatchError as exc:
                self._reply(502, {"error": f"GitHub dispatch failed: {exc}"})
                return
            self._reply(200, {"dispatched": sent})

        def log_message(self, fmt: str, *args: object) -> None:
            line = (fmt % args).encode("unicode_escape").decode("ascii")
            sys.stderr.write(f"relay: {line}\n")

    return _BoundedServer((host, port), Handler, max_connections)


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


def read_secret(file_variable: str, variable: str) -> str:
    """The value in the file ``$file_variable`` names (a mounted Secret), else ``$variable``;
    ``StackError`` when the file cannot be read."""
    path = os.environ.get(file_variable)
    if not path:
        return os.environ.get(variable, "")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise StackError(f"cannot read {file_variable} {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> None:
    """The entry point (``python -m mlstack.monitor.relay``): serves until SIGTERM or SIGINT;
    exits with one error line without a repository, a token or the webhook credential."""
    parser = argparse.ArgumentParser(prog="python -m mlstack.monitor.relay", description=__doc__)
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY", ""))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cooldown", type=float, default=6 * 3600, help="seconds per alert")
    args = parser.parse_args(argv)
    try:
        token = read_secret("GITHUB_TOKEN_FILE", "GITHUB_TOKEN")
        if not args.repo or not token:
            raise StackError("needs --repo (or GITHUB_REPOSITORY) and GITHUB_TOKEN(_FILE)")
        relay = Relay(
            args.repo,
            token,
            read_secret("RELAY_WEBHOOK_TOKEN_FILE", "RELAY_WEBHOOK_TOKEN"),
            os.environ.get("GITHUB_API_URL", "https://api.github.com"),
            args.cooldown,
        )
    except StackError as exc:
        raise SystemExit(f"error: {exc}") from None
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
