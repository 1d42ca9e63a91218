"""``mlstack features``: the feature store (feature_repo/, mlstack.features)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from mlstack.cli.output import add_output_option, emit
from mlstack.settings import Settings


def _materialize(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data.versions import resolve_rev
    from mlstack.features.materialize import materialize

    repo = str(settings.repo_root)
    got = materialize(
        repo,
        settings.data_path,
        resolve_rev(repo, args.data_rev),
        remote=args.remote or settings.dvc_remote,
        settings=settings,
    )
    emit(args, got.render(), asdict(got))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the features command(s) to the ``mlstack`` parser's sub-commands."""
    features = sub.add_parser("features", help="the feature store: materialize to the online store")
    features_sub = features.add_subparsers(dest="cmd", required=True)
    mat = features_sub.add_parser(
        "materialize",
        help="write the data version's features as the store's source and copy the snapshots "
        "since the last run to the online store (incremental, idempotent)",
    )
    mat.add_argument(
        "--data-rev", default="HEAD", help="the git rev of the data version (default: HEAD)"
    )
    mat.add_argument("--remote", help="DVC remote (default: MLSTACK_DVC_REMOTE, else the default)")
    add_output_option(mat)
    mat.set_defaults(func=_materialize)
