"""DVC-versioned data: read a version at a git rev, add a new version, rebuild the seeded one.

The pointer file (``<data>.dvc``) in git names the data by md5; the bytes live in the DVC cache and
remote. Rules kept here: a pointer is committed only after its data was pushed, and a failed push
puts the previous pointer and data back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlstack.data.git_auth import git_credentials, redact
from mlstack.errors import StackError


@dataclass(frozen=True)
class DataVersion:
    path: str
    md5: str
    git_sha: str


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr.strip() or exc.stdout.strip()).splitlines()
        raise StackError(
            f"git {' '.join(args)} failed: {detail[-1] if detail else exc.returncode}"
        ) from None
    return done.stdout.strip()


def resolve_rev(repo: str, rev: str) -> str:
    """The full commit SHA of ``rev`` in a local repo or a git URL; ``StackError`` when git
    cannot list or resolve it.

    For a URL, ``rev`` must name a branch or tag exactly (``git ls-remote`` matches suffixes, so
    ``main`` would also match ``feature/main``), or be a full SHA; an annotated tag resolves to
    its commit.
    """
    if Path(repo).exists():
        return _git(Path(repo), "rev-parse", "--verify", f"{rev}^{{commit}}")
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    out = subprocess.run(["git", "ls-remote", repo], capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"cannot list refs of {repo}: {out.stderr.strip()}")
    refs: dict[str, str] = {}
    for line in out.stdout.splitlines():
        sha, tab, name = line.partition("\t")
        if tab:
            refs[name] = sha
    for name in (f"refs/tags/{rev}^{{}}", f"refs/tags/{rev}", f"refs/heads/{rev}", rev):
        if name in refs:
            return refs[name]
    raise StackError(f"no branch or tag named '{rev}' in {repo} (or give a full commit SHA)")


@contextlib.contextmanager
def _dvc_errors(action: str) -> Iterator[None]:
    """DVC failures (unreachable remote, missing object, bad config, missing credentials) as one
    ``StackError`` line. Only DVC calls run inside, so every exception is one of those."""
    try:
        yield
    except StackError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause).strip():
            detail += f" ({str(cause).strip().splitlines()[0]})"
        raise StackError(f"{action}: {detail}") from None


def read_version(
    repo: str, path: str, *, rev: str, out: str | Path, remote: str | None = None
) -> DataVersion:
    """Copy ``path`` as it is at ``rev`` of ``repo`` (a local path or git URL) to ``out``.

    Returns the version read (path, md5, full commit SHA). Raises ``StackError`` (one line) when
    the revision does not resolve, the file is not tracked by DVC there, or DVC cannot fetch it.

    The bytes come from the DVC cache or, when missing there, ``remote`` (default: the repo's
    default remote).

    A private repository is read with the token of ``MLSTACK_GIT_TOKEN``, when set
    (``mlstack.data.git_auth``); no error names it.
    """
    from dvc.api import DVCFileSystem

    try:
        with git_credentials():
            sha = resolve_rev(repo, rev)
            with _dvc_errors(f"cannot read {path} at {sha[:12]} through DVC"):
                fs = DVCFileSystem(repo, rev=sha, remote=remote or None)
                info = fs.info(path)
                md5 = info.get("md5")
                if not md5:
                    raise StackError(f"{path} at {sha[:12]} is not tracked by DVC")
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(out))
    except StackError as exc:
        raise StackError(redact(str(exc))) from None
    return DataVersion(path=path, md5=md5, git_sha=sha)


def pointer_md5(pointer: Path) -> str:
    """The md5 a DVC pointer file records for its (single) output."""
    doc = yaml.safe_load(pointer.read_text())
    return str(doc["outs"][0]["md5"])


def pointer_path(data_path: str) -> str:
    """The DVC pointer file's path for ``data_path`` (relative like it)."""
    return f"{data_path}.dvc"


@contextlib.contextmanager
def _dvc_log_level(level: int) -> Iterator[None]:
    """DVC's own loggers at ``level`` for the duration (they log warnings, not exceptions)."""
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, was in zip(loggers, before, strict=True):
            logger.setLevel(was)


def _quiet_repo(root: Path):  # type: ignore[no-untyped-def]
    from dvc.repo import Repo

    return Repo(str(root))


