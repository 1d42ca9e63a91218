"""Train the churn model (an sklearn Pipeline with its preprocessing) and log it to MLflow.

The same ``train_and_log`` runs as the pipeline's train step and as a Katib trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlstack.data import profile
from mlstack.errors import StackError
from mlstack.schema import (
    CLASS_NAMES,
    CLASSES,
    DECISION_THRESHOLD,
    TARGET,
    categorical_features,
    numeric_features,
)
from mlstack.train import tracking
from mlstack.train.artifacts import SKOPS_TRUSTED_TYPES


@dataclass(frozen=True)
class HyperParams:
    learning_rate: float = 0.1
    max_iter: int = 200
    max_depth: int = 4
    l2_regularization: float = 0.0
    class_weight: str = "balanced"  # "balanced" or "none"

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> HyperParams:
        """Typed from Katib's string assignments; missing names keep their defaults.
        ``StackError`` for an unknown name (``ValueError`` for a value that does not parse)."""
        convert: dict[str, Callable[[str], object]] = {
            "float": float,
            "int": lambda v: int(float(v)),
            "str": str,
        }
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise StackError(f"unknown hyperparameter(s) {unknown}")
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in values:
                try:
                    typed[f.name] = convert[str(f.type)](values[f.name])
                except ValueError:
                    raise StackError(f"{f.name}: {values[f.name]!r} is not a {f.type}") from None
        return cls(**typed)

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate <= 1:
            raise StackError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if self.max_iter < 1 or self.max_depth < 1:
            raise StackError("max_iter and max_depth must be at least 1")
        if self.l2_regularization < 0:
            raise StackError("l2_regularization must be >= 0")
        if self.class_weight not in ("balanced", "none"):
            raise StackError(
                f"class_weight must be 'balanced' or 'none', got {self.class_weight!r}"
            )


@dataclass(frozen=True)
class TrainingLineage:
    data_md5: str = ""
    data_path: str = ""
    git_sha: str = ""
    kfp_run_id: str = ""
    kfp_run_name: str = ""
    # the feature store's: tracking.TAG_FEATURE_SOURCE_MD5, tracking.TAG_FEATURE_VIEWS
    feature_source_md5: str = ""
    feature_views: str = ""


def split(df: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one train/held-out split that train and evaluate share.

    A row goes to the held-out side by a (seed-salted) hash of its content, not by its position:
    a row held out in one data version is held out in every version that contains it, so a
    champion trained on an earlier version is never scored on rows it was trained on.
    """
    key = f"{seed:016d}"[-16:]
    hashed = pd.util.hash_pandas_object(df, index=False, hash_key=key).to_numpy()
    held = (hashed % 10_000) < int(round(test_size * 10_000))
    return df[~held], df[held]


def split_missing_classes(df: pd.DataFrame, test_size: float, seed: int) -> list[str]:
    """Which side of ``split`` lacks which class, one phrase each (empty when both sides have
    every class): a model trained without a class, or scored without one (roc_auc undefined),
    is no model to register."""
    out: list[str] = []
    for side, part in zip(("train", "held-out"), split(df, test_size, seed), strict=True):
        present = set(pd.unique(part[TARGET])) if TARGET in part else set()
        missing = [f"{c} ({CLASS_NAMES[c]})" for c in CLASSES if c not in present]
        if missing:
            out.append(
                f"the {side} split (test_size {test_size}, split_seed {seed}: {len(part)} of "
                f"{len(df)} rows) has no rows of class {', '.join(missing)}"
            )
    return out


def features(df: pd.DataFrame) -> pd.DataFrame:
    """Model input: the schema's features, numeric as float64 and categories as objects, NaN for
    missing in both (what the imputers recognise)."""
    out = df[numeric_features()].astype("float64")
    for name in categorical_features():
        out[name] = df[name].astype(object).where(df[name].notna(), np.nan)
    return out


def build_model(params: HyperParams) -> Pipeline:
    """The unfitted model: imputation and one-hot encoding, then gradient boosting with
    ``params``."""
    preprocess = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median", add_indicator=True), numeric_features()),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical_features(),
            ),
        ]
    )
    clf = HistGradientBoostingClassifier(
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_depth=params.max_depth,
        l2_regularization=params.l2_regularization,
        class_weight=None if params.class_weight == "none" else "balanced",
        early_stopping=False,
        random_state=0,
    )
    return Pipeline([("preprocess", preprocess), ("classifier", clf)])


def compute_metrics(model: Pipeline, df: pd.DataFrame) -> dict[str, float]:
    """Held-out metrics: overall, and precision/recall/f1/support per class."""
    y = df[TARGET].to_numpy()
    proba = model.predict_proba(features(df))[:, 1]
    pred = (proba >= DECISION_THRESHOLD).astype(int)
    out = {
        "roc_auc": float(roc_auc_score(y, proba)),
        "average_precision": float(average_precision_score(y, proba)),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
    }
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(CLASSES), zero_division=0
    )
    for i, cls in enumerate(CLASSES):
        name = CLASS_NAMES[cls]
        out[f"precision_{name}"] = float(prec[i])
        out[f"recall_{name}"] = float(rec[i])
        out[f"f1_{name}"] = float(f1[i])
        out[f"support_{name}"] = float(support[i])
    return out


