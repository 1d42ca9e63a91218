"""Evaluate: the new model and the current champion on the same held-out split, and the gates."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output, OutputPath

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    mlflow_run_id: str,
    model_name: str,
    tracking_uri: str,
    experiment_name: str,
    test_size: float,
    split_seed: int,
    min_roc_auc: float,
    min_f1: float,
    max_regression: float,
    comparison: Output[Metrics],
    decision: OutputPath(str),
) -> bool:
    """Returns whether every gate passed (one unnamed output: what kfp.local's conditions read)."""
    from mlstack.errors import exit_on_error
    from mlstack.settings import Gates, load_settings
    from mlstack.train.evaluation import evaluate as run_evaluation

    with exit_on_error():
        result = run_evaluation(
            dataset.path,
            mlflow_run_id,
            model_name=model_name,
            tracking_uri=tracking_uri or load_settings().mlflow_tracking_uri,
            experiment_name=experiment_name,
            gates=Gates(min_roc_auc=min_roc_auc, min_f1=min_f1, max_regression=max_regression),
            test_size=test_size,
            split_seed=split_seed,
        )
    for path in (comparison.path, decision):
        with open(path, "w") as fh:
            fh.write(result.to_json())
    for key, value in (result.champion or {}).items():
        comparison.log_metric(f"champion_{key}", value)
    for gate in result.gates:
        comparison.log_metric(f"gate_{gate.name}", float(gate.passed))
    return result.passed
