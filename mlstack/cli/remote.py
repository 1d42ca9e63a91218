"""``mlstack run submit`` and ``mlstack schedules sync``: the compiled pipeline on a KFP endpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlstack.cli.output import add_output_option, emit
from mlstack.errors import StackError
from mlstack.settings import Settings


def _submit(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data.versions import resolve_rev
    from mlstack.pipeline import remote
    from mlstack.pipeline.compile import parse_params

    if not args.endpoint:
        raise StackError("run submit needs --endpoint, the KFP API (e.g. http://localhost:8080)")
    ir_path = settings.tuning_ir_path if args.tuning else settings.ir_path
    params = parse_params(args.param, ir_path)
    params.setdefault("repo", args.repo)
    sha = resolve_rev(str(settings.repo_root), args.rev)
    client = remote.connect(args.endpoint)
    done = remote.submit(
        client,
        endpoint=args.endpoint,
        ir_path=ir_path,
        arguments=params,
        experiment=args.experiment or settings.experiment_name,
        git_sha=sha,
        wait_seconds=args.wait,
        service_account=settings.kfp_service_account,
    )
    emit(args, f"run {done.run_id}: {done.url}", {"run_id": done.run_id, "url": done.url})


def _schedules(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.pipeline import remote
    from mlstack.settings import code_root

    path = Path(args.file) if args.file else code_root() / "pipelines" / "schedules.yaml"
    experiment, desired = remote.load_schedules(path)
    if not args.endpoint:
        if not args.dry_run:
            raise StackError("schedules sync needs --endpoint, the KFP API (or --dry-run offline)")
        offline = remote.plan(desired, [])
        note = f"offline plan (no --endpoint): as if experiment '{experiment}' had no schedules"
        emit(args, f"{note}\n{offline.render()}", {"offline": True, **offline.to_dict()})
        return
    client = remote.connect(args.endpoint)
    result = remote.sync(
        client,
        settings.repo_root,
        experiment=experiment,
        desired=desired,
        dry_run=args.dry_run,
        service_account=settings.kfp_service_account,
    )
    emit(args, result.render(), {"offline": False, "dry_run": args.dry_run, **result.to_dict()})


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the run and schedules commands to the ``mlstack`` parser's sub-commands."""
    runs = sub.add_parser("run", help="the compiled pipeline on a KFP endpoint").add_subparsers(
        dest="cmd", required=True
    )
    submit = runs.add_parser("submit", help="create a run (kfp.Client) and print its URL")
    submit.add_argument("--endpoint", help="the KFP API, e.g. http://localhost:8080 (required)")
    submit.add_argument(
        "--experiment", help="KFP experiment (default: MLSTACK_EXPERIMENT_NAME, churn-training)"
    )
    submit.add_argument("--repo", default="", help="git URL of this repository (pipeline 'repo')")
    submit.add_argument("--rev", default="HEAD", help="data version: resolved to a commit SHA")
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter, typed by the IR (repeatable)",
    )
    submit.add_argument("--wait", type=int, metavar="SECONDS", help="follow the run to its end")
    submit.add_argument("--tuning", action="store_true", help="the tuning pipeline")
    add_output_option(submit)
    submit.set_defaults(func=_submit)

    sched = sub.add_parser("schedules", help="recurring runs declared in git").add_subparsers(
        dest="cmd", required=True
    )
    sync = sched.add_parser("sync", help="make KFP's recurring runs match pipelines/schedules.yaml")
    sync.add_argument(
        "--endpoint", help="the KFP API (without it, --dry-run plans offline from the file)"
    )
    sync.add_argument("--file", help="schedules file (default pipelines/schedules.yaml)")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_output_option(sync)
    sync.set_defaults(func=_schedules)
