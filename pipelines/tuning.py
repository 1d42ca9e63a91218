"""The tuning pipeline: Katib tune → train with the best parameters → evaluate → register.

Compiled to ``pipelines/tuning.yaml``. The Experiment (``katib/experiment.yaml``) is compiled in, as
JSON, as the ``experiment_yaml`` default; ``tune_backend`` is ``cluster`` (Katib through the Kubernetes API)
or ``local`` (the local optuna runner, what ``mlstack pipeline run --tuning`` passes).
"""

import json

import yaml
from kfp import dsl

from components.tune import tune
from mlstack.settings import DEFAULTS
from pipelines.common import TrainingOutputs, ingest_and_validate, train_evaluate_register


def experiment_json() -> str:
    """katib/experiment.yaml as one line of JSON (valid YAML too): KFP writes parameter defaults
    into the IR's header comment, where a multi-line default would break the YAML."""
    doc = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dsl.pipeline(
    name=f"{DEFAULTS.pipeline_name}-tuned",
    description="Tune with Katib, train with the best parameters, register if the gates pass.",
)
def tuning_pipeline(
    repo: str,
    data_rev: str,
    data_path: str = DEFAULTS.data_path,
    tracking_uri: str = "",
    experiment_name: str = DEFAULTS.experiment_name,
    model_name: str = DEFAULTS.model_name,
    test_size: float = DEFAULTS.test_size,
    split_seed: int = DEFAULTS.split_seed,
    experiment_yaml: str = experiment_json(),
    tune_backend: str = "cluster",
    tune_namespace: str = "",
    tune_timeout_seconds: int = 7200,
    min_roc_auc: float = DEFAULTS.gates.min_roc_auc,
    min_f1: float = DEFAULTS.gates.min_f1,
    max_regression: float = DEFAULTS.gates.max_regression,
) -> TrainingOutputs:
    ingested = ingest_and_validate(
        repo, data_path, data_rev, test_size=test_size, split_seed=split_seed
    )
    tuned = tune(
        experiment_yaml=experiment_yaml,
        backend=tune_backend,
        namespace=tune_namespace,
        repo=repo,
        data_rev=data_rev,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        data_path=data_path,
        test_size=test_size,
        split_seed=split_seed,
        timeout_seconds=tune_timeout_seconds,
    ).after(ingested.validated)  # type: ignore[attr-defined]
    return train_evaluate_register(
        ingested,
        {
            name: tuned.outputs[name]
            for name in (
                "learning_rate",
                "max_iter",
                "max_depth",
                "l2_regularization",
                "class_weight",
            )
        },
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
