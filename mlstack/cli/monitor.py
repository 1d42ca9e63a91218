"""``mlstack monitoring build``: the dashboards and the PrometheusRule, as code."""

from __future__ import annotations

import argparse

from mlstack.errors import StackError
from mlstack.settings import Settings


def _build(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.monitor import dashboards

    if args.check:
        if names := dashboards.stale():
            raise StackError(f"stale: {', '.join(names)}: run 'mlstack monitoring build'")
        print("manifests/monitoring is up to date")
        return
    for path in dashboards.build():
        print(f"wrote {path}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the monitoring command(s) to the ``mlstack`` parser's sub-commands."""
    mon = sub.add_parser("monitoring", help="dashboards and the PrometheusRule, as code")
    mon_sub = mon.add_subparsers(dest="cmd", required=True)
    build = mon_sub.add_parser("build", help="write dashboards/*.json and prometheusrule.yaml")
    build.add_argument("--check", action="store_true", help="fail when the files are stale")
    build.set_defaults(func=_build)
