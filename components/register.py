"""Register: a model version with lineage tags and the champion or challenger alias."""

from typing import NamedTuple

from kfp import dsl

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def register(
    mlflow_run_id: str,
    model_uri: str,
    model_name: str,
    decision: str,
    tracking_uri: str,
    experiment_name: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("alias", str)]):
    from mlstack.errors import exit_on_error
    from mlstack.settings import load_settings
    from mlstack.train.evaluation import Decision
    from mlstack.train.registry import register as register_version

    with exit_on_error():
        registration = register_version(
            mlflow_run_id,
            model_uri,
            model_name=model_name,
            decision=Decision.from_json(decision),
            tracking_uri=tracking_uri or load_settings().mlflow_tracking_uri,
            experiment_name=experiment_name,
        )
    return (registration.version, registration.alias)
