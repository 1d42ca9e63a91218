"""``mlstack labels``: delayed labels joined to captured predictions, and live quality;
``mlstack data from-production``: labelled captured rows as a new data version."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from mlstack.cli.output import add_output_option, emit
from mlstack.settings import Settings


def _quality_lines(settings: Settings) -> tuple[list[str], list[dict[str, object]]]:
    from mlstack.monitor import labels
    from mlstack.monitor.capture import read_captures

    qualities = labels.live_quality(
        read_captures(settings.captures),
        labels.read_labels(settings.labels),
        window_days=settings.live_quality.window_days,
        min_labels=settings.live_quality.min_labels,
    )
    labels.write_quality(settings.labels, qualities)
    floor = settings.gates.min_roc_auc
    lines = []
    for q in qualities:
        head = f"{q.model_name} v{q.model_version} in {q.environment}: {q.labelled} labelled"
        if q.roc_auc is None:
            lines.append(f"{head}; {q.note}")
            continue
        verdict = "BELOW the gate's minimum" if q.roc_auc < floor else "at least the minimum"
        lines.append(
            f"{head}, roc_auc {q.roc_auc:.4f} ({verdict} {floor}), f1 "
            f"{q.f1 if q.f1 is None else round(q.f1, 4)}" + (f"; {q.note}" if q.note else "")
        )
    if not qualities:
        lines.append("no labelled captured predictions yet")
    return lines, [asdict(q) for q in qualities]


def _add(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.monitor import labels
    from mlstack.monitor.capture import read_captures

    incoming = labels.read_label_file(Path(args.file))
    done = labels.add_labels(settings.labels, incoming, read_captures(settings.captures))
    lines, data = _quality_lines(settings)
    text = (
        f"{done.added} new label(s) stored, {done.already} already stored; the store holds "
        f"{done.total} ({settings.labels})"
    )
    emit(
        args,
        "\n".join([text, *lines]),
        {"added": done.added, "already": done.already, "total": done.total, "quality": data},
    )


def _quality(args: argparse.Namespace, settings: Settings) -> None:
    lines, data = _quality_lines(settings)
    emit(args, "\n".join(lines), {"quality": data})


def _from_production(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.monitor.production_data import from_production

    got = from_production(
        settings.repo_root,
        data_path=settings.data_path,
        captures_root=settings.captures,
        labels_store=settings.labels,
        environment=args.env,
        max_rows=settings.data_max_rows,
        test_size=settings.test_size,
        split_seed=settings.split_seed,
        message=args.message,
        remote=args.remote or settings.dvc_remote or None,
    )
    if got.added == 0:
        text = (
            f"nothing new: all {got.labelled} labelled predictions of {args.env} are in the data "
            f"already; {got.version.path} stays {got.version.md5} ({got.version.git_sha[:12]})"
        )
    else:
        text = (
            f"new data version {got.version.md5} pushed and committed as "
            f"{got.version.git_sha[:12]}: {got.added} labelled rows of {args.env} added, "
            f"{got.duplicates} already in the data, {got.dropped} oldest dropped (window "
            f"{settings.data_max_rows} rows); {got.rows} rows"
        )
    emit(
        args,
        text,
        {**asdict(got), "version": asdict(got.version), "environment": args.env},
    )


def register_data(data: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``from-production`` to the ``mlstack data`` sub-commands."""
    prod = data.add_parser(
        "from-production",
        help="labelled captured predictions as a new data version (validated, deduplicated)",
    )
    prod.add_argument(
        "--env", default="ml-production", help="the environment (namespace) captured from"
    )
    prod.add_argument(
        "-m",
        "--message",
        default="data: labelled production rows",
        help="the git commit message",
    )
    prod.add_argument("--remote", help="DVC remote (default: MLSTACK_DVC_REMOTE, else the default)")
    add_output_option(prod)
    prod.set_defaults(func=_from_production)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the labels command(s) to the ``mlstack`` parser's sub-commands."""
    lab = sub.add_parser("labels", help="delayed labels and the live quality of served versions")
    lab_sub = lab.add_subparsers(dest="cmd", required=True)
    add = lab_sub.add_parser(
        "add",
        help="store a labels file (id [, row], label, labelled_at) and recompute live quality",
    )
    add.add_argument("file", help="a .csv or .parquet file of labels")
    add_output_option(add)
    add.set_defaults(func=_add)
    quality = lab_sub.add_parser(
        "quality", help="recompute and print the live quality from the stored labels"
    )
    add_output_option(quality)
    quality.set_defaults(func=_quality)
