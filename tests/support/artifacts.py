"""Model directories for the loading tests: a normal one, as training writes it, and hostile ones
made from it (a pickle that runs a shell command, an artifact trusting ``os.system``, one byte
changed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from mlstack.data import generate
from mlstack.data import profile as profiles
from mlstack.schema import DECISION_THRESHOLD, TARGET
from mlstack.train.artifacts import SKOPS_TRUSTED_TYPES
from mlstack.train.training import HyperParams, build_model, features


def saved_model(path: Path, rows: int = 1500) -> Path:
    """A fitted pipeline saved the way training logs it (skops, the project's trusted types,
    its classifier as ONNX, the metadata the predictor reads) at ``path``."""
    import tempfile

    import mlflow

    from mlstack.train import onnx_export

    df = generate.generate(rows, 7)
    model = build_model(HyperParams(max_iter=40))
    model.fit(features(df), df[TARGET])
    with tempfile.TemporaryDirectory(prefix="mlstack-onnx-") as scratch:
        onnx_file = onnx_export.write(model, Path(scratch))
        mlflow.sklearn.save_model(
            model,
            str(path),
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            extra_files=[str(onnx_file)],
            metadata={
                **onnx_export.model_metadata(onnx_file),
                "reference_profile": profiles.to_dict(profiles.build(df)),
                "lineage": {"data_md5": "md5-test", "git_sha": "a" * 40},
                "decision_threshold": DECISION_THRESHOLD,
                "metrics": {"roc_auc": 0.9},
            },
        )
    return path


def _rewrite_mlmodel(model_dir: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = model_dir / "MLmodel"
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class RunsAtLoad:
    """Unpickling this runs ``command`` in a shell (what a crafted pickle does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.command,))


def pickle_artifact(good: Path, dst: Path, marker: Path) -> Path:
    """A copy of ``good`` whose MLmodel says pickle and whose model file, once unpickled, creates
    ``marker`` (a shell command run at load)."""
    import pickle

    shutil.copytree(good, dst)
    (dst / "model.skops").unlink()
    (dst / "model.pkl").write_bytes(pickle.dumps(RunsAtLoad(f"touch {marker}")))

    def edit(doc: dict) -> None:
        doc["flavors"]["sklearn"].update(serialization_format="pickle", pickled_model="model.pkl")
        doc["flavors"]["python_function"]["model_path"] = "model.pkl"

    _rewrite_mlmodel(dst, edit)
    return dst


def trusting_artifact(good: Path, dst: Path) -> Path:
    """A copy of ``good`` whose pipeline starts with ``FunctionTransformer(os.system)`` and whose
    MLmodel adds ``posix.system`` and ``os.system`` to the skops trusted types."""
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    shutil.copytree(good, dst)
    inner = skops.io.load(good / "model.skops", trusted=list(SKOPS_TRUSTED_TYPES))
    hostile = Pipeline([("run", FunctionTransformer(os.system)), ("model", inner)])
    skops.io.dump(hostile, dst / "model.skops")

    def edit(doc: dict) -> None:
        doc["flavors"]["sklearn"]["skops_trusted_types"] += ["posix.system", "os.system"]

    _rewrite_mlmodel(dst, edit)
    return dst


def tamper_threshold(model_dir: Path) -> None:
    """Change one byte of ``MLmodel``: the decision threshold 0.5 becomes 0.9."""
    path = model_dir / "MLmodel"
    text = path.read_text()
    assert text.count("decision_threshold: 0.5\n") == 1
    path.write_text(text.replace("decision_threshold: 0.5\n", "decision_threshold: 0.9\n"))
