"""A logged model's files: their digest (what evaluate records and promote and the predictor check),
and the project's one loader for them (``load_model``: what evaluate and the predictor use).

The digest is ``sha256:`` over every regular file under the model directory, in sorted relative
POSIX path order, each as its path, a NUL byte and the sha256 of its content: any byte changed,
any file added, removed or renamed changes it. A symbolic link is refused (the storage
initializer and MLflow both download regular files; a link could point anywhere).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlstack.errors import StackError
from mlstack.train.onnx_export import ONNX_PATH, SHA256_METADATA

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

DIGEST_PREFIX = "sha256:"


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def directory_digest(path: Path, *, exclude: frozenset[str] = frozenset()) -> str:
    """The digest of the model directory ``path`` (``exclude``: top-level file names left out).

    Returns ``sha256:<64 hex>``; raises ``StackError`` when ``path`` is not a directory or holds a
    symbolic link."""
    if not path.is_dir():
        raise StackError(f"model directory {path} does not exist")
    h = hashlib.sha256()
    for item in sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix()):
        rel = item.relative_to(path).as_posix()
        if item.is_symlink():
            raise StackError(f"model directory {path} holds a symbolic link: {rel}")
        if not item.is_file() or rel in exclude:
            continue
        h.update(rel.encode() + b"\0" + _file_sha256(item))
    return DIGEST_PREFIX + h.hexdigest()


# The one format this project writes: mlflow.sklearn.log_model's default, skops (a zip of a JSON
# schema; it constructs only types on an allow-list). MLflow names the file ``model.skops``
# (mlflow/sklearn/__init__.py, _SKOPS_MODEL_DATA_SUBPATH) and describes it in ``MLmodel``.
MLMODEL_FILE = "MLmodel"
SKOPS_FORMAT = "skops"
SKOPS_FILE = "model.skops"
SKLEARN_LOADER = "mlflow.sklearn"
# A file an MLflow client writes into a directory it downloads from a ``models:/`` URI
# (mlflow/store/artifact/models_artifact_repo.py, REGISTERED_MODEL_META_FILE_NAME): not part of
# the logged model, so the digest of a registry download equals that of the run's artifacts and
# of what KServe's storage initializer copies from the bucket.
CLIENT_ADDED_FILES = frozenset({"registered_model_meta"})

# The types skops may construct beyond its own safe defaults: the ones this model adds. The
# training step passes this list to log_model and the loader passes it to skops; a list an
# artifact carries in its MLmodel is never used.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class LoadedModel:
    """A model the project's loader accepted: the pipeline, its digest and what MLmodel's
    ``metadata`` says (written by training: drift reference, lineage, threshold, metrics).

    ``pipeline`` is parsed from ``skops`` (the bytes of ``model.skops``, read at load) by skops
    with the project's trusted types on first use: ``load_model`` does it at once unless asked
    to be ``lazy`` (the predictor, whose ONNX engine serves without scikit-learn)."""

    model_dir: Path
    digest: str
    skops: bytes = field(repr=False)
    # the classifier as ONNX (training's extra_files/classifier.onnx); None for a model logged
    # without it, which the predictor serves through sklearn
    onnx: bytes | None = None
    # the graph's sha256 as MLmodel's metadata records it (training's), None when it names none
    onnx_sha256: str | None = None
    reference_profile: dict[str, Any] | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    decision_threshold: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def pipeline(self) -> Pipeline:
        """The scikit-learn Pipeline (``StackError`` for untrusted types or an unreadable file)."""
        return _load_skops(self.model_dir, self.skops)


def model_digest(model_dir: Path) -> str:
    """The digest of a logged model's directory: ``directory_digest`` without the files an MLflow
    client adds on download (``CLIENT_ADDED_FILES``). Raises ``StackError`` as that does."""
    return directory_digest(model_dir, exclude=CLIENT_ADDED_FILES)


def _refuse(model_dir: Path, why: str) -> StackError:
    return StackError(f"refusing to load the model in {model_dir}: {why}")


def _mapping(value: object, what: str, model_dir: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(model_dir, f"{what} is not a mapping")
    return value


def _check_flavors(model_dir: Path, mlmodel: dict[str, Any]) -> None:
    """Only the sklearn flavor in skops format (and the pyfunc entry MLflow adds for it)."""
    flavors = _mapping(mlmodel.get("flavors"), "MLmodel 'flavors'", model_dir)
    other = sorted(set(flavors) - {"sklearn", "python_function"})
    if other:
        raise _refuse(model_dir, f"flavor(s) {other} (only sklearn models are served)")
    sklearn = _mapping(flavors.get("sklearn"), "the sklearn flavor", model_dir)
    if not sklearn:
        raise _refuse(model_dir, "MLmodel has no sklearn flavor")
    fmt = sklearn.get("serialization_format")
    if fmt != SKOPS_FORMAT:
        raise _refuse(
            model_dir,
            f"serialization format {fmt!r}: only {SKOPS_FORMAT!r} is loaded, never pickle",
        )
    if sklearn.get("pickled_model") != SKOPS_FILE:
        raise _refuse(model_dir, f"model file {sklearn.get('pickled_model')!r}, not {SKOPS_FILE}")
    pyfunc = _mapping(flavors.get("python_function"), "the python_function flavor", model_dir)
    if pyfunc and (
        pyfunc.get("loader_module") != SKLEARN_LOADER or pyfunc.get("model_path") != SKOPS_FILE
    ):
        raise _refuse(
            model_dir,
            f"python_function loader {pyfunc.get('loader_module')!r} on "
            f"{pyfunc.get('model_path')!r} (only {SKLEARN_LOADER} on {SKOPS_FILE})",
        )
    if sklearn.get("code") or pyfunc.get("code"):
        raise _refuse(model_dir, "it ships code paths (code is never loaded from an artifact)")
    # the artifact's own list is never used; one that asks for more than the project trusts is
    # refused at once, on every path (the ONNX engine serves without ever parsing model.skops)
    asked = sklearn.get("skops_trusted_types") or []
    if not isinstance(asked, list):
        raise _refuse(model_dir, "skops_trusted_types is not a list")
    beyond = sorted({str(t) for t in asked} - set(SKOPS_TRUSTED_TYPES))
    if beyond:
        raise _refuse(
            model_dir, f"MLmodel asks skops to trust untrusted types: {beyond} (never loaded)"
        )
    extra = sklearn.get("extra_files")
    if extra is not None and extra != [{"path": ONNX_PATH}]:
        raise _refuse(model_dir, f"extra files {extra!r} (only [{{'path': {ONNX_PATH!r}}}])")


def _onnx_file(model_dir: Path) -> bytes | None:
    """The classifier's ONNX bytes from the fixed ``ONNX_PATH`` (never a path the artifact
    names); None when the model has none."""
    path = model_dir / ONNX_PATH
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise _refuse(model_dir, f"{ONNX_PATH} is not a regular file")
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise _refuse(model_dir, f"{ONNX_PATH} is outside the model directory")
    return path.read_bytes()


def _model_file(model_dir: Path) -> Path:
    path = model_dir / SKOPS_FILE
    if path.is_symlink() or not path.is_file():
        raise _refuse(model_dir, f"{SKOPS_FILE} is missing or not a regular file")
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise _refuse(model_dir, f"{SKOPS_FILE} is outside the model directory")
    return path


def _metadata(
    model_dir: Path, mlmodel: dict[str, Any], skops: bytes, digest: str, onnx: bytes | None
) -> LoadedModel:
    meta = _mapping(mlmodel.get("metadata"), "MLmodel 'metadata'", model_dir)
    try:
        profile = meta.get("reference_profile")
        threshold = meta.get("decision_threshold")
        onnx_sha256 = meta.get(SHA256_METADATA)
        return LoadedModel(
            model_dir=model_dir,
            digest=digest,
            skops=skops,
            onnx=onnx,
            onnx_sha256=None if onnx_sha256 is None else str(onnx_sha256),
            reference_profile=_mapping(profile, "reference_profile", model_dir) or None,
            lineage={
                str(k): "" if v is None else str(v)
                for k, v in _mapping(meta.get("lineage"), "lineage", model_dir).items()
            },
            decision_threshold=None if threshold is None else float(threshold),
            metrics={
                str(k): float(v)
                for k, v in _mapping(meta.get("metrics"), "metrics", model_dir).items()
            },
        )
    except (TypeError, ValueError) as exc:
        raise _refuse(model_dir, f"unreadable MLmodel metadata: {exc}") from None


def load_model(model_dir: Path, expected_digest: str | None, *, lazy: bool = False) -> LoadedModel:
    """Load the sklearn pipeline in ``model_dir`` the one way this project allows.

    The directory's digest (``model_digest``) is checked first when ``expected_digest`` is given;
    then ``MLmodel`` is read as plain YAML and must describe the sklearn flavor in skops format
    (``model.skops``, no code paths, no other flavor or loader); the file is loaded by skops with
    ``SKOPS_TRUSTED_TYPES`` (never the list in the artifact) and must hold a ``Pipeline``; the
    classifier's ONNX graph, when there is one, is read as bytes from ``ONNX_PATH`` (the only
    extra file allowed; the predictor runs it with onnxruntime's standard operators and checks
    it against the pipeline). Nothing in the directory is executed or imported. With ``lazy``
    the skops file is read but parsed only when ``pipeline`` is first used (scikit-learn is not
    imported until then).

    Returns the pipeline with its digest and metadata. Raises ``StackError`` (one line) for a
    missing directory, a digest other than the expected one, a symbolic link, another format or
    flavor, an untrusted type, or a file skops cannot read.
    """
    import yaml

    if expected_digest is not None and not _DIGEST.match(expected_digest):
        raise StackError(f"expected model digest {expected_digest!r} is not sha256:<64 hex digits>")
    digest = model_digest(model_dir)
    if expected_digest is not None and digest != expected_digest:
        raise StackError(
            f"model in {model_dir} has digest {digest}, expected {expected_digest}: its files "
            "changed since evaluation; refusing to load it"
        )
    mlmodel_path = model_dir / MLMODEL_FILE
    if mlmodel_path.is_symlink() or not mlmodel_path.is_file():
        raise _refuse(model_dir, f"no {MLMODEL_FILE} file")
    try:
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _refuse(model_dir, f"{MLMODEL_FILE} is not YAML: {exc}".splitlines()[0]) from None
    mlmodel = _mapping(mlmodel, MLMODEL_FILE, model_dir)
    _check_flavors(model_dir, mlmodel)
    skops = _model_file(model_dir).read_bytes()
    loaded = _metadata(model_dir, mlmodel, skops, digest, _onnx_file(model_dir))
    if not lazy:
        loaded.pipeline  # noqa: B018 (parsed now: a file skops refuses is refused here)
    return loaded


def _load_skops(model_dir: Path, data: bytes) -> Pipeline:
    import skops.io
    from sklearn.pipeline import Pipeline
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        obj = skops.io.loads(data, trusted=list(SKOPS_TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise _refuse(model_dir, f"{SKOPS_FILE} holds untrusted types: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (any other failure of a foreign file: one line)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise _refuse(model_dir, f"{SKOPS_FILE} is not a readable skops file ({reason})") from None
    if not isinstance(obj, Pipeline):
        raise _refuse(model_dir, f"{SKOPS_FILE} holds a {type(obj).__name__}, not a Pipeline")
    return obj


def load_logged_model(artifact_uri: str, expected_digest: str | None) -> LoadedModel:
    """Download a logged model (``runs:/<id>/model``, ``models:/<name>/<version>``, ...) to a
    temporary directory and load it with ``load_model``; the directory is removed afterwards.

    Returns the loaded model (its ``digest`` is that of the downloaded files). Raises
    ``StackError`` when MLflow cannot download it, or as ``load_model`` does."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="mlstack-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
        except MlflowException as exc:
            raise StackError(f"cannot download the model {artifact_uri}: {exc.message}") from None
        return load_model(Path(local), expected_digest)
