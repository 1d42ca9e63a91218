"""``mlstack serve``: a registered model version served on 127.0.0.1 by the predictor."""

from __future__ import annotations

import argparse
import os
import sys

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


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.train.registry import find_version

    find_version(settings.model_name, args.version or args.alias, settings.mlflow_tracking_uri)
    argv = serve_argv(settings, alias=args.alias, version=args.version, port=args.port)
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    print(f"serving {argv[4]} on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    os.execv(sys.executable, argv)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the serve command(s) to the ``mlstack`` parser's sub-commands."""
    serve = sub.add_parser("serve", help="serve a registered model version on 127.0.0.1")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion", help="registry alias")
    which.add_argument("--version", help="registry version number")
    serve.add_argument("--port", type=int, default=8080, help="the HTTP port on 127.0.0.1")
    serve.set_defaults(func=_serve)
