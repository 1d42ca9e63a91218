"""``mlstack capture``: the payload sink KServe's logger sends to, and what it has captured."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mlstack.errors import StackError
from mlstack.settings import Settings


def _sink(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.monitor import capture, sink

    wal = Path(args.wal) if args.wal else settings.state / "sink-wal"
    root = args.root or settings.captures
    try:
        namespace = capture.check_name(args.namespace, "--namespace") if args.namespace else None
        sink_settings = settings.sink
        if args.live_quality_cache is not None:
            if not args.live_quality_cache >= 0:
                raise StackError("--live-quality-cache must be a number of seconds, 0 or more")
            sink_settings = replace(sink_settings, live_quality_cache_s=args.live_quality_cache)
        served = sink.Sink(root, wal, sink_settings, namespace, labels=settings.labels)
        sink.serve(served, args.host, args.port)
    except OSError as exc:
        raise StackError(f"payload sink cannot start: {exc.strerror or exc}") from None


def _since(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _show(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.monitor import capture

    frame = capture.read_captures(
        args.root or settings.captures, environment=args.env, since=args.since
    )
    if frame.empty:
        print("no captured predictions")
        return
    counts = frame.groupby(["environment", "model_name", "model_version"]).agg(
        rows=("id", "size"), requests=("id", "nunique"), last=("received_at", "max")
    )
    print(counts.to_string())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the capture command(s) to the ``mlstack`` parser's sub-commands."""
    cap = sub.add_parser("capture", help="the payload sink and the captured predictions")
    cap_sub = cap.add_subparsers(dest="cmd", required=True)
    run = cap_sub.add_parser(
        "sink", help="serve KServe's payload logger: CloudEvents in, Parquet captures out"
    )
    run.add_argument("--root", default="", help="captures root: a directory or s3:// URL "
                     "(default: MLSTACK_CAPTURE_ROOT, else <state dir>/captures)")  # fmt: skip
    run.add_argument("--wal", default="", help="write-ahead log directory "
                     "(default: <state dir>/sink-wal)")  # fmt: skip
    run.add_argument("--namespace", default=os.environ.get("MLSTACK_SINK_NAMESPACE", ""),
                     help="accept only events of this namespace (default: "
                     "MLSTACK_SINK_NAMESPACE; the manifest sets the pod's own)")  # fmt: skip
    run.add_argument("--host", default="127.0.0.1", help="address to listen on")
    run.add_argument("--port", type=int, default=8080, help="port to listen on")
    run.add_argument("--live-quality-cache", type=float, default=None, metavar="SECONDS",
                     help="read the label store's live-quality.json (MLSTACK_LABELS_DIR) at "
                     "most once per SECONDS for /metrics (default: "
                     "SinkSettings.live_quality_cache_s)")  # fmt: skip
    run.set_defaults(func=_sink)
    show = cap_sub.add_parser("show", help="rows captured, per environment, model and version")
    show.add_argument("--root", default="", help="captures root (default: as for sink)")
    show.add_argument("--env", default=None, help="one environment (namespace) only")
    show.add_argument("--since", type=_since, default=None, help="ISO date or time (UTC)")
    show.set_defaults(func=_show)
