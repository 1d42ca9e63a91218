"""``-o text|json`` for the commands that report something: the text for people, one JSON
document for workflows (instead of scraping the text)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``-o/--output`` on a reporting command."""
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people, or one JSON document on stdout",
    )


def emit(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    """Print ``text``, or ``data`` as JSON when ``-o json`` was given."""
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)
