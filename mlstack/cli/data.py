"""``mlstack data``: DVC-versioned data (generate, bootstrap, add, status)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlstack.cli import labels
from mlstack.settings import Settings


def _generate(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data import generate

    seed = args.seed if args.seed is not None else settings.data_seed
    df = generate.generate(args.rows or settings.data_rows, seed, drift=args.drift)
    generate.write_csv(df, Path(args.out))
    print(f"wrote {len(df)} rows to {args.out} (seed {seed}{', drifted' if args.drift else ''})")


def _bootstrap(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data import versions

    md5 = versions.bootstrap(
        settings.repo_root,
        settings.data_path,
        rows=settings.data_rows,
        seed=settings.data_seed,
        remote=settings.dvc_remote or None,
    )
    print(
        f"{settings.data_path} md5 {md5} is in the DVC cache and on remote "
        f"'{settings.dvc_remote or 'default'}'"
    )


def _add(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data import versions

    version = versions.add_version(
        settings.repo_root,
        Path(args.source).resolve(),
        data_path=settings.data_path,
        message=args.message,
        remote=args.remote or settings.dvc_remote or None,
    )
    print(f"new data version {version.md5} pushed and committed as {version.git_sha[:12]}")


def _status(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data import versions

    got = versions.status(settings.repo_root, settings.data_path)
    if got.recovered:
        print(f"an interrupted 'data add' was cleaned up: {got.recovered}")
    print(f"{got.path} md5 {got.md5} committed as {got.git_sha[:12]}; workspace: {got.workspace}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the data command(s) to the ``mlstack`` parser's sub-commands."""
    data = sub.add_parser("data", help="DVC-versioned data").add_subparsers(
        dest="cmd", required=True
    )
    gen = data.add_parser("generate", help="write a seeded churn dataset (or a drifted batch)")
    gen.add_argument("out", help="the CSV file to write")
    gen.add_argument(
        "--rows", type=int, help="rows to generate (default: the settings' data_rows, 4000)"
    )
    gen.add_argument("--seed", type=int, help="random seed (default: the settings' data_seed, 7)")
    gen.add_argument("--drift", action="store_true", help="a drifted 'new production batch'")
    gen.set_defaults(func=_generate)
    boot = data.add_parser("bootstrap", help="rebuild the committed version and push it")
    boot.set_defaults(func=_bootstrap)
    add = data.add_parser("add", help="new data version: dvc add, dvc push, git commit")
    add.add_argument("source", help="CSV file that becomes the new version")
    add.add_argument(
        "-m", "--message", default="data: new churn data version", help="the git commit message"
    )
    add.add_argument("--remote", help="DVC remote (default: MLSTACK_DVC_REMOTE, else the default)")
    add.set_defaults(func=_add)
    stat = data.add_parser(
        "status", help="the committed version; finishes or rolls back an interrupted add"
    )
    stat.set_defaults(func=_status)
    labels.register_data(data)  # from-production: labelled captured rows as a version
