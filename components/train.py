"""Train: fit the sklearn Pipeline and log params, metrics, model and lineage to MLflow."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    data_md5: str,
    git_sha: str,
    feature_source_md5: str,
    feature_views: str,
    data_path: str,
    kfp_run_id: str,
    kfp_run_name: str,
    tracking_uri: str,
    experiment_name: str,
    test_size: float,
    split_seed: int,
    learning_rate: float,
    max_iter: int,
    max_depth: int,
    l2_regularization: float,
    class_weight: str,
    metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("mlflow_run_id", str), ("model_uri", str)]):
    import json

    from mlstack.errors import exit_on_error
    from mlstack.settings import load_settings
    from mlstack.train.training import HyperParams, TrainingLineage, train_and_log

    with exit_on_error():
        result = train_and_log(
            dataset.path,
            HyperParams(learning_rate, max_iter, max_depth, l2_regularization, class_weight),
            lineage=TrainingLineage(
                data_md5,
                data_path,
                git_sha,
                kfp_run_id,
                kfp_run_name,
                feature_source_md5=feature_source_md5,
                feature_views=feature_views,
            ),
            tracking_uri=tracking_uri or load_settings().mlflow_tracking_uri,
            experiment_name=experiment_name,
            test_size=test_size,
            split_seed=split_seed,
        )
    with open(metrics.path, "w") as fh:
        json.dump(result.metrics, fh)
    for key, value in result.metrics.items():
        metrics.log_metric(key, value)
    metrics.metadata["mlflow_run_id"] = result.run_id
    return (result.run_id, result.model_uri)
