"""Reading a private git repository (or a private fork) over HTTPS with a token.

On a cluster the token comes from a Secret as the environment variable ``MLSTACK_GIT_TOKEN``
(``MLSTACK_GIT_USERNAME`` too, optional). While ``git_credentials()`` is active, git and DVC's
git backends (scmrepo: dulwich, pygit2) ask ``GIT_ASKPASS`` for credentials, which is a script in
a fresh temporary directory that prints the username or the token from the environment: the token
is never part of a URL, a git config, a file, a log line or an error message. The user's and the
system's git config are set aside meanwhile (an empty global config, no system config), so no
configured credential helper (``store``, a keychain) keeps the token either.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlstack.environ import environ

TOKEN_ENV = "MLSTACK_GIT_TOKEN"
USERNAME_ENV = "MLSTACK_GIT_USERNAME"
# GitHub takes any username with a token; x-access-token is the one its docs use for app tokens
DEFAULT_USERNAME = "x-access-token"

# git asks "Username for '<url>': " then "Password for '<url>': " (scmrepo asks the same)
_ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "${{{USERNAME_ENV}:-{DEFAULT_USERNAME}}}" ;;
  *) printf '%s\\n' "${TOKEN_ENV}" ;;
esac
"""


@contextlib.contextmanager
def git_credentials() -> Iterator[bool]:
    """While active, git reads the token of ``MLSTACK_GIT_TOKEN`` when a server asks for
    credentials, and never prompts on a terminal. Yields whether a token is set; without one,
    nothing changes (a public repository needs none)."""
    if not os.environ.get(TOKEN_ENV):
        yield False
        return
    with tempfile.TemporaryDirectory(prefix="mlstack-git-") as tmp:
        askpass = Path(tmp) / "askpass"
        askpass.write_text(_ASKPASS)  # reads the token from the environment; holds none
        askpass.chmod(0o700)
        config = Path(tmp) / "gitconfig"
        config.write_text("")
        with environ(
            {
                "GIT_ASKPASS": str(askpass),
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_GLOBAL": str(config),
                "GIT_CONFIG_NOSYSTEM": "1",
            }
        ):
            yield True


def redact(text: str) -> str:
    """``text`` with the token, should any tool echo it, replaced."""
    token = os.environ.get(TOKEN_ENV, "")
    return text.replace(token, "***") if token else text
