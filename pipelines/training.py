"""The training pipeline: ingest → validate → train → evaluate vs champion → register if gates pass.

Compiled to ``pipelines/training.yaml`` (``mlstack pipeline compile``); that IR is what the KFP UI,
``kfp run create`` and the local runner (``mlstack pipeline run``) all execute.
"""

from kfp import dsl

from mlstack.settings import DEFAULTS
from pipelines.common import HP, TrainingOutputs, ingest_and_validate, train_evaluate_register


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
    learning_rate: float = HP.learning_rate,
    max_iter: int = HP.max_iter,
    max_depth: int = HP.max_depth,
    l2_regularization: float = HP.l2_regularization,
    class_weight: str = HP.class_weight,
    min_roc_auc: float = DEFAULTS.gates.min_roc_auc,
    min_f1: float = DEFAULTS.gates.min_f1,
    max_regression: float = DEFAULTS.gates.max_regression,
) -> TrainingOutputs:
    """``repo`` is a git URL (or a local path when run locally); ``data_rev`` a commit SHA, so
    that a cached step is reused only for the very same data."""
    ingested = ingest_and_validate(
        repo, data_path, data_rev, test_size=test_size, split_seed=split_seed
    )
    return train_evaluate_register(
        ingested,
        {
            "learning_rate": learning_rate,
            "max_iter": max_iter,
            "max_depth": max_depth,
            "l2_regularization": l2_regularization,
            "class_weight": class_weight,
        },  # every field of HyperParams (test_pipeline_ir checks)
        data_path=data_path,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        model_name=model_name,
        test_size=test_size,
        split_seed=split_seed,
        min_roc_auc=min_roc_auc,
        min_f1=min_f1,
        max_regression=max_regression,
    )
