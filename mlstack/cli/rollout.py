"""``mlstack rollout``: the verdict on an environment's canary, from Prometheus (``analyze``),
and acting on it through git (``promote``, ``rollback``; ``status`` reads the overlay).

Exit codes of ``analyze`` a workflow branches on: 0 promote, 10 wait, 20 rollback
(``rollout.EXIT_CODES``); 1 with one ``error:`` line when the analysis cannot run."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
from pathlib import Path

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


def actor() -> str:
    """Who acts, for the version tags: the workflow run (and who started it) in GitHub Actions,
    else the local user and host."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        run = os.environ.get("GITHUB_RUN_ID", "?")
        return (
            f"{os.environ.get('GITHUB_WORKFLOW', 'workflow')} run {run} "
            f"({os.environ.get('GITHUB_ACTOR', '?')}) {os.environ.get('GITHUB_REPOSITORY', '')}"
        ).strip()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (mlstack rollout)"


def _manifests(args: argparse.Namespace) -> Path:
    from mlstack.settings import code_root

    return Path(args.manifests) if args.manifests else code_root() / "manifests"


def _report(args: argparse.Namespace, outcome: object) -> None:
    from mlstack.deploy.lifecycle import Outcome

    assert isinstance(outcome, Outcome)
    o = outcome
    if o.action == "promote":
        head = f"promote: v{o.version} at 100 % in {o.env}"
        alias = (
            f"@champion v{o.version}"
            + (f", @previous v{o.other_version}" if o.other_version else "")
            if o.commit
            else ""
        )
    else:
        head = f"rollback: v{o.version} out of {o.env}, back to v{o.other_version}"
        alias = f"v{o.version} tagged rolled_back" if o.commit else ""
    lines = [head]
    lines.append(f"  overlay   {'written' if o.overlay_changed else 'unchanged'}")
    if o.commit:
        lines.append(f"  commit    {o.commit}{' (made now)' if o.committed else ''}")
    if alias:
        lines.append(f"  mlflow    {alias}{'' if o.recorded else ' (already)'}")
    if o.pending:
        lines.append(f"  pending   {o.pending}")
    emit(args, "\n".join(lines), o.as_dict())


def _promote(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.deploy import lifecycle

    outcome = lifecycle.promote_canary(
        _manifests(args),
        args.env,
        model_name=settings.model_name,
        tracking_uri=settings.mlflow_tracking_uri,
        actor=actor(),
        artifacts_destination=settings.artifacts_destination,
        allow_local_storage=args.allow_local_storage,
        commit=not args.no_commit,
        force=args.force,
    )
    _report(args, outcome)


def _rollback(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.deploy import lifecycle

    outcome = lifecycle.rollback_canary(
        _manifests(args),
        args.env,
        model_name=settings.model_name,
        tracking_uri=settings.mlflow_tracking_uri,
        actor=actor(),
        reason=args.reason,
        commit=not args.no_commit,
    )
    _report(args, outcome)


def _status(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.deploy import lifecycle, promote

    path = promote.overlay_file(_manifests(args), args.env)
    state = lifecycle.overlay_state(path.read_text(), path)
    phase = "canary" if state.canary < 100 else "stable"
    data = {"env": args.env, "file": str(path), "version": state.version}
    data |= {"canary": state.canary, "phase": phase}
    emit(args, f"{args.env}: v{state.version} {phase} ({state.canary} % to it)", data)


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

    prom = group_sub.add_parser(
        "promote",
        help="the canary to 100 %, committed; then @champion moves (old one: @previous)",
    )
    back = group_sub.add_parser(
        "rollback",
        help="the overlay back to the version before the canary, committed; the version tagged "
        "rolled back (@champion stays)",
    )
    status = group_sub.add_parser("status", help="the overlay's model version and canary share")
    for p in (prom, back, status):
        p.add_argument("--env", required=True, help="the environment (its overlay has a canary)")
        p.add_argument("--manifests", help="the manifests directory (default: this checkout's)")
        add_output_option(p)
    for p in (prom, back):
        p.add_argument(
            "--no-commit",
            action="store_true",
            help="write the overlay only (a workflow opens a pull request); run again once it "
            "is committed to record the move in MLflow",
        )
    prom.add_argument(
        "--force",
        action="store_true",
        help="promote a version rolled back before, or one that never was a canary",
    )
    prom.add_argument(
        "--allow-local-storage",
        action="store_true",
        help="accept a version whose files are on this machine (file://): a local try-out",
    )
    back.add_argument("--reason", default="", help="why (recorded on the version)")
    prom.set_defaults(func=_promote)
    back.set_defaults(func=_rollback)
    status.set_defaults(func=_status)
