"""``mlstack promote`` and ``mlstack root-app``: an environment's overlay, Argo CD's root app."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlstack.cli.output import add_output_option, emit
from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.settings import Settings


def _promote(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.deploy import promote
    from mlstack.settings import code_root

    manifests = Path(args.manifests) if args.manifests else code_root() / "manifests"
    ref = args.version or args.alias
    uri = settings.mlflow_tracking_uri
    release = (
        promote.resolve_release(
            settings.model_name,
            ref,
            tracking_uri=uri,
            artifacts_destination=settings.artifacts_destination,
            allow_local_storage=args.allow_local_storage,
            force=args.force,
        )
        if ref
        else None
    )
    if args.model_card and release is not None and not args.dry_run:
        # the card first: a card that cannot be written stops the promotion before the overlay
        card = promote.model_card(release.model_name, release.version, uri)
        try:
            write_atomic(Path(args.model_card), card)
        except OSError as exc:
            raise StackError(
                f"cannot write the model card to {args.model_card}: {exc.strerror or exc} "
                "(nothing promoted: give --model-card a path in a writable directory)"
            ) from None
    diff = promote.promote(
        manifests, args.env, release, image=args.image, canary=args.canary, dry_run=args.dry_run
    )
    where = promote.overlay_file(manifests, args.env)
    what = (
        f"{release.model_name} v{release.version} ({release.storage_uri})"
        if release
        else args.image
    )
    verb = ("would write" if args.dry_run else "wrote") if diff else "unchanged:"
    data = {
        "file": str(where),
        "changed": bool(diff),
        "dry_run": args.dry_run,
        "diff": diff,
        "model_name": release.model_name if release else None,
        "version": release.version if release else None,
        "storage_uri": release.storage_uri if release else None,
        "image": args.image,
        "canary": args.canary,
    }
    text = f"{verb} {where} -> {what}"
    emit(args, f"{diff}{text}" if args.dry_run else text, data)


def _root_app(args: argparse.Namespace, settings: Settings) -> None:
    import yaml

    from mlstack.deploy.argocd import root_application

    print(yaml.safe_dump(root_application(args.repo_url, args.revision), sort_keys=False), end="")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the promote and root-app commands to the ``mlstack`` parser's sub-commands."""
    prom = sub.add_parser("promote", help="write a model version into an environment's overlay")
    prom.add_argument("--env", required=True, help="staging or production")
    ref = prom.add_mutually_exclusive_group()
    ref.add_argument("--version", help="registry version number")
    ref.add_argument("--alias", help="registry alias, e.g. challenger")
    prom.add_argument("--image", help="predictor image pinned by digest (name@sha256:…)")
    prom.add_argument("--canary", type=int, help="production: traffic share for the new revision")
    prom.add_argument("--manifests", help="the manifests directory (default: this checkout's)")
    prom.add_argument("--model-card", help="also write the version's model card (markdown) here")
    prom.add_argument(
        "--dry-run", action="store_true", help="print the diff it would make, write nothing"
    )
    prom.add_argument(
        "--allow-local-storage",
        action="store_true",
        help="accept a version whose files are on this machine (file://): a local try-out that "
        "no cluster can serve",
    )
    prom.add_argument(
        "--force",
        action="store_true",
        help="promote a version even though a canary analysis rolled it back",
    )
    add_output_option(prom)
    prom.set_defaults(func=_promote)

    root = sub.add_parser("root-app", help="print argocd/root.yaml retargeted to a repo/revision")
    root.add_argument("--repo-url", required=True, help="the git URL Argo CD should read")
    root.add_argument("--revision", required=True, help="branch, tag or commit")
    root.set_defaults(func=_root_app)
