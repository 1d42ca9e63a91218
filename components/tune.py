"""Tune: the Katib Experiment (in the cluster, or with the local runner), best parameters out."""

from typing import NamedTuple

from kfp import dsl

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def tune(
    experiment_yaml: str,
    backend: str,
    namespace: str,
    repo: str,
    data_rev: str,
    tracking_uri: str,
    experiment_name: str,
    data_path: str,
    test_size: float,
    split_seed: int,
    timeout_seconds: int,
) -> NamedTuple(
    "TuneOutputs",
    [
        ("learning_rate", float),
        ("max_iter", int),
        ("max_depth", int),
        ("l2_regularization", float),
        ("class_weight", str),
    ],
):
    import os

    from mlstack.errors import exit_on_error
    from mlstack.settings import load_settings
    from mlstack.train.training import HyperParams
    from mlstack.tune.run import tune as run_tuning

    # the trials split the data as the pipeline's train and evaluate steps do
    os.environ.update(
        MLSTACK_DATA_PATH=data_path,
        MLSTACK_TEST_SIZE=repr(test_size),
        MLSTACK_SPLIT_SEED=str(split_seed),
    )
    with exit_on_error():
        best = run_tuning(
            experiment_yaml,
            backend=backend,
            namespace=namespace,
            tracking_uri=tracking_uri or load_settings().mlflow_tracking_uri,
            experiment_name=experiment_name,
            repo=repo,
            data_rev=data_rev,
            timeout_seconds=timeout_seconds,
        )
        params = HyperParams.from_strings(best)
    return (
        params.learning_rate,
        params.max_iter,
        params.max_depth,
        params.l2_regularization,
        params.class_weight,
    )
