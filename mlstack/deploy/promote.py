"""Promote a registered model version into an environment's overlay (the GitOps source of truth).

The overlay's ``promotion.yaml`` is a list of JSON 6902 operations; a promotion changes only their
values (model location, version, image digest, lineage annotations, canary share), keeps comments
and layout (ruamel round trip), writes a temporary file and renames it over the old one, and
changes nothing when nothing differs. Rollback is ``git revert`` of the promotion commit.
"""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.train import tracking

ENVIRONMENTS = ("staging", "production")
STORAGE_URI = "/spec/predictor/containers/0/env/0/value"
MODEL_VERSION = "/spec/predictor/containers/0/env/1/value"
# the predictor refuses files with another digest (env appended after OMP_NUM_THREADS)
MODEL_DIGEST = "/spec/predictor/containers/0/env/3/value"
IMAGE = "/spec/predictor/containers/0/image"
CANARY = "/spec/predictor/canaryTrafficPercent"
ANNOTATIONS = {
    "model_version": "/metadata/annotations/mlstack.io~1model-version",
    tracking.TAG_DATA_MD5: "/metadata/annotations/mlstack.io~1data-md5",
    tracking.TAG_GIT_SHA: "/metadata/annotations/mlstack.io~1git-sha",
    tracking.TAG_KFP_RUN_ID: "/metadata/annotations/mlstack.io~1kfp-run-id",
}
_DIGEST = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Release:
    model_name: str
    version: str
    storage_uri: str
    lineage: dict[str, str]
    digest: str = ""  # the version's model_digest (sha256 of its files), for MODEL_DIGEST


def storage_location(uri: str, artifacts_destination: str) -> str:
    """Where KServe's storage initializer reads a model version from. A server that proxies
    artifacts hands out ``mlflow-artifacts:`` URIs, which only MLflow clients understand: they map
    onto the server's ``--artifacts-destination``. Returns the URI to read; ``StackError`` for a
    proxied URI without ``artifacts_destination``."""
    if not uri.startswith("mlflow-artifacts:"):
        return uri
    if not artifacts_destination:
        raise StackError(
            f"{uri} is served through the MLflow server's artifact proxy, which KServe cannot "
            "read: set MLSTACK_ARTIFACTS_DESTINATION to the server's --artifacts-destination "
            "(s3://mlflow-artifacts with manifests/platform)"
        )
    return f"{artifacts_destination.rstrip('/')}/{urlparse(uri).path.lstrip('/')}"


