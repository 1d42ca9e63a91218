"""What a registry version must prove before ``promote`` writes it into an overlay.

Anyone with registry write access can create a version with any source and any tags, so nothing
on the version itself is trusted. A version is promotable only when every check passes, and
each refusal is one ``StackError`` line:

1. it names a run (``run_id``) that exists;
2. its source is a logged model of that run (``models:/m-…``, the URI the train step registers)
   and its download location is that logged model's artifact location;
3. that run's evaluation recorded every gate as ``pass``, ``gates_passed=true``, and thresholds
   (``gate_threshold.*``) at least as strict as the floors kept in the repository;
4. the storage URI KServe will read is one its storage initializer can read from a cluster
   (``check_cluster_readable``; a local try-out may allow ``file://``);
5. the files at the download location have the digest that run recorded (``model_digest``).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlstack.errors import StackError
from mlstack.settings import GATE_AT_LEAST, GATE_AT_MOST, gate_floor_violation
from mlstack.train import tracking

# the gates evaluate decides (mlstack.train.evaluation.decide): each must be recorded as "pass"
REQUIRED_GATES = ("min_roc_auc", "min_f1", "vs_champion")
_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)/?$")

# What KServe's default storage initializer (ClusterStorageContainer "default", kserve_storage
# Storage.download) reads as a model *directory* from inside a cluster: object stores by prefix,
# Azure Blob and File shares by their https host, a PVC mounted by the webhook. A plain
# http(s) URL is downloaded as one file (an archive), not a directory; file:// and paths are
# read inside the initializer's own container.
CLUSTER_SCHEMES = ("s3", "gs", "hdfs", "webhdfs", "pvc")
_AZURE_HOSTS = re.compile(
    r"^[^.]+\.(blob|file)\.core\.windows\.net$|^[^.]+\.z[0-9]{1,2}\.(blob|file)\.storage\.azure\.net$"
)


@dataclass(frozen=True)
class Verified:
    """What the checks established: the run that evaluated the version, where its files are
    (as MLflow hands them out) and their digest."""

    run_id: str
    download_uri: str
    digest: str


def _refuse(model_name: str, version: str, why: str) -> StackError:
    return StackError(f"refusing to promote {model_name} v{version}: {why}")


def check_cluster_readable(uri: str) -> None:
    """Refuse a storage URI that KServe's storage initializer cannot read in a cluster
    (``StackError`` saying what to set); returns nothing for a readable one."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in CLUSTER_SCHEMES and parsed.netloc:
        return
    if scheme == "https" and _AZURE_HOSTS.match(parsed.netloc.lower()):
        return
    fix = (
        "register it through an MLflow server whose artifact root is an object store "
        "(manifests/platform: --artifacts-destination s3://mlflow-artifacts, and "
        "MLSTACK_ARTIFACTS_DESTINATION set to it for promote)"
    )
    if scheme == "file" or len(scheme) <= 1:  # no scheme, or a drive letter: a local path
        why = "is on this machine's file system, which no cluster can read"
        fix += ", or pass --allow-local-storage for a local try-out that no cluster will serve"
    elif scheme == "mlflow-artifacts":
        why = "is served through the MLflow server's artifact proxy, which KServe cannot read"
        fix = "set MLSTACK_ARTIFACTS_DESTINATION to the server's --artifacts-destination"
    elif scheme in CLUSTER_SCHEMES:
        why = "names no bucket or host"
    elif scheme in ("http", "https"):
        why = "is a plain http(s) URL, which KServe's storage initializer reads as one file"
    else:
        why = f"has a scheme ({scheme}:) that KServe's storage initializer does not read"
    raise StackError(f"storage URI {uri} {why}: {fix}")


