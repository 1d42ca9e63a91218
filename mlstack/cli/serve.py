"""``mlstack serve``: a registered model version served on 127.0.0.1 by the predictor, and with
``--transformer-port`` the Feast transformer in front of it (requests carrying only customer ids)."""

from __future__ import annotations

import argparse
import os
import sys

from mlstack.errors import StackError
from mlstack.settings import Settings


def serve_argv(
    settings: Settings, *, alias: str | None, version: str | None, port: int
) -> list[str]:
    """The predictor's command line for a registry version (``version`` wins over ``alias``),
    bound to 127.0.0.1 (no gRPC); raises nothing."""
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


def transformer_argv(settings: Settings, *, port: int, predictor_port: int) -> list[str]:
    """The transformer's command line on 127.0.0.1:``port`` in front of the predictor on
    127.0.0.1:``predictor_port`` (the online store: ``mlstack.features.repo.open_store``)."""
    return [
        sys.executable, "-m", "serving.transformer_main",
        "--model_name", settings.model_name,
        "--predictor_host", f"127.0.0.1:{predictor_port}",
        "--host", "127.0.0.1",
        "--http_port", str(port),
        "--enable_grpc", "false",
        "--enable_latency_logging", "false",
    ]  # fmt: skip


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.train.registry import find_version

    find_version(settings.model_name, args.version or args.alias, settings.mlflow_tracking_uri)
    argv = serve_argv(settings, alias=args.alias, version=args.version, port=args.port)
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    print(f"serving {argv[4]} on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    if not args.transformer_port:
        os.execv(sys.executable, argv)
    if args.transformer_port == args.port:
        raise StackError(f"--transformer-port {args.port} is the predictor's --port")
    from mlstack.processes import run_together

    front = transformer_argv(settings, port=args.transformer_port, predictor_port=args.port)
    print(
        f"customer ids on http://127.0.0.1:{args.transformer_port} (the Feast transformer)",
        flush=True,
    )
    raise SystemExit(run_together([argv, front]))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the serve command(s) to the ``mlstack`` parser's sub-commands."""
    serve = sub.add_parser("serve", help="serve a registered model version on 127.0.0.1")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion", help="registry alias")
    which.add_argument("--version", help="registry version number")
    serve.add_argument("--port", type=int, default=8080, help="the HTTP port on 127.0.0.1")
    serve.add_argument(
        "--transformer-port",
        type=int,
        default=0,
        help="also run the Feast transformer (requests carrying only customer ids, looked up in "
        "the online store `mlstack features materialize` fills) on this port; 0: none",
    )
    serve.set_defaults(func=_serve)
