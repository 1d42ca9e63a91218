"""``mlstack pipeline``: compile the pipelines, run the compiled IR locally (kfp.local)."""

from __future__ import annotations

import argparse
import sys

from mlstack.cli.output import add_output_option, emit
from mlstack.errors import StackError
from mlstack.settings import Settings


def _compile(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.pipeline.compile import compile_all, stale

    if args.check:
        if names := stale():
            raise StackError(f"stale IR: {', '.join(names)}: run 'mlstack pipeline compile'")
        print("pipelines/*.yaml are up to date")
        return
    for path in compile_all():
        print(f"compiled {path}")


def _run(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.pipeline.compile import parse_params
    from mlstack.pipeline.local import run_pipeline

    ir_path = settings.tuning_ir_path if args.tuning else settings.ir_path
    params = parse_params(args.param, ir_path)
    if args.tuning:
        params.setdefault("tune_backend", "local")
    summary = run_pipeline(
        settings,
        rev=args.rev,
        arguments=params,
        verbose=args.verbose,
        ir_path=ir_path,
        runner=args.runner,
        # with -o json, stdout is the JSON document alone: the steps' progress goes to stderr
        out=sys.stderr if args.output == "json" else None,
    )
    if args.output == "json":
        emit(args, "", summary.to_dict())
        return
    print()
    print(summary.render())
    print()
    ui = summary.tracking_uri
    if not ui.startswith(("http://", "https://")):
        ui = f"mlflow ui --backend-store-uri {ui}"
    print(f"Look at it: {ui}  (model '{settings.model_name}'); step outputs in {summary.run_dir}")


def _check_data(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.pipeline import trigger

    check = trigger.check_data(settings, args.rev)
    print(check.render())
    if check.unchanged:
        raise SystemExit(trigger.EXIT_UNCHANGED)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the pipeline command(s) to the ``mlstack`` parser's sub-commands."""
    pipe = sub.add_parser("pipeline", help="the training pipeline").add_subparsers(
        dest="cmd", required=True
    )
    comp = pipe.add_parser("compile", help="compile to pipelines/training.yaml")
    comp.add_argument("--check", action="store_true", help="fail when the checked-in IR is stale")
    comp.set_defaults(func=_compile)
    run = pipe.add_parser("run", help="run the compiled pipeline locally (kfp.local)")
    run.add_argument("--rev", default="HEAD", help="git rev of the data version (default HEAD)")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter, typed by the IR (repeatable)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log")
    run.add_argument(
        "--tuning", action="store_true", help="the tuning pipeline (Katib tune step run locally)"
    )
    run.add_argument(
        "--runner",
        default="subprocess",
        help="subprocess: the steps in this environment (default); docker: each step in its "
        "image (DOCKER_HOST; an MLflow server in MLFLOW_TRACKING_URI), docs/pipeline-containers.md",
    )
    add_output_option(run)
    run.set_defaults(func=_run)
    check = pipe.add_parser(
        "check-data",
        help="read the data version through the configured DVC remote (MLSTACK_DVC_REMOTE) and "
        "compare it with @champion's: exit 0 new data (or no champion), 10 the champion was "
        "trained on it",
    )
    check.add_argument("--rev", default="HEAD", help="git rev of the data version (default HEAD)")
    check.set_defaults(func=_check_data)