def _recorded_thresholds(tags: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in GATE_AT_LEAST + GATE_AT_MOST:
        raw = tags.get(f"{tracking.TAG_THRESHOLD_PREFIX}{name}")
        try:
            out[name] = float(raw) if raw is not None else float("nan")
        except ValueError:
            out[name] = float("nan")
    return out


def check_gates(tags: dict[str, str]) -> str | None:
    """Why a run's recorded evaluation does not allow promotion, or None when it does."""
    if tags.get(tracking.TAG_GATES_PASSED) != "true":
        return f"its run did not record {tracking.TAG_GATES_PASSED}=true"
    gates = {
        k.removeprefix(tracking.TAG_GATE_PREFIX): v
        for k, v in tags.items()
        if k.startswith(tracking.TAG_GATE_PREFIX)
    }
    missing = [g for g in REQUIRED_GATES if g not in gates]
    if missing:
        return f"its run recorded no result for gate {', '.join(missing)}"
    failed = sorted(g for g, v in gates.items() if v != "pass")
    if failed:
        return f"its run recorded gate {', '.join(failed)} as not passed"
    loose = gate_floor_violation(_recorded_thresholds(tags))
    if loose is not None:
        return f"its run was evaluated with looser gates than the repository's floors: {loose}"
    return None


def _digest_of(download_uri: str, tracking_uri: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlstack.train.artifacts import model_digest

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one-line errors
    with tempfile.TemporaryDirectory(prefix="mlstack-promote-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=download_uri, dst_path=tmp, tracking_uri=tracking_uri
            )
        except (MlflowException, OSError) as exc:
            raise StackError(f"cannot download {download_uri} to check its digest: {exc}") from None
        return model_digest(Path(local))


def verify_version(
    client: Any,
    mv: Any,
    *,
    tracking_uri: str,
    storage_uri: str | None = None,
    allow_local_storage: bool = False,
) -> Verified:
    """Run the checks above on the model version ``mv`` (an ``MlflowClient`` and its
    ``ModelVersion``), the cheap ones first; ``storage_uri`` is what the overlay would get (the
    download location mapped for KServe), checked unless ``allow_local_storage``. Returns what
    was verified; raises ``StackError`` on the first failed check. Writes nothing."""
    from mlflow.exceptions import MlflowException

    name, version = mv.name, str(mv.version)
    if not mv.run_id:
        raise _refuse(name, version, "it names no run, so nothing shows how it was evaluated")
    try:
        run = client.get_run(mv.run_id)
    except MlflowException:
        raise _refuse(name, version, f"its run {mv.run_id} does not exist") from None
    source = _LOGGED_MODEL_URI.match(mv.source or "")
    if source is None:
        raise _refuse(
            name, version, f"its source {mv.source} is not a model logged by a training run"
        )
    try:
        logged = client.get_logged_model(source["id"])
        download_uri = client.get_model_version_download_uri(name, version)
    except MlflowException:
        raise _refuse(name, version, f"its source {mv.source} does not exist") from None
    if logged.source_run_id != mv.run_id:
        raise _refuse(
            name,
            version,
            f"its source {mv.source} was logged by run {logged.source_run_id}, not {mv.run_id}",
        )
    if download_uri.rstrip("/") != logged.artifact_location.rstrip("/"):
        raise _refuse(
            name,
            version,
            f"its files are at {download_uri}, not at its logged model's location "
            f"{logged.artifact_location}",
        )
    problem = check_gates(dict(run.data.tags))
    if problem is not None:
        raise _refuse(name, version, problem)
    recorded = run.data.tags.get(tracking.TAG_MODEL_DIGEST, "")
    if not recorded:
        raise _refuse(name, version, f"its run recorded no {tracking.TAG_MODEL_DIGEST}")
    if not allow_local_storage:
        check_cluster_readable(storage_uri if storage_uri is not None else download_uri)
    digest = _digest_of(download_uri, tracking_uri)
    if digest != recorded:
        raise _refuse(
            name,
            version,
            f"the files at {download_uri} have digest {digest}, not the {recorded} its run "
            "recorded at evaluation (changed after evaluation)",
        )
    return Verified(mv.run_id, download_uri, digest)
