"""``mlstack rollout analyze``: the verdict on an environment's canary, from Prometheus.

Exit codes a workflow branches on: 0 promote, 10 wait, 20 rollback (``rollout.EXIT_CODES``);
1 with one ``error:`` line when the analysis cannot run."""

from __future__ import annotations

import argparse

from mlstack.cli.output import add_output_option, emit
from mlstack.errors import StackError
from mlstack.settings import Settings


def _analyze(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.deploy import promote, rollout

    if args.env not in promote.ENVIRONMENTS:
        raise StackError(
            f"unknown environment '{args.env}' (known: {', '.join(promote.ENVIRONMENTS)})"
        )
    namespace = args.namespace or rollout.NAMESPACES[args.env]
    verdict = rollout.analyze(
        args.prometheus or settings.prometheus_url,
        model_name=settings.model_name,
        namespace=namespace,
        thresholds=settings.canary,
        window=args.window,
        stable_version=args.stable,
        canary_version=args.canary,
        at=args.at,
    )
    head = (
        f"{verdict.decision}: {settings.model_name} canary v{verdict.canary_version} against "
        f"stable v{verdict.stable_version} in {namespace} over {verdict.window}"
    )
    text = "\n".join([head] + [f"  {c.status:<4}  {c.line}" for c in verdict.checks])
    emit(args, text, verdict.as_dict() | {"exit_code": rollout.EXIT_CODES[verdict.decision]})
    raise SystemExit(rollout.EXIT_CODES[verdict.decision])


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the rollout command(s) to the ``mlstack`` parser's sub-commands."""
    group = sub.add_parser("rollout", help="canary analysis: promote, wait or roll back")
    group_sub = group.add_subparsers(dest="cmd", required=True)
    analyze = group_sub.add_parser(
        "analyze",
        help="compare the canary's model version with the stable one in Prometheus "
        "(exit 0 promote, 10 wait, 20 rollback, 1 error)",
    )
    analyze.add_argument("--env", required=True, help="staging or production")
    analyze.add_argument(
        "--prometheus", help="Prometheus base URL (default: MLSTACK_PROMETHEUS_URL's setting)"
    )
    analyze.add_argument("--window", default="10m", help="the window compared, a PromQL duration")
    analyze.add_argument("--namespace", help="override the environment's namespace")
    analyze.add_argument("--stable", help="the stable version (default: from model_info)")
    analyze.add_argument("--canary", help="the canary version (default: from model_info)")
    analyze.add_argument(
        "--at", type=float, help="evaluate at this Unix time instead of now (replays, tests)"
    )
    add_output_option(analyze)
    analyze.set_defaults(func=_analyze)
