"""``mlstack``: the command line of the stack. Each command is a few lines over a plain function."""

from __future__ import annotations

import argparse
import os

from mlstack.cli import data, deploy, monitor, pipeline, remote, serve, tune
from mlstack.errors import exit_on_error
from mlstack.settings import load_settings

GROUPS = (data, pipeline, tune, deploy, remote, monitor, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``mlstack`` parser, one sub-command group per module; reads no settings."""
    parser = argparse.ArgumentParser(prog="mlstack", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; a ``StackError`` exits 1
    with one line."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    args = build_parser().parse_args(argv)
    with exit_on_error():
        args.func(args, load_settings())
