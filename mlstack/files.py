"""Files written whole or not at all: the one atomic write the overlays, the model card, the data
journal and the label store use."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[int]:
    """An exclusive ``flock`` on ``directory`` (no lock where the OS has none): while it is held,
    a temporary file of ``write_atomic`` in it belongs to no live writer. Yields the directory's
    file descriptor."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX
            pass
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _remove_debris(path: Path) -> None:
    """Temporary files of an earlier write to ``path`` that was killed before its rename."""
    for stale in path.parent.glob(f".{path.name}.*"):
        stale.unlink(missing_ok=True)


def _write_fd(fd: int, data: bytes, mode: int) -> None:
    os.fchmod(fd, mode)  # the creation modes are masked by the umask (mkstemp makes 0600)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content`` (text is written as UTF-8; mode kept, 0644 for a new file): readers see the old or
    the new content, never a mix, and a kill at any moment leaves no partial file.

    On Linux the content goes into an unnamed ``O_TMPFILE`` in the same directory, which gets a
    name (``.<name>.<random>``) only once complete and is then renamed over ``path``; elsewhere,
    a named temporary file. A kill between naming and renaming leaves a complete temporary file,
    which the next write removes (under a lock on the directory, so never a live writer's).
    Raises ``OSError`` when the directory cannot be written."""
    data = content.encode() if isinstance(content, str) else content
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with _directory_lock(path.parent) as directory:
        _remove_debris(path)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o600)
        except (AttributeError, OSError):  # not Linux, or a file system without O_TMPFILE
            fd = -1
        named = False
        if fd >= 0:
            try:
                _write_fd(fd, data, mode)
                # a directory fd makes os.link call linkat(..., AT_SYMLINK_FOLLOW), which links
                # the open file itself rather than the /proc symbolic link to it
                os.link(f"/proc/self/fd/{fd}", tmp.name, dst_dir_fd=directory)
                named = True
            except OSError:  # no /proc, or a file system that refuses: a named temp file
                pass
            finally:
                os.close(fd)
        try:
            if not named:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    _write_fd(fd, data, mode)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
