"""A logged model's files: their digest (what evaluate records and promote and the predictor check).

The digest is ``sha256:`` over every regular file under the model directory, in sorted relative
POSIX path order, each as its path, a NUL byte and the sha256 of its content: any byte changed,
any file added, removed or renamed changes it. A symbolic link is refused (the storage
initializer and MLflow both download regular files; a link could point anywhere).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlstack.errors import StackError

DIGEST_PREFIX = "sha256:"


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def directory_digest(path: Path, *, exclude: frozenset[str] = frozenset()) -> str:
    """The digest of the model directory ``path`` (``exclude``: top-level file names left out).

    Returns ``sha256:<64 hex>``; raises ``StackError`` when ``path`` is not a directory or holds a
    symbolic link."""
    if not path.is_dir():
        raise StackError(f"model directory {path} does not exist")
    h = hashlib.sha256()
    for item in sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix()):
        rel = item.relative_to(path).as_posix()
        if item.is_symlink():
            raise StackError(f"model directory {path} holds a symbolic link: {rel}")
        if not item.is_file() or rel in exclude:
            continue
        h.update(rel.encode() + b"\0" + _file_sha256(item))
    return DIGEST_PREFIX + h.hexdigest()
