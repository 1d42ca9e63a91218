"""One error type for everything a user can fix, and a one-line exit for it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class StackError(Exception):
    """A failure with a message the user can act on; shown as one line, never a traceback."""


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn a ``StackError`` into ``error: <message>`` on stderr and exit status 1.

    Used by the CLI and by every KFP component shell, so a failed step ends with one clear line.
    """
    try:
        yield
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
