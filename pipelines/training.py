"""The training pipeline: ingest → validate → train → evaluate vs champion → register if gates pass.

Compiled to ``pipelines/training.yaml`` (``mlstack pipeline compile``); that IR is what the KFP UI,
``kfp run create``, ``mlstack run submit`` and the local runner all execute.
"""

from typing import NamedTuple

from kfp import dsl

from components.evaluate import evaluate
from components.ingest import ingest
from components.register import register
from components.train import train
from components.validate import validate
from mlstack.settings import DEFAULTS

_HP = {
    "learning_rate": 0.1,
    "max_iter": 200,
    "max_depth": 4,
    "l2_regularization": 0.0,
    "class_weight": "balanced",
}


class TrainingOutputs(NamedTuple):
    mlflow_run_id: str
    data_md5: str
    git_sha: str
    decision: str


@dsl.pipeline(
    name=DEFAULTS.pipeline_name,
    description="Train the churn model on a DVC data version; register it if the gates pass.",
)
def training_pipeline(
    repo: str,
    data_rev: str,
    data_path: str = DEFAULTS.data_path,
    tracking_uri: str = "",
    experiment_name: str = DEFAULTS.experiment_name,
    model_name: str = DEFAULTS.model_name,
    test_size: float = DEFAULTS.test_size,
    split_seed: int = DEFAULTS.split_seed,
    learning_rate: float = _HP["learning_rate"],
    max_iter: int = _HP["max_iter"],
    max_depth: int = _HP["max_depth"],
    l2_regularization: float = _HP["l2_regularization"],
    class_weight: str = _HP["class_weight"],
    min_roc_auc: float = DEFAULTS.gates.min_roc_auc,
    min_f1: float = DEFAULTS.gates.min_f1,
    max_regression: float = DEFAULTS.gates.max_regression,
) -> TrainingOutputs:
    """``repo`` is a git URL (or a local path when run locally); ``data_rev`` a commit SHA, so
    that a cached step is reused only for the very same data."""
    ingested = ingest(repo=repo, data_path=data_path, data_rev=data_rev)
    checked = validate(dataset=ingested.outputs["dataset"])
    trained = train(
        dataset=ingested.outputs["dataset"],
        data_md5=ingested.outputs["data_md5"],
        git_sha=ingested.outputs["git_sha"],
        data_path=data_path,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        test_size=test_size,
        split_seed=split_seed,
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_depth=max_depth,
        l2_regularization=l2_regularization,
        class_weight=class_weight,
    ).after(checked)
    evaluated = evaluate(
        dataset=ingested.outputs["dataset"],
        mlflow_run_id=trained.outputs["mlflow_run_id"],
        model_name=model_name,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        test_size=test_size,
        split_seed=split_seed,
        min_roc_auc=min_roc_auc,
        min_f1=min_f1,
        max_regression=max_regression,
    )
    with dsl.If(evaluated.outputs["Output"] == True, name="gates-passed"):  # noqa: E712 (KFP DSL)
        register(
            mlflow_run_id=trained.outputs["mlflow_run_id"],
            model_uri=trained.outputs["model_uri"],
            model_name=model_name,
            decision=evaluated.outputs["decision"],
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
        )
    return TrainingOutputs(
        trained.outputs["mlflow_run_id"],
        ingested.outputs["data_md5"],
        ingested.outputs["git_sha"],
        evaluated.outputs["decision"],
    )
