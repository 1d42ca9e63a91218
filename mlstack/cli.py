"""``mlstack``: the command line of the stack. Each command is a few lines over a plain function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mlstack.errors import StackError, exit_on_error
from mlstack.settings import Settings, load_settings

_TYPES = {"NUMBER_DOUBLE": float, "NUMBER_INTEGER": int, "STRING": str, "BOOLEAN": bool}


def parse_params(pairs: list[str], ir_path: Path) -> dict[str, Any]:
    """``key=value`` pairs typed by the pipeline's own input definitions."""
    from mlstack.compile import read_ir

    spec, _ = read_ir(ir_path)
    defs = spec["root"]["inputDefinitions"]["parameters"]
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise StackError(f"--param {pair!r}: expected key=value")
        if key not in defs:
            raise StackError(f"--param {key}: not a pipeline parameter (known: {', '.join(defs)})")
        kind = _TYPES[defs[key]["parameterType"]]
        try:
            out[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        except ValueError:
            raise StackError(f"--param {key}: {raw!r} is not a {kind.__name__}") from None
    return out


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import datagen

    seed = args.seed if args.seed is not None else settings.data_seed
    df = datagen.generate(args.rows or settings.data_rows, seed, drift=args.drift)
    datagen.write_csv(df, Path(args.out))
    print(f"wrote {len(df)} rows to {args.out} (seed {seed}{', drifted' if args.drift else ''})")


def _cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import dvcdata

    md5 = dvcdata.bootstrap(
        settings.repo_root,
        settings.data_path,
        settings.data_rows,
        settings.data_seed,
        remote=settings.dvc_remote or None,
    )
    print(
        f"{settings.data_path} md5 {md5} is in the DVC cache and on remote "
        f"'{settings.dvc_remote or 'default'}'"
    )


def _cmd_add(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import dvcdata

    version = dvcdata.add_version(
        settings.repo_root,
        Path(args.source).resolve(),
        settings.data_path,
        args.message,
        remote=args.remote or settings.dvc_remote or None,
    )
    print(f"new data version {version.md5} pushed and committed as {version.git_sha[:12]}")


def _cmd_compile(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.compile import compile_all, stale

    if args.check:
        if names := stale():
            raise StackError(f"stale IR: {', '.join(names)}: run 'mlstack pipeline compile'")
        print("pipelines/*.yaml are up to date")
        return
    for path in compile_all():
        print(f"compiled {path}")


def _cmd_run(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.local_run import run_local

    ir_path = settings.tuning_ir_path if args.tuning else settings.ir_path
    params = parse_params(args.param, ir_path)
    if args.tuning:
        params.setdefault("tune_backend", "local")
    summary = run_local(settings, args.rev, params, args.verbose, ir_path=ir_path)
    print()
    print(summary.render())
    print()
    print(
        f"Look at it: mlflow ui --backend-store-uri {summary.tracking_uri}  "
        f"(model '{settings.model_name}'); step outputs in {summary.run_dir}"
    )


def _cmd_tune(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import dvcdata, katib

    exp = katib.load(args.experiment or settings.katib_experiment)
    repo = str(settings.repo_root)
    sha = dvcdata.resolve_rev(repo, args.rev)
    result = katib.tune_local(
        exp,
        settings.mlflow_tracking_uri,
        settings.experiment_name,
        repo,
        sha,
        parallel=args.parallel,
        max_trials=args.max_trials,
    )
    print(result.render())


def _cmd_promote(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import promote
    from mlstack.settings import code_root

    manifests = Path(args.manifests) if args.manifests else code_root() / "manifests"
    ref = args.version or args.alias
    uri = settings.mlflow_tracking_uri
    release = (
        promote.resolve(settings.model_name, ref, uri, settings.artifacts_destination)
        if ref
        else None
    )
    changed = promote.promote(manifests, args.env, release, image=args.image, canary=args.canary)
    where = promote.overlay_file(manifests, args.env)
    what = (
        f"{release.model_name} v{release.version} ({release.storage_uri})"
        if release
        else args.image
    )
    print(f"{'wrote' if changed else 'unchanged:'} {where} -> {what}")
    if args.model_card and release is not None:
        card = promote.model_card(release.model_name, release.version, uri)
        Path(args.model_card).write_text(card)


def _cmd_monitoring(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import monitoring

    if args.check:
        if names := monitoring.stale():
            raise StackError(f"stale: {', '.join(names)}: run 'mlstack monitoring build'")
        print("manifests/monitoring is up to date")
        return
    for path in monitoring.build():
        print(f"wrote {path}")


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import dvcdata, kfp_remote

    ir_path = settings.tuning_ir_path if args.tuning else settings.ir_path
    params = parse_params(args.param, ir_path)
    params.setdefault("repo", args.repo)
    sha = dvcdata.resolve_rev(str(settings.repo_root), args.rev)
    client = kfp_remote.connect(args.endpoint)
    done = kfp_remote.submit(
        client,
        args.endpoint,
        ir_path,
        params,
        args.experiment,
        sha,
        wait_seconds=args.wait,
        service_account=settings.kfp_service_account,
    )
    print(f"run {done.run_id}: {done.url}")


def _cmd_root_app(args: argparse.Namespace, settings: Settings) -> None:
    import yaml

    from mlstack.cluster import root_application

    print(yaml.safe_dump(root_application(args.repo_url, args.revision), sort_keys=False), end="")


def _cmd_schedules(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack import kfp_remote
    from mlstack.settings import code_root

    path = Path(args.file) if args.file else code_root() / "pipelines" / "schedules.yaml"
    experiment, desired = kfp_remote.load_schedules(path)
    client = kfp_remote.connect(args.endpoint)
    result = kfp_remote.sync(
        client,
        settings.repo_root,
        experiment,
        desired,
        args.dry_run,
        service_account=settings.kfp_service_account,
    )
    print(result.render())


def serve_argv(settings: Settings, alias: str | None, version: str | None, port: int) -> list[str]:
    """The predictor's command line for a registry version, bound to 127.0.0.1 (no gRPC)."""
    ref = f"{settings.model_name}/{version}" if version else f"{settings.model_name}@{alias}"
    return [
        sys.executable, "-m", "serving",
        "--model_uri", f"models:/{ref}",
        "--model_name", settings.model_name,
        "--host", "127.0.0.1",
        "--http_port", str(port),
        "--enable_grpc", "false",
        "--enable_latency_logging", "false",
    ]  # fmt: skip


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.tracking import check_reachable

    check_reachable(settings.mlflow_tracking_uri)
    argv = serve_argv(settings, args.alias, args.version, args.port)
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    print(f"serving {argv[4]} on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    os.execv(sys.executable, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlstack", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)

    data = sub.add_parser("data", help="DVC-versioned data").add_subparsers(
        dest="cmd", required=True
    )
    gen = data.add_parser("generate", help="write a seeded churn dataset (or a drifted batch)")
    gen.add_argument("out")
    gen.add_argument("--rows", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--drift", action="store_true", help="a drifted 'new production batch'")
    gen.set_defaults(func=_cmd_generate)
    boot = data.add_parser("bootstrap", help="rebuild the committed version and push it")
    boot.set_defaults(func=_cmd_bootstrap)
    add = data.add_parser("add", help="new data version: dvc add, dvc push, git commit")
    add.add_argument("source", help="CSV file that becomes the new version")
    add.add_argument("-m", "--message", default="data: new churn data version")
    add.add_argument("--remote", help="DVC remote (default: MLSTACK_DVC_REMOTE, else the default)")
    add.set_defaults(func=_cmd_add)

    pipe = sub.add_parser("pipeline", help="the training pipeline").add_subparsers(
        dest="cmd", required=True
    )
    comp = pipe.add_parser("compile", help="compile to pipelines/training.yaml")
    comp.add_argument("--check", action="store_true", help="fail when the checked-in IR is stale")
    comp.set_defaults(func=_cmd_compile)
    run = pipe.add_parser("run", help="run the compiled pipeline locally (kfp.local)")
    run.add_argument("--rev", default="HEAD", help="git rev of the data version (default HEAD)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log")
    run.add_argument(
        "--tuning", action="store_true", help="the tuning pipeline (Katib tune step run locally)"
    )
    run.set_defaults(func=_cmd_run)

    tune = sub.add_parser("tune", help="run the Katib Experiment locally (optuna)")
    tune.add_argument("--experiment", help="Experiment YAML (default katib/experiment.yaml)")
    tune.add_argument("--rev", default="HEAD", help="git rev of the data version")
    tune.add_argument("--parallel", type=int, help="override parallelTrialCount")
    tune.add_argument("--max-trials", type=int, help="lower maxTrialCount")
    tune.set_defaults(func=_cmd_tune)

    prom = sub.add_parser("promote", help="write a model version into an environment's overlay")
    prom.add_argument("--env", required=True, help="staging or production")
    ref = prom.add_mutually_exclusive_group()
    ref.add_argument("--version", help="registry version number")
    ref.add_argument("--alias", help="registry alias, e.g. challenger")
    prom.add_argument("--image", help="predictor image pinned by digest (name@sha256:…)")
    prom.add_argument("--canary", type=int, help="production: traffic share for the new revision")
    prom.add_argument("--manifests", help="the manifests directory (default: this checkout's)")
    prom.add_argument("--model-card", help="also write the version's model card (markdown) here")
    prom.set_defaults(func=_cmd_promote)

    remote = sub.add_parser("run", help="the compiled pipeline on a KFP endpoint").add_subparsers(
        dest="cmd", required=True
    )
    sub_run = remote.add_parser("submit", help="create a run (kfp.Client) and print its URL")
    sub_run.add_argument("--endpoint", required=True, help="KFP API, e.g. http://localhost:8080")
    sub_run.add_argument("--experiment", default=load_settings().experiment_name)
    sub_run.add_argument("--repo", default="", help="git URL of this repository (pipeline 'repo')")
    sub_run.add_argument("--rev", default="HEAD", help="data version: resolved to a commit SHA")
    sub_run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    sub_run.add_argument("--wait", type=int, metavar="SECONDS", help="follow the run to its end")
    sub_run.add_argument("--tuning", action="store_true", help="the tuning pipeline")
    sub_run.set_defaults(func=_cmd_submit)

    sched = sub.add_parser("schedules", help="recurring runs declared in git").add_subparsers(
        dest="cmd", required=True
    )
    sync = sched.add_parser("sync", help="make KFP's recurring runs match pipelines/schedules.yaml")
    sync.add_argument("--endpoint", required=True)
    sync.add_argument("--file", help="schedules file (default pipelines/schedules.yaml)")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.set_defaults(func=_cmd_schedules)

    root = sub.add_parser("root-app", help="print argocd/root.yaml retargeted to a repo/revision")
    root.add_argument("--repo-url", required=True, help="the git URL Argo CD should read")
    root.add_argument("--revision", required=True, help="branch, tag or commit")
    root.set_defaults(func=_cmd_root_app)

    mon = sub.add_parser("monitoring", help="dashboards and the PrometheusRule, as code")
    mon_sub = mon.add_subparsers(dest="cmd", required=True)
    build = mon_sub.add_parser("build", help="write dashboards/*.json and prometheusrule.yaml")
    build.add_argument("--check", action="store_true", help="fail when the files are stale")
    build.set_defaults(func=_cmd_monitoring)

    serve = sub.add_parser("serve", help="serve a registered model version on 127.0.0.1")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion", help="registry alias (default champion)")
    which.add_argument("--version", help="registry version number")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    args = build_parser().parse_args(argv)
    with exit_on_error():
        args.func(args, load_settings())


if __name__ == "__main__":
    main(sys.argv[1:])
