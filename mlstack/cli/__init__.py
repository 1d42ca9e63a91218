"""``mlstack``: the command line of the stack. Each command is a few lines over a plain function."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from mlstack.cli import (
    capture,
    completion,
    data,
    deploy,
    features,
    labels,
    monitor,
    pipeline,
    remote,
    rollout,
    serve,
    tune,
)
from mlstack.errors import StackError
from mlstack.settings import environment_variables, load_settings
from mlstack.train import tracking

GROUPS = (
    data,
    pipeline,
    features,
    tune,
    deploy,
    rollout,
    remote,
    labels,
    monitor,
    capture,
    serve,
    completion,
)


def package_version() -> str:
    """The installed ``mlstack`` distribution's version ("unknown" when not installed)."""
    try:
        return version("mlstack")
    except PackageNotFoundError:
        return "unknown"


def _epilog() -> str:
    width = max(len(name) for name, _ in environment_variables())
    lines = [f"  {name:<{width}}  default: {default}" for name, default in environment_variables()]
    return "environment (each overrides one setting):\n" + "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """The ``mlstack`` parser, one sub-command group per module; reads no settings (``--help``
    works whatever the environment holds) and runs nothing."""
    parser = _Parser(
        prog="mlstack",
        description="The command line of the stack: data, pipeline, tuning, promotion, serving.",
        epilog=_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"mlstack {package_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="traceback",
        action="store_true",
        help="on an unexpected error, show its traceback (default: one line)",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        group.register(sub)
    parser.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command.

    Exits 0 on success; 1 with one ``error:`` line on a ``StackError`` or, unless ``-v``, on an
    unexpected exception; 130 on Ctrl-C. Bare ``mlstack`` prints the help."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    tracking.bound_http_retries()  # every MLflow call of every command, and of the steps it runs
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "completion", False):  # reads no settings: works in any environment
        print(completion.bash_script(parser), end="")
        return
    if args.func is None:
        parser.print_help()
        return
    try:
        args.func(args, load_settings())
    except StackError as exc:
        _fail(f"error: {exc}", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if args.traceback:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"error: {type(exc).__name__}: {first} (mlstack -v … shows the traceback)", 1)


def _fail(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code) from None
