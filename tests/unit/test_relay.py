"""The Alertmanager → GitHub relay over real HTTP on 127.0.0.1: its credential, its cooldown, its
request parsing, slow clients, and what it does when GitHub's API (a stand-in on loopback) fails
or redirects."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlstack.errors import StackError
from mlstack.monitor.relay import Alert, Relay, make_server, parse_alerts
from tests.conftest import free_port
from tests.support.servers import start, stop
from tests.support.stand_ins import FakeGitHub

CREDENTIAL = "webhook-credential-for-tests"
TOKEN = "github-token-for-tests"


def alert(status="firing", retrain="true", fingerprint="f1", feature="monthly_charges") -> dict:
    labels = {
        "alertname": "ChurnFeatureDrift",
        "model_name": "churn-classifier",
        "feature": feature,
    }
    if retrain:
        labels["retrain"] = retrain
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "drift"},
        "startsAt": "2026-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }


@contextlib.contextmanager
def serving(api_url: str, **server_options) -> Iterator[tuple[Relay, int]]:
    """A relay for acme/churn on a free loopback port, stopped on exit."""
    relay = Relay("acme/churn", TOKEN, CREDENTIAL, api_url, cooldown_seconds=3600)
    server = make_server(relay, "127.0.0.1", 0, **server_options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield relay, server.server_port
    finally:
        server.shutdown()
        server.server_close()


def post(port: int, body: bytes | dict, *, auth: str | None = f"Bearer {CREDENTIAL}"):
    """(status, JSON answer) of one POST /alertmanager through urllib."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/alertmanager", data=data, method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw(port: int, data: bytes, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON answer; {} for http.server's own HTML refusals) of bytes written as they
    are, the sending side then closed; status 0 when the relay closed without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head:
        return 0, {}
    return int(head.split(b" ", 2)[1]), json.loads(body) if body.startswith(b"{") else {}


def request(body: bytes, *headers: str, length: int | None = None) -> bytes:
    """A POST /alertmanager with the credential, ``headers`` and (unless one of ``headers`` is
    a Content-Length) the body's true length."""
    lines = ["POST /alertmanager HTTP/1.1", "Host: relay", f"Authorization: Bearer {CREDENTIAL}"]
    if not any(h.lower().startswith("content-type:") for h in headers):
        lines.append("Content-Type: application/json")
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode() + body


class ScriptedGitHub:
    """A stand-in for GitHub's API that answers each request with the next of ``answers``
    (raw bytes written as they are, or ``None`` to close without a word) and records
    (method, path, headers) of every request."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                answer = (
                    outer.answers.pop(0) if outer.answers else b"HTTP/1.1 204 No Content\r\n\r\n"
                )
                if answer is not None:
                    self.wfile.write(answer)
                self.close_connection = True

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github():
    fake = FakeGitHub()
    yield fake
    fake.close()
    fake.server.server_close()


# --- the credential ------------------------------------------------------------------------------


@pytest.mark.reliability("unauthenticated-relay")
def test_relay_refuses_a_request_without_its_credential(github):
    with serving(github.url) as (_, port):
        firing = {"alerts": [alert()]}
        for auth in (
            None,
            "Bearer wrong",
            f"Basic {CREDENTIAL}",
            f"Bearer {CREDENTIAL}x",
            CREDENTIAL,
        ):
            assert post(port, firing, auth=auth) == (
                401,
                {"error": "a valid bearer credential is required"},
            ), auth
        twice = request(json.dumps(firing).encode(), "Authorization: Bearer wrong")
        assert raw(port, twice)[0] == 401  # the right one and another: refused
        assert github.requests == []  # nothing reached GitHub
        assert post(port, firing) == (200, {"dispatched": 1})
    [(path, headers, body)] = github.requests
    assert path == "/repos/acme/churn/dispatches"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert body["client_payload"]["alerts"][0]["feature"] == "monthly_charges"


def test_relay_needs_its_token_and_its_credential(monkeypatch, tmp_path):
    from mlstack.monitor.relay import main

    for name in ("GITHUB_TOKEN", "GITHUB_TOKEN_FILE", "RELAY_WEBHOOK_TOKEN", "RELAY_WEBHOOK_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="GITHUB_TOKEN"):
        main(["--repo", "acme/churn"])
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with pytest.raises(SystemExit, match=r"^error: the webhook credential .* is empty$"):
        main(["--repo", "acme/churn"])
    monkeypatch.setenv("RELAY_WEBHOOK_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"^error: cannot read RELAY_WEBHOOK_TOKEN_FILE .*missing"):
        main(["--repo", "acme/churn"])
    (tmp_path / "credential").write_text("two words\n")
    monkeypatch.setenv("RELAY_WEBHOOK_TOKEN_FILE", str(tmp_path / "credential"))
    with pytest.raises(SystemExit, match="spaces or control characters"):
        main(["--repo", "acme/churn"])
    with pytest.raises(StackError, match="owner/name"):
        Relay("acme/../x", TOKEN, CREDENTIAL)


def test_relay_stops_cleanly_on_sigterm(tmp_path):
    """The kubelet's SIGTERM ends the relay's process with exit 0 (without a handler it would die
    of the signal here, and be deaf to it as a container's PID 1: tests/integration's
    test_containers_as_declared.py stops the container as declared)."""
    port = free_port()
    (tmp_path / "credential").write_text(CREDENTIAL + "\n")  # a mounted Secret's file
    env = {**os.environ, "GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": "http://127.0.0.1:9",
           "RELAY_WEBHOOK_TOKEN_FILE": str(tmp_path / "credential")}  # fmt: skip
    cmd = [sys.executable, "-m", "mlstack.monitor.relay", "--repo", "acme/churn",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "relay.log"
    proc = start(cmd, log, f"http://127.0.0.1:{port}/healthz", env=env, timeout=60)
    try:
        assert post(port, {"alerts": []}) == (200, {"dispatched": 0})  # the file's credential
        assert post(port, {"alerts": []}, auth="Bearer x")[0] == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        stop(proc)
    assert log.read_text().splitlines()[-1] == "relay: stopped"


# --- the cooldown --------------------------------------------------------------------------------


def test_relay_selects_firing_retrain_alerts_once_per_cooldown():
    now = [1000.0]
    relay = Relay("acme/churn", TOKEN, CREDENTIAL, cooldown_seconds=60, clock=lambda: now[0])
    alerts = parse_alerts({"alerts": [alert(), alert(status="resolved"), alert(retrain=None)]})
    assert relay.select(alerts) == alerts[:1]
    assert relay.select(alerts) == []  # Alertmanager's repeat, within the cooldown
    now[0] += 61
    assert relay.select(alerts) == alerts[:1]


@pytest.mark.reliability("chosen-fingerprint-cooldown-bypass")
def test_relay_cooldown_is_keyed_on_the_labels_not_the_senders_fingerprint(github):
    with serving(github.url) as (_, port):
        assert post(port, {"alerts": [alert(fingerprint="f1")]}) == (200, {"dispatched": 1})
        for fingerprint in ("f2", "f3", "", "f1"):  # the same alert, fingerprints made up
            assert post(port, {"alerts": [alert(fingerprint=fingerprint)]}) == (
                200,
                {"dispatched": 0},
            )
        same_twice = {"alerts": [alert(feature="tenure_months", fingerprint=f) for f in "ab"]}
        assert post(port, same_twice) == (200, {"dispatched": 1})  # another alert, once
    assert len(github.requests) == 2
    a = Alert("firing", {"b": "2", "a": "1"}, {})
    assert a.identity == Alert("resolved", {"a": "1", "b": "2"}, {"x": "y"}).identity
    assert a.identity != Alert("firing", {"a": "1", "b": "3"}, {}).identity


# --- strict request parsing ----------------------------------------------------------------------

GOOD = json.dumps({"alerts": [alert()]}).encode()
BAD_REQUESTS = [
    # (case, bytes sent, status)
    ("no Content-Length", request(GOOD, "X-Nothing: 1").replace(
        f"Content-Length: {len(GOOD)}\r\n".encode(), b""), 411),
    ("negative Content-Length", request(GOOD, "Content-Length: -1"), 400),
    ("signed Content-Length", request(GOOD, f"Content-Length: +{len(GOOD)}"), 400),
    ("non-numeric Content-Length", request(GOOD, "Content-Length: abc"), 400),
    ("two Content-Lengths", request(GOOD, f"Content-Length: {len(GOOD)}", f"Content-Length: {len(GOOD)}"), 400),
    ("a list as Content-Length", request(GOOD, f"Content-Length: {len(GOOD)}, {len(GOOD)}"), 400),
    ("oversized Content-Length, no body", request(b"", f"Content-Length: {(1 << 20) + 1}"), 413),
    ("huge Content-Length", request(b"", "Content-Length: 99999999999999999999"), 400),
    ("chunked", request(b"", "Transfer-Encoding: chunked"), 400),
    ("chunked and a length", request(b"", "Transfer-Encoding: chunked", "Content-Length: 5"), 400),
    ("text/plain", request(GOOD, "Content-Type: text/plain"), 415),
    ("no Content-Type", request(GOOD, "X-Nothing: 1").replace(b"Content-Type: application/json\r\n", b""), 415),
    ("body shorter than its length", request(GOOD, length=len(GOOD) + 10), 400),
    ("empty body", request(b""), 400),
    ("not JSON", request(b"{not json"), 400),
    ("not UTF-8", request(b'{"alerts": ["\xff"]}'), 400),
    ("a list", request(b"[1]"), 400),
    ("null", request(b"null"), 400),
    ("NaN", request(b'{"alerts": [], "x": NaN}'), 400),
    ("a key twice", request(b'{"alerts": [], "alerts": "x"}'), 400),
    ("deep nesting", request(b"[" * 200_000 + b"]" * 200_000), 400),
    ("alerts not a list", request(b'{"alerts": "x"}'), 400),
    ("an alert not an object", request(b'{"alerts": ["x"]}'), 400),
    ("unknown status", request(json.dumps({"alerts": [alert(status="up")]}).encode()), 400),
    ("labels not strings", request(json.dumps({"alerts": [{**alert(), "labels": {"a": 1}}]}).encode()), 400),
    ("no labels", request(json.dumps({"alerts": [{**alert(), "labels": {}}]}).encode()), 400),
    ("PUT", request(GOOD).replace(b"POST ", b"PUT ", 1), 405),
    ("an invented method", request(GOOD).replace(b"POST ", b"BREW ", 1), 405),
    ("HTTP/2.0", request(GOOD).replace(b"HTTP/1.1", b"HTTP/2.0", 1), 400),
    ("a header line without a colon", request(GOOD, "X-Broken"), 400),
    ("a folded header", request(GOOD, "X-Folded: a", " b"), 400),
    ("a header before the first", request(GOOD).replace(b"\r\nHost:", b"\r\n Lead: 1\r\nHost:", 1), 400),
    ("annotations a list", request(json.dumps({"alerts": [{**alert(), "annotations": []}]}).encode()), 400),
]  # fmt: skip


@pytest.mark.reliability("oversize-or-lying-content-length")
def test_relay_answers_every_malformed_request_with_a_4xx(github):
    with serving(github.url) as (_, port):
        got = {case: raw(port, data)[0] for case, data, _ in BAD_REQUESTS}
        assert got == {case: status for case, _, status in BAD_REQUESTS}
        assert github.requests == []
        assert raw(port, request(GOOD)) == (200, {"dispatched": 1})  # it still serves
    assert len(github.requests) == 1


# --- slow clients --------------------------------------------------------------------------------


def drip(port: int, bound: float = 60) -> str:
    """A slowloris client: a request line, then one header byte every 0.3 s (each read the
    relay waits on succeeds); 'cut off' when the relay closes the connection within ``bound``
    seconds, 'still open' otherwise."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
        s.sendall(b"POST /alertmanager HTTP/1.1\r\nX-Slow: ")
        end = time.monotonic() + bound
        while time.monotonic() < end:
            try:
                s.sendall(b"x")
                if not s.recv(4096):
                    return "cut off"
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed by the relay
                return "cut off"
            else:
                return "cut off"  # it answered (a timeout status): also the end of it
    return "still open"


@pytest.mark.reliability("slow-client")
def test_relay_cuts_off_slow_clients_and_keeps_serving(github):
    with serving(github.url, read_timeout=2, request_deadline=4, max_connections=8) as (_, port):
        results: list[str] = []
        slow = [threading.Thread(target=lambda: results.append(drip(port))) for _ in range(4)]
        for t in slow:
            t.start()
        time.sleep(0.5)  # the slow ones are connected and dripping
        assert post(port, {"alerts": [alert()]}) == (200, {"dispatched": 1})
        stalled = socket.create_connection(("127.0.0.1", port), timeout=60)
        stalled.sendall(request(GOOD, length=len(GOOD) + 100))  # then never the rest
        assert stalled.recv(4096).startswith(b"HTTP/1.0 408 ")
        stalled.close()
        for t in slow:
            t.join(timeout=120)
    assert results == ["cut off"] * 4
    assert len(github.requests) == 1


def test_relay_closes_connections_over_its_limit_and_serves_again_after(github):
    with serving(github.url, read_timeout=2, request_deadline=4, max_connections=2) as (_, port):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
        time.sleep(0.5)  # both accepted and holding their slots
        with socket.create_connection(("127.0.0.1", port), timeout=60) as third:
            assert third.recv(4096) == b""  # closed at once, unanswered: no slot
        for s in idle:
            assert s.recv(4096) == b""  # cut off at their deadline, slots freed
            s.close()
        assert post(port, {"alerts": [alert()]}) == (200, {"dispatched": 1})


# --- GitHub failing: Alertmanager must retry -----------------------------------------------------


@pytest.mark.reliability("upstream-failure-retry")
def test_relay_answers_502_and_keeps_no_cooldown_when_the_dispatch_fails():
    answers = [
        b"not http at all\r\n\r\n",
        None,  # closed without an answer
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # not GitHub's 204
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]
    github = ScriptedGitHub(answers)
    try:
        with serving(github.url) as (_, port):
            firing = {"alerts": [alert()]}
            for _ in range(len(answers) - 1):
                status, body = post(port, firing)
                assert status == 502 and body["error"].startswith("GitHub dispatch failed"), body
            assert post(port, firing) == (200, {"dispatched": 1})  # the retry that succeeds
            assert post(port, firing) == (200, {"dispatched": 0})  # now within the cooldown
        assert len(github.requests) == len(answers)
    finally:
        github.close()


@pytest.mark.reliability("redirect-with-token")
def test_relay_never_follows_a_redirect_with_its_token():
    elsewhere = ScriptedGitHub([])  # where a redirect points: must never see a request
    redirects = [
        f"HTTP/1.1 {code} Moved\r\nLocation: {elsewhere.url}/steal\r\nContent-Length: 0\r\n\r\n".encode()
        for code in (301, 302, 303, 307, 308)
    ]
    github = ScriptedGitHub(redirects)
    try:
        with serving(github.url) as (_, port):
            for _ in redirects:
                status, body = post(port, {"alerts": [alert()]})
                assert status == 502 and "not 204" in body["error"], body
        assert len(github.requests) == len(redirects)
        assert all(h["Authorization"] == f"Bearer {TOKEN}" for _, _, h in github.requests)
        assert elsewhere.requests == []
    finally:
        github.close()
        elsewhere.close()
    for url in ("http://api.github.com", "ftp://127.0.0.1", "https://u:p@api.github.com",
                "https://api.github.com/?x=1", "http://127.0.0.2:80", "api.github.com"):  # fmt: skip
        with pytest.raises(StackError, match="GITHUB_API_URL must be an https URL"):
            Relay("acme/churn", TOKEN, CREDENTIAL, url)
    assert Relay("acme/churn", TOKEN, CREDENTIAL, "https://ghe.example/api/v3/").api_url == (
        "https://ghe.example/api/v3"
    )
