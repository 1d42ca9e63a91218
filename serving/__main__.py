"""Start the churn predictor: ``python -m serving [kserve flags] [--model_uri … | --model_dir …]``.

In the cluster KServe runs the image with ``--model_name`` and the model in ``/mnt/models``; the
version comes from ``--model_version`` (or ``MODEL_VERSION``) and the digest its files must have
from ``--model_digest`` (or ``MODEL_DIGEST``), which the overlay sets beside ``storageUri``; a
model the project's loader refuses ends the process with one ``error:`` line. Locally ``mlstack serve`` runs this with ``--model_uri models:/<name>@<alias>``
and ``--host 127.0.0.1``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import sys
import tempfile
from pathlib import Path

from mlstack.errors import exit_on_error
from mlstack.settings import DEFAULTS
from mlstack.train.tracking import TAG_MODEL_DIGEST

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m serving", parents=[model_server.parser], description=__doc__
    )
    parser.add_argument("--model_dir", default="/mnt/models", help="MLflow model directory")
    parser.add_argument(
        "--model_uri", help="models:/<name>@<alias> or models:/<name>/<version> (overrides dir)"
    )
    parser.add_argument("--model_version", default=os.environ.get("MODEL_VERSION", ""))
    parser.add_argument(
        "--model_digest",
        default=os.environ.get("MODEL_DIGEST", ""),
        help="sha256:<hex> the model's files must have (the version's model_digest tag); "
        "a --model_uri download uses the tag when this is empty",
    )
    parser.add_argument("--host", default="0.0.0.0", help="REST bind address (0.0.0.0 in a pod)")
    parser.add_argument("--max_batch_size", type=int, default=256)
    parser.add_argument("--drift_window", type=int, default=1000, help="rows in the PSI window")
    parser.set_defaults(model_name=DEFAULTS.model_name)
    return parser


def download_model(model_uri: str, dst: Path) -> tuple[Path, str, str]:
    """Download a registry version (by alias or number) to ``dst``; returns (dir, version, the
    version's ``model_digest`` tag or "")."""
    try:  # the platform extra: the predictor image has no MLflow (docs/images.md)
        import mlflow
        from mlflow import MlflowClient
    except ModuleNotFoundError as exc:
        if exc.name != "mlflow":
            raise
        raise SystemExit(
            "error: --model_uri needs MLflow's client, which the predictor image does not hold: "
            "give the downloaded model with --model_dir (KServe's storage initializer does), or "
            "run `mlstack serve` where the platform extra is installed"
        ) from None

    match = _MODELS_URI.match(model_uri)
    if not match:
        raise SystemExit(f"error: --model_uri {model_uri!r}: expected models:/<name>@<alias>")
    name = match["name"]
    client = MlflowClient()
    mv = (
        client.get_model_version_by_alias(name, match["alias"])
        if match["alias"]
        else client.get_model_version(name, match["version"])
    )
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dst)
    )
    return Path(path), str(mv.version), (mv.tags or {}).get(TAG_MODEL_DIGEST, "")


def cpu_limit() -> int | None:
    """The container's CPU quota (cgroup v2 ``cpu.max``), rounded up; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def main() -> None:
    # Startup allocates millions of objects that live as long as the process (modules, the model):
    # no cyclic collection while importing and loading (~10% of the start's CPU here,
    # docs/serving.md "Image"), then they are frozen out of every later collection
    gc.disable()
    # scikit-learn, scipy and skops are not imported here: the ONNX engine serves without them
    # (they are imported only when it cannot: the sklearn fallback, serving.model)
    from serving import surface
    from serving.model import ChurnModel

    args, _ = build_parser().parse_known_args()
    if args.workers != 1:
        # the drift window and the model's engine live in this process; scale with replicas
        raise SystemExit("error: --workers must be 1 (run more replicas instead)")
    # sklearn's OpenMP pool and onnxruntime's threads see every core of the node, not the pod's
    # limit: both get the limit (OpenMP reads the variable when sklearn, if ever, loads it)
    threads = int(os.environ.get("OMP_NUM_THREADS", cpu_limit() or 1))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # only a registry download needs a scratch directory: in a pod the root filesystem is
    # read-only and the model is already in --model_dir (KServe's storage initializer)
    scratch = (
        tempfile.TemporaryDirectory(prefix="mlstack-model-")
        if args.model_uri
        else contextlib.nullcontext("")
    )
    with scratch as tmp, exit_on_error():
        model_dir, version, digest = Path(args.model_dir), args.model_version, args.model_digest
        if args.model_uri:
            model_dir, version, tagged = download_model(args.model_uri, Path(tmp))
            digest = digest or tagged
        model = ChurnModel(
            args.model_name,
            model_dir,
            version or "unknown",
            max_batch_size=args.max_batch_size,
            drift_window=args.drift_window,
            expected_digest=digest or None,
            threads=threads,
        )
        # a model the project's loader refuses (format, trusted types, digest): one error line,
        # exit 1, no server
        model.load()
        if "sklearn" in sys.modules:  # the fallback loaded it: its pools get the limit too
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
        gc.freeze()
        gc.enable()
        # on args.host, without the repository extension, readiness = answering (surface.py)
        surface.serve([model], host=args.host)


if __name__ == "__main__":
    main()