def add_version(
    repo_root: Path, source: Path, *, data_path: str, message: str, remote: str | None = None
) -> DataVersion:
    """Make ``source`` the new version of ``data_path``: dvc add, dvc push, then git commit.

    If anything before the commit fails, the previous pointer, workspace data and ``.gitignore``
    are put back as they were (or removed, where there was none) and nothing is committed, so git
    never holds a pointer whose data is not on the remote. The same data again is a no-op.

    Returns the version now at HEAD (for a no-op, the commit that last changed the pointer).
    Raises ``StackError`` when ``source`` is missing or a dvc or git step fails.
    """
    target = repo_root / data_path
    pointer = repo_root / pointer_path(data_path)
    gitignore = target.parent / ".gitignore"
    if not source.is_file():
        raise StackError(f"no such file: {source}")
    if pointer.exists() and _md5(source) == pointer_md5(pointer):
        head = _git(repo_root, "log", "-1", "--format=%H", "--", str(pointer))
        return DataVersion(data_path, pointer_md5(pointer), head)
    saved = {path: path.read_bytes() if path.exists() else None for path in (pointer, gitignore)}
    backup = target.with_name(f".{target.name}.previous")
    if target.exists():
        shutil.copy2(target, backup)
    try:
        if source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.incoming")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        with _dvc_errors("dvc add failed"), contextlib.redirect_stdout(io.StringIO()):
            repo = _quiet_repo(repo_root)
            repo.add(str(target))
        with _dvc_errors(f"dvc push to remote '{remote or 'default'}' failed"):
            repo.push(targets=[str(pointer)], remote=remote)
    except BaseException:
        for path, content in saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        if backup.exists():
            backup.replace(target)
        else:
            target.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)
    tracked = [str(pointer), *([str(gitignore)] if gitignore.exists() else [])]
    _git(repo_root, "add", *tracked)
    _git(repo_root, "commit", "-m", message, "--", *tracked)
    return DataVersion(data_path, pointer_md5(pointer), _git(repo_root, "rev-parse", "HEAD"))


def bootstrap(
    repo_root: Path, data_path: str, *, rows: int, seed: int, remote: str | None = None
) -> str:
    """Make the committed data version available locally and on the remote (default: the repo's
    default remote). Returns the md5.

    On a fresh clone the local remote is empty; the committed version was made by the seeded
    generator, so it is rebuilt (into a temporary file), checked against the pointer's md5, and
    pushed. A workspace file that differs from the pointer is the user's: it is left alone.

    Raises ``StackError`` when there is no pointer, the workspace file differs from it, the
    rebuilt data does not match its md5, or DVC cannot push.
    """
    from mlstack.data import generate

    pointer = repo_root / pointer_path(data_path)
    if not pointer.exists():
        raise StackError(f"no DVC pointer at {pointer}; create one with 'mlstack data add'")
    want = pointer_md5(pointer)
    target = repo_root / data_path
    if target.exists() and _md5(target) != want:
        raise StackError(
            f"{data_path} differs from the committed version {want}: add it as a new version "
            "('mlstack data add') or restore it ('dvc checkout')"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        repo = _quiet_repo(repo_root)
        if not target.exists():
            # not on the remote yet is expected here (rebuilt below): DVC's warning about the
            # missing cache files would only alarm, so it is kept quiet for this one pull
            with contextlib.suppress(Exception), _dvc_log_level(logging.ERROR):
                repo.pull(targets=[str(pointer)], remote=remote)
    if not target.exists():
        tmp = target.with_name(f".{target.name}.generated")
        generate.write_csv(generate.generate(rows, seed), tmp)
        got = _md5(tmp)
        if got != want:
            tmp.unlink()
            raise StackError(
                f"the seeded generator gives md5 {got}, the pointer names {want}: "
                "pull the data from its remote instead"
            )
        tmp.replace(target)
    with _dvc_errors("dvc commit/push failed"), contextlib.redirect_stdout(io.StringIO()):
        repo.commit(str(pointer), force=True)
        repo.push(targets=[str(pointer)], remote=remote)
    return want


def _md5(path: Path) -> str:
    import hashlib

    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def init_repo(path: Path, remote: Path) -> None:
    """A new git repository with DVC and a local-directory default remote named ``local``;
    ``StackError`` when git or dvc fails."""
    import sys

    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    dvc = [sys.executable, "-m", "dvc"]
    for args in (
        ["init", "-q"],
        ["config", "core.analytics", "false"],
        ["remote", "add", "-d", "local", str(remote)],
    ):
        done = subprocess.run([*dvc, *args], cwd=path, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"dvc {' '.join(args)} failed: {done.stderr.strip()}")
    _git(path, "add", ".dvc")
    _git(path, "commit", "-qm", "dvc init")


def seeded_repo(path: Path, remote: Path, *, data_path: str, rows: int, seed: int) -> Path:
    """A new repository (``init_repo``) whose first commit after ``dvc init`` is one seeded data
    version at ``data_path``: what tests and benchmarks run the pipeline on. Returns ``path``;
    raises ``StackError`` as ``init_repo`` and ``add_version`` do."""
    from mlstack.data import generate

    init_repo(path, remote)
    source = path.parent / f".{path.name}-v1.csv"
    generate.write_csv(generate.generate(rows, seed), source)
    add_version(path, source, data_path=data_path, message="data: v1")
    source.unlink()
    return path
