"""DVC-versioned data: read a version at a git rev, add a new version, rebuild the seeded one.

The pointer file (``<data>.dvc``) in git names the data by md5; the bytes live in the DVC cache and
remote. Rules kept here:

- Reads are verified: ``read_version`` hashes the bytes it wrote and refuses them when they are
  not the pointer's md5 (DVC's filesystem copies cache and remote objects without checking them,
  so a corrupted cache object would otherwise be read, and recorded, as the committed version).
- A pointer is committed only after its data was pushed, and ``add_version`` is atomic across
  dvc add, dvc push and git commit, through a lock and a journal in ``.dvc/tmp`` (which DVC keeps
  out of git):

  - ``.dvc/tmp/mlstack-add.lock``: ``flock``-ed by every command that changes the data version
    (``add_version``, ``bootstrap``, ``status``), so two adds never interleave; the kernel releases
    it when its holder dies. A command that cannot get it within its wait fails with one line.
  - ``.dvc/tmp/mlstack-add/``: before the first change, copies of the pointer, the ``.gitignore``
    next to the data and the data, then ``journal.json`` (HEAD, the index entries of the pointer
    and ``.gitignore``, which copies exist; written by rename, so it is whole or absent). After
    ``dvc add`` the journal records the new md5. It is removed only once the commit is verified
    (HEAD moved, and HEAD's pointer names the new md5), so the SHA reported is always the new
    commit.
  - ``recover``, run first by each of those commands (and on any failure or interrupt within an
    add): with a journal present, if HEAD moved to a commit whose pointer names the journal's md5
    the add is complete and kept; otherwise the pointer, ``.gitignore``, data and index entries are
    put back from the journal and nothing is committed. Data already pushed for an undone add stays
    on the remote as an unreferenced object (harmless).
  - DVC rewrites its own ``.dvc/tmp/rwlock`` in place (truncate, then write), so a kill at that
    moment leaves it empty or cut short and every later DVC command fails on it. ``recover`` resets
    an unreadable one to "no holders" under DVC's own ``rwlock.lock``; a readable one is left to DVC,
    which drops entries of dead processes itself. A kill inside DVC's copy or link test can also
    leave one of its ``.<token>.tmp`` files beside the data: ``recover`` removes those.

  A pointer that is empty or not a DVC pointer without a journal to repair it (edited by hand, or
  torn by an older version of this code) is refused with one line naming ``git checkout HEAD --``;
  a ``.git/index.lock`` left by a killed git command is named with how to remove it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from mlstack.data.git_auth import git_credentials, redact
from mlstack.errors import StackError
from mlstack.files import write_atomic


@dataclass(frozen=True)
class DataVersion:
    path: str
    md5: str
    git_sha: str


def _git(repo: Path, *args: str, what: str | None = None) -> str:
    """``git -C repo ARGS``'s output; ``StackError`` naming ``what`` (default: the command) and
    git's last line when it fails, and how to repair a lock left by a killed git command."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as exc:
        out = exc.stderr.strip() or exc.stdout.strip()
        label = what or f"git {' '.join(args)}"
        if "index.lock" in out:
            raise StackError(
                f"{label} failed: {repo / '.git/index.lock'} exists (a git command was killed "
                "or is still running there): if none is running, remove that file and run again"
            ) from None
        detail = out.splitlines()
        raise StackError(
            f"{label} failed: {detail[-1] if detail else f'exit {exc.returncode}'}"
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
            _check_read(Path(out), path, sha, md5, _hash_name(info))
    except StackError as exc:
        raise StackError(redact(str(exc))) from None
    return DataVersion(path=path, md5=md5, git_sha=sha)


def _hash_name(info: dict[str, object]) -> str:
    """The hash DVC's pointer uses: ``md5`` (DVC 3) or ``md5-dos2unix`` (a DVC 2 pointer)."""
    dvc_info = info.get("dvc_info")
    entry = dvc_info.get("entry") if isinstance(dvc_info, dict) else None
    name = getattr(getattr(entry, "hash_info", None), "name", None)
    return name if isinstance(name, str) and name else "md5"


def _check_read(out: Path, path: str, sha: str, want: str, hash_name: str) -> None:
    """``StackError`` (and ``out`` removed) when the bytes written to ``out`` do not hash to the
    pointer's md5: DVC's filesystem copies a cache or remote object without checking it."""
    from dvc_data.hashfile.hash import fobj_md5

    with out.open("rb") as fh:
        got = str(fobj_md5(fh, name=hash_name))
    if got != want:
        out.unlink(missing_ok=True)
        raise StackError(
            f"{path} at {sha[:12]}: the bytes DVC gave have md5 {got}, the pointer names {want} "
            f"(a corrupted copy in the DVC cache or remote): delete files/md5/{want[:2]}/"
            f"{want[2:]} from the cache ('dvc cache dir' shows where) and fetch it again "
            "('dvc fetch'), or push a good copy if the remote's is bad"
        )


def pointer_md5(pointer: Path) -> str:
    """The md5 a DVC pointer file records for its (single) output; ``StackError`` (one line, how
    to repair) when the file is empty, torn or not a DVC pointer."""
    try:
        text = pointer.read_text()
    except UnicodeDecodeError:
        text = "\0"
    return _pointer_text_md5(text, str(pointer), repair=f"'git checkout HEAD -- {pointer}'")


def _pointer_text_md5(text: str, name: str, *, repair: str) -> str:
    try:
        md5 = yaml.safe_load(text)["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        md5 = None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}", md5):
        what = "is empty" if not text.strip() else "is not a DVC pointer (no outs[0].md5)"
        raise StackError(f"{name} {what}: restore the committed one ({repair}) and run again")
    return md5


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
    repo_root: Path,
    source: Path,
    *,
    data_path: str,
    message: str,
    remote: str | None = None,
    lock_timeout: float = 120.0,
) -> DataVersion:
    """Make ``source`` the new version of ``data_path``: dvc add, dvc push, then git commit.

    Atomic (see the module docstring): under the repository's add lock, an unfinished earlier add
    is rolled back first; if any step fails or is interrupted, the previous pointer, workspace
    data, ``.gitignore`` and their index entries are put back and nothing is committed. The same
    data as HEAD's again is a no-op.

    Returns the version now at HEAD: the new commit, checked to be a new HEAD whose pointer names
    the new md5 (for a no-op, the commit that last changed the pointer). Raises ``StackError``
    when ``source`` is missing, the pointer is torn, another add holds the lock for longer than
    ``lock_timeout`` seconds, or a dvc or git step fails.
    """
    names = _Files(repo_root, data_path)
    if not source.is_file():
        raise StackError(f"no such file: {source}")
    with _add_lock(repo_root, timeout=lock_timeout):
        _note(recover(repo_root))
        head = _head(repo_root)
        if names.pointer.exists():
            current = pointer_md5(names.pointer)  # a torn pointer is refused before any change
            if current == _md5(source) and _committed_md5(repo_root, data_path, head) == current:
                last = _git(repo_root, "log", "-1", "--format=%H", "--", names.pointer_rel)
                return DataVersion(data_path, current, last)
        journal = _begin(repo_root, names, head)
        try:
            if source.resolve() != names.target.resolve():
                names.target.parent.mkdir(parents=True, exist_ok=True)
                _copy_replace(source, names.target)
            # DVC's INFO lines ("To track the changes with git...") go to a stdout handler bound
            # at its first import, which may be before any redirect: its level keeps them out
            with (
                _dvc_errors("dvc add failed"),
                _dvc_log_level(logging.WARNING),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                repo = _quiet_repo(repo_root)
                repo.add(str(names.target))
            md5 = pointer_md5(names.pointer)
            _journal_write(journal, {**_journal_read(journal), "md5": md5})
            with (
                _dvc_errors(f"dvc push to remote '{remote or 'default'}' failed"),
                _dvc_log_level(logging.WARNING),
            ):
                repo.push(targets=[str(names.pointer)], remote=remote)
            tracked = [
                names.pointer_rel,
                *([names.gitignore_rel] if names.gitignore.exists() else []),
            ]
            _git(repo_root, "add", "--", *tracked)
            _git(repo_root, "commit", "-q", "-m", message, "--", *tracked, what="git commit")
            new_head = _head(repo_root)
            if new_head == head or _committed_md5(repo_root, data_path, new_head) != md5:
                raise StackError(
                    f"git commit left HEAD at {new_head[:12] or 'no commit'}, which does not "
                    f"hold the new pointer ({md5})"
                )
        except BaseException as exc:
            try:
                outcome = recover(repo_root)
            except StackError as undo:
                raise StackError(f"{_first_line(exc)}; rolling back failed too: {undo}") from None
            if isinstance(exc, StackError):
                raise StackError(f"{exc}; {outcome}") from None
            raise
        _end(journal)
    return DataVersion(data_path, md5, new_head)


# --- the add lock and journal -------------------------------------------------------------------

_LOCK = "mlstack-add.lock"
_JOURNAL = "mlstack-add"


@dataclass(frozen=True)
class _Files:
    """The paths one add changes: the data, its pointer and the ``.gitignore`` next to them."""

    root: Path
    data_path: str

    @property
    def pointer_rel(self) -> str:
        return pointer_path(self.data_path)

    @property
    def gitignore_rel(self) -> str:
        return str(PurePosixPath(self.data_path).parent / ".gitignore")

    @property
    def target(self) -> Path:
        return self.root / self.data_path

    @property
    def pointer(self) -> Path:
        return self.root / self.pointer_rel

    @property
    def gitignore(self) -> Path:
        return self.root / self.gitignore_rel

    def saved(self) -> dict[str, Path]:
        """Backup name -> workspace file, as the journal stores them."""
        return {"pointer": self.pointer, "gitignore": self.gitignore, "data": self.target}


def _tmp_dir(repo_root: Path) -> Path:
    dvc_dir = repo_root / ".dvc"
    if not dvc_dir.is_dir():
        raise StackError(f"{repo_root} is not a DVC repository (no .dvc): run 'dvc init' there")
    tmp = dvc_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    return tmp


@contextlib.contextmanager
def _add_lock(repo_root: Path, *, timeout: float) -> Iterator[None]:
    """Hold the repository's add lock (``flock`` on ``.dvc/tmp/mlstack-add.lock``, released by
    the kernel when the process dies), waiting up to ``timeout`` seconds for another holder."""
    import fcntl

    path = _tmp_dir(repo_root) / _LOCK
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"another 'mlstack data' command is changing {repo_root} (it holds "
                        f".dvc/tmp/{_LOCK}): wait for it to finish, then run again"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_replace(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` in one rename: never a half-written ``dst``."""
    tmp = dst.with_name(f".{dst.name}.incoming")
    shutil.copyfile(src, tmp)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(dst)


def _head(repo_root: Path) -> str:
    """HEAD's commit SHA, or "" on a branch with no commit yet."""
    done = subprocess.run(
        ["git", "-C", str(repo_root), "rev-parse", "-q", "--verify", "HEAD^{commit}"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _committed_md5(repo_root: Path, data_path: str, rev: str) -> str | None:
    """The md5 the pointer names at ``rev``; None when there is no (valid) pointer there."""
    if not rev:
        return None
    done = subprocess.run(
        ["git", "-C", str(repo_root), "show", f"{rev}:{pointer_path(data_path)}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    try:
        return _pointer_text_md5(done.stdout, "", repair="")
    except StackError:
        return None


def _index_entries(listing: str) -> dict[str, str]:
    """path -> "mode,sha" from ``git ls-files -s`` or ``git ls-tree`` output."""
    entries: dict[str, str] = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        fields = meta.split()
        mode, sha = fields[0], fields[2] if fields[1] == "blob" else fields[1]
        entries[path] = f"{mode},{sha}"
    return entries


def _set_index(repo_root: Path, paths: list[str], want: dict[str, str]) -> None:
    """Make the index entries of ``paths`` exactly ``want`` (absent where ``want`` has none)."""
    have = _index_entries(_git(repo_root, "ls-files", "-s", "--", *paths))
    if have == want:
        return
    for path in paths:
        if path in want:
            _git(repo_root, "update-index", "--add", "--cacheinfo", f"{want[path]},{path}")
        elif path in have:
            _git(repo_root, "rm", "-q", "--cached", "--ignore-unmatch", "--", path)


def _journal_read(journal: Path) -> dict[str, object]:
    try:
        doc = json.loads(journal.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read the add journal {journal}: {exc}") from None
    if not isinstance(doc, dict):
        raise StackError(f"the add journal {journal} is not a JSON object")
    return doc


def _journal_write(journal: Path, doc: dict[str, object]) -> None:
    write_atomic(journal, json.dumps(doc, indent=1).encode())


def _begin(repo_root: Path, names: _Files, head: str) -> Path:
    """Back up what the add will change, then write the journal (its existence means "an add is
    under way"). Returns the journal's path."""
    folder = _tmp_dir(repo_root) / _JOURNAL
    shutil.rmtree(folder, ignore_errors=True)  # backups whose journal was never written
    folder.mkdir()
    saved = []
    for name, path in names.saved().items():
        if path.is_file():
            _copy_replace(path, folder / name)
            saved.append(name)
    paths = [names.pointer_rel, names.gitignore_rel]
    doc: dict[str, object] = {
        "data_path": names.data_path,
        "head": head,
        "index": _index_entries(_git(repo_root, "ls-files", "-s", "--", *paths)),
        "saved": saved,
        "md5": None,
    }
    journal = folder / "journal.json"
    _journal_write(journal, doc)
    return journal


def _end(journal: Path) -> None:
    journal.unlink()
    shutil.rmtree(journal.parent, ignore_errors=True)


def recover(repo_root: Path) -> str | None:
    """Finish or undo an add that did not end (killed, or failed): a description, or None when
    there was none. The caller holds the add lock.

    When HEAD moved past the journal's HEAD to a commit whose pointer names the add's new md5,
    the add is complete: only the index entries are set to HEAD's. Otherwise the pointer,
    ``.gitignore`` and data are restored from the journal's backups (or removed where there was
    none) and their index entries set back. Raises ``StackError`` when git cannot do that.
    """
    repaired = _repair_dvc_rwlock(repo_root)
    folder = _tmp_dir(repo_root) / _JOURNAL
    journal = folder / "journal.json"
    if not journal.exists():
        shutil.rmtree(folder, ignore_errors=True)  # killed before the journal: nothing changed
        return repaired
    doc = _journal_read(journal)
    names = _Files(repo_root, str(doc["data_path"]))
    paths = [names.pointer_rel, names.gitignore_rel]
    head, md5 = _head(repo_root), doc.get("md5")
    if md5 and head != doc["head"] and _committed_md5(repo_root, names.data_path, head) == md5:
        _set_index(
            repo_root,
            paths,
            _index_entries(_git(repo_root, "ls-tree", head, "--", *paths)),
        )
        outcome = f"the unfinished add of {names.data_path} was committed as {head[:12]}: kept"
    else:
        saved = doc.get("saved")
        for name, path in names.saved().items():
            if isinstance(saved, list) and name in saved:
                _copy_replace(folder / name, path)
            else:
                path.unlink(missing_ok=True)
        index = doc.get("index")
        _set_index(repo_root, paths, index if isinstance(index, dict) else {})
        outcome = (
            f"nothing was committed and the previous {names.data_path}, its pointer and "
            ".gitignore are back in place"
        )
    for path in names.saved().values():  # a copy killed before its rename
        path.with_name(f".{path.name}.incoming").unlink(missing_ok=True)
    _remove_dvc_partials(names.target.parent)
    _end(journal)
    return f"{repaired}; {outcome}" if repaired else outcome


# dvc_objects' tmp_fname(): "." + secrets.token_urlsafe(16) + ".tmp", the name of the file DVC's
# link-type test and its copies write beside the data before a rename
_DVC_PARTIAL = re.compile(r"\.[A-Za-z0-9_-]{22}\.tmp")


def _remove_dvc_partials(folder: Path) -> None:
    """Remove the temp files a DVC command killed mid-copy left beside the data."""
    for path in folder.glob(".*.tmp"):
        if _DVC_PARTIAL.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def _repair_dvc_rwlock(repo_root: Path) -> str | None:
    """Reset DVC's ``rwlock`` file to no holders when a killed DVC command left it unreadable.

    Done under DVC's ``rwlock.lock`` (the guard DVC edits it under) and the add lock, so no DVC
    command of this project is inside it; the reset is written by rename. A description, or None
    when the file is absent or readable."""
    from dvc.lock import LockError, make_lock

    tmp = _tmp_dir(repo_root)
    path = tmp / "rwlock"
    if not path.exists():
        return None
    try:
        with make_lock(str(tmp / "rwlock.lock"), tmp_dir=str(tmp)):
            try:
                json.loads(path.read_text(encoding="utf-8"))
                return None
            except (UnicodeDecodeError, ValueError):
                write_atomic(path, b"{}")
    except LockError as exc:
        raise StackError(f"DVC's lock {tmp / 'rwlock.lock'} is held: {_first_line(exc)}") from None
    return "DVC's .dvc/tmp/rwlock was left unreadable by a killed DVC command: reset to no holders"


def _note(outcome: str | None) -> None:
    if outcome:
        logging.getLogger(__name__).warning(
            "note: an earlier 'mlstack data add' was interrupted: %s", outcome
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def bootstrap(
    repo_root: Path, data_path: str, *, rows: int, seed: int, remote: str | None = None
) -> str:
    """Make the committed data version available locally and on the remote (default: the repo's
    default remote). Returns the md5.

    Runs under the add lock, after rolling back an unfinished add (``recover``).

    On a fresh clone the local remote is empty; the committed version was made by the seeded
    generator, so it is rebuilt (into a temporary file), checked against the pointer's md5, and
    pushed. A workspace file that differs from the pointer is the user's: it is left alone.

    Raises ``StackError`` when there is no pointer, the workspace file differs from it, the
    rebuilt data does not match its md5, or DVC cannot push.
    """
    with _add_lock(repo_root, timeout=120.0):
        _note(recover(repo_root))
        return _bootstrap(repo_root, data_path, rows=rows, seed=seed, remote=remote)


def _bootstrap(repo_root: Path, data_path: str, *, rows: int, seed: int, remote: str | None) -> str:
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


@dataclass(frozen=True)
class DataStatus:
    """The data version a repository's HEAD names and how the workspace compares to it."""

    path: str
    md5: str
    git_sha: str
    workspace: str  # "matches", "differs", "missing" or "uncommitted pointer"
    recovered: str | None  # what ``recover`` did, if an unfinished add was found


def status(repo_root: Path, data_path: str, *, lock_timeout: float = 120.0) -> DataStatus:
    """Roll back (or complete) an unfinished add, then describe HEAD's data version.

    Raises ``StackError`` when the lock is held for longer than ``lock_timeout`` seconds, HEAD
    has no valid pointer for ``data_path``, or the workspace pointer is torn."""
    names = _Files(repo_root, data_path)
    with _add_lock(repo_root, timeout=lock_timeout):
        recovered = recover(repo_root)
        head = _head(repo_root)
        committed = _committed_md5(repo_root, data_path, head)
        if committed is None:
            raise StackError(
                f"HEAD has no valid DVC pointer {names.pointer_rel}: add a version with "
                "'mlstack data add'"
            )
        last = _git(repo_root, "log", "-1", "--format=%H", "--", names.pointer_rel)
        if not names.pointer.exists() or pointer_md5(names.pointer) != committed:
            workspace = "uncommitted pointer"
        elif not names.target.is_file():
            workspace = "missing"
        else:
            workspace = "matches" if _md5(names.target) == committed else "differs"
    return DataStatus(data_path, committed, last, workspace, recovered)


def _md5(path: Path) -> str:
    import hashlib

    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


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
