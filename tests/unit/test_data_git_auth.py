"""A private repository read with a token (mlstack.data.git_auth): a real clone through git and
DVC from a git smart-HTTP server on 127.0.0.1 that demands Basic auth, the token never in an error,
a log, a file or a credential store; and the cluster plumbing that brings the token to the ingest
step and the Katib trials (the Secret from an ExternalSecret, optional env)."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import yaml

from mlstack.data.git_auth import TOKEN_ENV, USERNAME_ENV, git_credentials
from mlstack.data.versions import pointer_md5, read_version, seeded_repo
from mlstack.errors import StackError
from mlstack.settings import DEFAULTS
from tests.support.kube import render

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghs_t0ken-never-to-be-seen"
USER = "x-access-token"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def git_http_backend(root: Path, user: str, token: str):  # type: ignore[no-untyped-def]
    """A WSGI app serving the repositories under ``root`` with `git http-backend` (git's own
    smart-HTTP server, as GitHub speaks it), to requests with the right Basic credentials only."""
    want = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        if environ.get("HTTP_AUTHORIZATION") != want:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])  # fmt: skip
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "PATH_INFO": environ["PATH_INFO"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""), "REMOTE_USER": user,
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""), "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""),
            "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
        }  # fmt: skip
        done = subprocess.run(["git", "http-backend"], input=body, env=cgi, capture_output=True, timeout=120)  # fmt: skip
        head, _, rest = done.stdout.partition(b"\r\n\r\n")
        headers = [tuple(h.split(": ", 1)) for h in head.decode().split("\r\n") if h]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [rest]

    return app


@pytest.fixture
def private_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A seeded data repository (DVC local remote) served over HTTP with Basic auth; HOME and
    the temporary directory inside tmp_path, HOME's git config storing credentials on disk."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    repo = seeded_repo(
        tmp_path / "srv" / "churn",
        tmp_path / "remote",
        data_path=DEFAULTS.data_path,
        rows=60,
        seed=7,
    )
    # a user config that would keep any credential git is given in ~/.git-credentials
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    for key in (TOKEN_ENV, USERNAME_ENV, "GIT_ASKPASS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    server = make_server("127.0.0.1", 0, git_http_backend(tmp_path / "srv", USER, TOKEN),
                         server_class=_Server, handler_class=_Quiet)  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/churn", repo
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def files_holding(root: Path, secret: str) -> list[Path]:
    return [
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
        and secret.encode() in p.read_bytes()
    ]  # fmt: skip


@pytest.mark.slow
def test_a_private_repository_is_read_with_the_token_and_the_token_is_never_shown_or_kept(
    private_repo, tmp_path, monkeypatch, caplog, capfd
):
    url, repo = private_repo
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    # no token: refused, one line naming the repository
    with pytest.raises(StackError) as refused:
        read_version(url, DEFAULTS.data_path, rev="main", out=out / "a.csv")
    assert url in str(refused.value) and "\n" not in str(refused.value)
    # a wrong token: refused, and the error does not show it
    monkeypatch.setenv(TOKEN_ENV, "wrong-" + TOKEN)
    with pytest.raises(StackError) as wrong:
        read_version(url, DEFAULTS.data_path, rev="main", out=out / "b.csv")
    assert TOKEN not in str(wrong.value)
    # the token: git resolves the rev, DVC clones and reads the data at it
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    version = read_version(url, DEFAULTS.data_path, rev="main", out=out / "c.csv")
    pointer = repo / f"{DEFAULTS.data_path}.dvc"
    assert version.md5 == pointer_md5(pointer)
    assert (out / "c.csv").read_bytes() == (repo / DEFAULTS.data_path).read_bytes()
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)  # fmt: skip
    assert version.git_sha == head.stdout.strip()
    # nowhere: not in a log record, the output, a file (the clone, HOME, the temp dir), git's env
    logged = "\n".join(r.getMessage() for r in caplog.records)
    printed = capfd.readouterr()
    assert TOKEN not in logged + printed.out + printed.err
    assert files_holding(tmp_path, TOKEN) == []
    assert not (tmp_path / "home" / ".git-credentials").exists()
    assert "GIT_ASKPASS" not in os.environ and "GIT_CONFIG_GLOBAL" not in os.environ


def test_without_a_token_git_is_left_as_it_is(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("GIT_ASKPASS", "/usr/bin/true")
    with git_credentials() as active:
        assert active is False and os.environ["GIT_ASKPASS"] == "/usr/bin/true"


def test_the_askpass_answers_git_s_prompts_from_the_environment(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    with git_credentials():
        askpass = Path(os.environ["GIT_ASKPASS"])
        assert TOKEN not in askpass.read_text()  # the script holds no token

        def ask(prompt: str) -> str:
            return subprocess.run([str(askpass), prompt], capture_output=True, text=True).stdout

        assert ask("Username for 'https://github.com': ") == "x-access-token\n"
        assert ask("Password for 'https://x-access-token@github.com': ") == f"{TOKEN}\n"
        monkeypatch.setenv(USERNAME_ENV, "bot")
        assert ask("Username for 'https://github.com': ") == "bot\n"
    assert not askpass.exists()


# --- the cluster side: Secret → optional env of the ingest step and the Katib trials ----------


def test_the_git_secret_reaches_the_ingest_step_and_the_trials_from_an_external_secret():
    from mlstack.pipeline.compile import read_ir
    from pipelines.common import GIT_SECRET_KEYS

    assert set(GIT_SECRET_KEYS) == {TOKEN_ENV, USERNAME_ENV}
    for ir in (DEFAULTS.ir_path, DEFAULTS.ir_path.with_name("tuning.yaml")):
        _, platform = read_ir(ir)
        [ingest] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
        [secret] = [s for s in ingest["secretAsEnv"] if s["secretName"] == DEFAULTS.git_secret]
        assert secret["optional"] is True
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {(k, k) for k in GIT_SECRET_KEYS}  # fmt: skip
    experiment = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trial["containers"][0]["env"]
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == DEFAULTS.git_secret}  # fmt: skip
    assert {n: (r["key"], r["optional"]) for n, r in refs.items()} == {k: (k, True) for k in GIT_SECRET_KEYS}  # fmt: skip
    # the Secret of that name, in the namespaces the steps and trials run in, is an ExternalSecret
    # making exactly those keys, from a remote key the dev store may read
    for path in ("manifests/platform/base", "manifests/platform/dev"):
        docs = render(ROOT / path)
        for namespace in ("kubeflow", "ml-training"):
            [made] = [d for d in docs if d["kind"] == "ExternalSecret"
                      and d["metadata"]["namespace"] == namespace
                      and d["spec"]["target"]["name"] == DEFAULTS.git_secret]  # fmt: skip
            assert set(made["spec"]["target"]["template"]["data"]) == set(GIT_SECRET_KEYS)
        remote = {r["remoteRef"]["key"] for r in made["spec"]["data"]}
    [reader] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "secret-reader"]
    assert remote <= {n for rule in reader["rules"] for n in rule.get("resourceNames", [])}


def test_cluster_up_stores_the_token_for_the_in_cluster_clones(tmp_path: Path):
    from tests.unit.test_upstream_rules import run_cluster_up

    fork = "https://github.com/someone/private-fork.git"
    done, _, applied = run_cluster_up(tmp_path, "v0.33.0", REPO_URL=fork, GIT_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    secrets = [d for d in yaml.safe_load_all(applied) if d and d["kind"] == "Secret"]
    [store] = [s for s in secrets if s["metadata"]["name"] == "mlstack-git"]
    data = {k: base64.b64decode(v).decode() for k, v in store["data"].items()}
    assert store["metadata"]["namespace"] == "mlstack-secrets"
    assert data == {"username": USER, "token": TOKEN}
    assert TOKEN not in done.stdout + done.stderr