def resolve_release(
    model_name: str,
    ref: str,
    *,
    tracking_uri: str,
    artifacts_destination: str = "",
    allow_local_storage: bool = False,
    force: bool = False,
) -> Release:
    """The registry version behind ``ref`` (a number or an alias), if policy allows promoting it
    (``mlstack.deploy.policy.verify_version``: its run, source, recorded gates and thresholds,
    storage URI and digest). Nothing is written here: ``promote`` writes only what this returned.

    Returns the release (version, the storage URI KServe reads, lineage). Raises ``StackError``
    when the server is unreachable, there is no such version, any policy check fails, or its
    artifacts are proxied and ``artifacts_destination`` is not given; ``allow_local_storage``
    accepts a ``file://`` location (a local try-out no cluster can serve). A version a canary
    analysis rolled back (tag ``rolled_back=true``) is refused unless ``force``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlstack.deploy import policy

    tracking.check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        mv = (
            client.get_model_version(model_name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(model_name, ref)
        )
        uri = client.get_model_version_download_uri(model_name, mv.version)
    except MlflowException as exc:
        raise StackError(f"no version '{ref}' of model '{model_name}': {exc.message}") from None
    if mv.tags.get(tracking.TAG_GATES_PASSED) != "true":
        raise StackError(
            f"refusing to promote {model_name} v{mv.version}: it is not marked as having passed "
            "the quality gates"
        )
    if not force:
        from mlstack.deploy.lifecycle import refuse_rolled_back

        refuse_rolled_back(dict(mv.tags or {}), model_name, str(mv.version))
    storage_uri = storage_location(uri, artifacts_destination)
    verified = policy.verify_version(
        client,
        mv,
        tracking_uri=tracking_uri,
        storage_uri=storage_uri,
        allow_local_storage=allow_local_storage,
    )
    lineage = {key: mv.tags.get(key, "") for key in ANNOTATIONS if key != "model_version"}
    # the digest of the files just checked: the predictor refuses any others (MODEL_DIGEST)
    return Release(model_name, str(mv.version), storage_uri, lineage, digest=verified.digest)


def overlay_file(manifests: Path, env: str) -> Path:
    """The promotion patch of ``env``'s overlay; ``StackError`` for an unknown environment or a
    missing file."""
    if env not in ENVIRONMENTS:
        raise StackError(f"unknown environment '{env}' (known: {', '.join(ENVIRONMENTS)})")
    path = manifests / "overlays" / env / "promotion.yaml"
    if not path.exists():
        raise StackError(f"no promotion patch at {path}")
    return path


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML()  # round trip: comments, order and quoting survive
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=2, offset=0)
    y.width = 4096
    return y


def edit(path: Path, values: dict[str, object], *, dry_run: bool = False) -> str:
    """Set the ``value`` of the operations at these JSON pointers.

    Returns the change as a unified diff ("" when the file already says so); writes the file
    atomically unless ``dry_run``. Raises ``StackError`` when a pointer has no operation."""
    y = _yaml()
    original = path.read_text()
    ops = y.load(original)
    by_path = {op.get("path"): op for op in ops if isinstance(op, dict)}
    missing = [p for p in values if p not in by_path]
    if missing:
        raise StackError(f"{path}: no operation for {', '.join(missing)}")
    for pointer, value in values.items():
        by_path[pointer]["value"] = value
    out = io.StringIO()
    y.dump(ops, out)
    text = out.getvalue()
    if text == original:
        return ""
    diff = "".join(
        difflib.unified_diff(
            original.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"a/{path.name}",
            tofile=f"b/{path.name}",
        )
    )
    if dry_run:
        return diff
    write_atomic(path, text)
    return diff


def promote(
    manifests: Path,
    env: str,
    release: Release | None,
    *,
    image: str | None = None,
    canary: int | None = None,
    dry_run: bool = False,
) -> str:
    """Write ``release`` (and the image digest, the canary share) into the env's overlay; with no
    release, only the image (a new build of the predictor) and the canary share.

    Returns the change as a unified diff ("" when nothing changes); with ``dry_run`` nothing is
    written. Raises ``StackError`` on an unknown environment, an undigested image, a canary
    share outside 0..100 or nothing to promote."""
    path = overlay_file(manifests, env)
    values: dict[str, object] = {}
    if release is not None:
        values = {
            STORAGE_URI: release.storage_uri,
            MODEL_VERSION: release.version,
            MODEL_DIGEST: release.digest,
            ANNOTATIONS["model_version"]: release.version,
            **{ANNOTATIONS[k]: v for k, v in release.lineage.items()},
        }
    elif image is None:
        raise StackError("nothing to promote: give a model version or alias, or an image")
    if image is not None:
        if not _DIGEST.match(image):
            raise StackError(
                f"image must be pinned by digest (name@sha256:<64 hex>), got {image!r}"
            )
        values[IMAGE] = image
    if canary is not None:
        if not 0 <= canary <= 100:
            raise StackError(f"canary must be 0..100, got {canary}")
        values[CANARY] = canary
    return edit(path, values, dry_run=dry_run)


def model_card(model_name: str, version: str, tracking_uri: str) -> str:
    """Markdown for a promotion PR: the version's held-out metrics against the current champion's
    on the same split (what the evaluate step logged), and the version's lineage. Returns the
    Markdown; raises ``StackError`` when the version has no run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(model_name, version)
    if not mv.run_id:
        raise StackError(f"{model_name} v{version} has no run: no metrics to show")
    run = client.get_run(mv.run_id)
    metrics = run.data.metrics
    keys = ["roc_auc", "f1", "average_precision", "accuracy", "recall_churned", "precision_churned"]
    lines = [
        f"## {model_name} v{version}",
        "",
        "| metric | this version | champion (same split) | change |",
        "|---|---|---|---|",
    ]
    for key in keys:
        if key not in metrics:
            continue
        champion = metrics.get(f"champion_{key}")
        shown = f"{champion:.4f}" if champion is not None else "none"
        delta = f"{metrics[key] - champion:+.4f}" if champion is not None else ""
        lines.append(f"| {key} | {metrics[key]:.4f} | {shown} | {delta} |")
    gates = {k.removeprefix("gate."): v for k, v in run.data.tags.items() if k.startswith("gate.")}
    lines += [
        "",
        "Gates: " + ", ".join(f"{k} {v}" for k, v in sorted(gates.items())),
        "",
        "| lineage | |",
        "|---|---|",
        f"| data md5 | `{mv.tags.get(tracking.TAG_DATA_MD5, '')}` |",
        f"| git SHA | `{mv.tags.get(tracking.TAG_GIT_SHA, '')}` |",
        f"| KFP run | `{mv.tags.get(tracking.TAG_KFP_RUN_ID, '')}` "
        f"({mv.tags.get(tracking.TAG_KFP_RUN_NAME, '')}) |",
        f"| MLflow run | `{mv.run_id}` |",
        f"| artifacts | `{client.get_model_version_download_uri(model_name, version)}` |",
    ]
    return "\n".join(lines) + "\n"