def _pip_requirements() -> list[str]:
    # given explicitly: inferring them costs seconds per log_model
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "pandas", "numpy")]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]


def train_and_log(
    dataset_path: str | Path,
    params: HyperParams,
    *,
    lineage: TrainingLineage,
    tracking_uri: str,
    experiment_name: str,
    test_size: float,
    split_seed: int,
    parent_run_id: str | None = None,
    report: Callable[[int, dict[str, float]], None] | None = None,
    report_every: int = 25,
) -> TrainResult:
    """Fit the model on the train split, score the held-out split, log everything to MLflow.

    With ``report``, the boosting runs in chunks of ``report_every`` iterations (warm start: the
    same model as one fit) and ``report(iterations, held-out metrics)`` is called after each but
    the last, which is what a Katib trial prints for its metrics collector and early stopping.

    Returns the MLflow run id, the logged model's URI and the held-out metrics. Raises
    ``StackError`` when a split would lack a class, when the tracking server is unreachable, or
    when logging fails (the server died: within the bounds of ``tracking.HTTP_LIMITS``; the run
    is ended FAILED when MLflow still answers). pandas' errors on a bad dataset pass through.
    """
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    df = pd.read_csv(dataset_path)
    lacking = split_missing_classes(df, test_size, split_seed)
    if lacking:  # the validate step refuses such data first; a Katib trial gets here directly
        raise StackError(f"cannot train on {dataset_path}: {'; '.join(lacking)}")
    train, test = split(df, test_size, split_seed)
    model = build_model(params)
    x, y = features(train), train[TARGET].to_numpy()
    if report is None:
        model.fit(x, y)
    else:
        model.set_params(classifier__warm_start=True)
        for done in [*range(report_every, params.max_iter, report_every), params.max_iter]:
            model.set_params(classifier__max_iter=done)
            model.fit(x, y)
            if done < params.max_iter:  # the finished model's metrics are the caller's to report
                report(done, compute_metrics(model, test))
        model.set_params(classifier__warm_start=False)
    metrics = compute_metrics(model, test)

    experiment_id = tracking.connect(tracking_uri, experiment_name)
    example = features(train.head(5))
    tags = {key: value for key, value in asdict(lineage).items() if value}
    try:
        return _log_run(
            model, metrics, params, train, test, example,
            lineage=lineage, tags=tags, experiment_id=experiment_id, parent_run_id=parent_run_id,
            test_size=test_size, split_seed=split_seed,
        )  # fmt: skip
    except (MlflowException, RequestException) as exc:
        # the run, if it was created, was ended FAILED on the way out (when MLflow still answers)
        text = str(getattr(exc, "message", exc)).strip()
        raise StackError(
            f"logging the training run to MLflow at {tracking_uri} failed: "
            f"{text.splitlines()[0] if text else type(exc).__name__}"
        ) from None


def _log_run(
    model: Pipeline,
    metrics: dict[str, float],
    params: HyperParams,
    train: pd.DataFrame,
    test: pd.DataFrame,
    example: pd.DataFrame,
    *,
    lineage: TrainingLineage,
    tags: dict[str, str],
    experiment_id: str,
    parent_run_id: str | None,
    test_size: float,
    split_seed: int,
) -> TrainResult:
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    from mlstack.train import onnx_export

    with (
        tempfile.TemporaryDirectory(prefix="mlstack-onnx-") as scratch,
        mlflow.start_run(
            experiment_id=experiment_id,
            tags=tags,
            parent_run_id=parent_run_id,
            log_system_metrics=False,
        ) as run,
    ):
        # the boosting part as ONNX, checked against sklearn (StackError when it differs): the
        # predictor's engine, in the same model directory (extra_files/), under the same digest
        onnx_file = onnx_export.write(model, Path(scratch))
        mlflow.log_params(
            {
                **asdict(params),
                "test_size": test_size,
                "split_seed": split_seed,
                "train_rows": len(train),
                "test_rows": len(test),
            }
        )
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=_pip_requirements(),
            # skops (MLflow's default sklearn format); the loader trusts this list, not MLmodel's
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            extra_files=[str(onnx_file)],
            # travels with the model files, so a predictor needs nothing else
            metadata={
                # the graph's sha256: the predictor trusts its recorded probe only for this graph
                **onnx_export.model_metadata(onnx_file),
                "reference_profile": profile.to_dict(profile.build(train)),
                "lineage": {**asdict(lineage), "mlflow_run_id": run.info.run_id},
                "decision_threshold": DECISION_THRESHOLD,
                "metrics": metrics,
            },
        )
        mlflow.log_text(json.dumps(metrics, indent=2, sort_keys=True), "metrics.json")
    return TrainResult(run_id=run.info.run_id, model_uri=info.model_uri, metrics=metrics)


def held_out(dataset_path: str | Path, test_size: float, split_seed: int) -> pd.DataFrame:
    """The held-out side of ``split`` for the CSV at ``dataset_path``."""
    df = pd.read_csv(dataset_path)
    return split(df, test_size, split_seed)[1]


__all__ = [
    "HyperParams",
    "TrainingLineage",
    "TrainResult",
    "build_model",
    "compute_metrics",
    "features",
    "held_out",
    "split",
    "split_missing_classes",
    "train_and_log",
]
