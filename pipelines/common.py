"""What the training and the tuning pipelines share: train → evaluate → register if gates pass."""

from typing import Any, NamedTuple

from kfp import dsl, kubernetes

from components.evaluate import evaluate
from components.ingest import ingest
from components.register import register
from components.train import train
from components.validate import validate
from mlstack.data.git_auth import TOKEN_ENV, USERNAME_ENV
from mlstack.settings import DEFAULTS
from mlstack.train.training import HyperParams

HP = HyperParams()  # the defaults the pipelines' hyperparameter inputs start from


class TrainingOutputs(NamedTuple):
    mlflow_run_id: str
    data_md5: str
    git_sha: str
    decision: str


# what the ingest step reads from the cluster's DVC Secret, as env of the same names
DVC_SECRET_KEYS = (
    "MLSTACK_DVC_REMOTE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
)

# what it reads from the cluster's git Secret: the token (and username) for a private repository
GIT_SECRET_KEYS = (TOKEN_ENV, USERNAME_ENV)


def use_data_secrets(task: dsl.PipelineTask) -> None:
    """The env a step reading a data version gets from the cluster's Secrets."""
    # optional (each key too): without the Secret (the local runner, a cluster reading a public
    # remote) the step reads the repository's default remote; real S3 needs no endpoint key
    kubernetes.use_secret_as_env(
        task,
        secret_name=DEFAULTS.dvc_secret,
        secret_key_to_env={key: key for key in DVC_SECRET_KEYS},
        optional=True,
    )
    # a private repository or fork: a read token for REPO_URL (mlstack.data.git_auth), optional
    # too: a public repository needs none
    kubernetes.use_secret_as_env(
        task,
        secret_name=DEFAULTS.git_secret,
        secret_key_to_env={key: key for key in GIT_SECRET_KEYS},
        optional=True,
    )


# what the ingest and materialize steps read from the cluster's Feast Secret
# (feature_repo/feature_store.cluster.yaml names both)
FEAST_SECRET_KEYS = ("MLSTACK_FEAST_REGISTRY", "MLSTACK_FEAST_REDIS")
# and from the steps' ConfigMap: the cluster config in the training image, and the state directory
# (an emptyDir at STATE_DIR: the image's working directory is not its user's to write)
STEPS_CONFIG_KEYS = ("MLSTACK_FEAST_CONFIG", "MLSTACK_STATE_DIR")
STATE_DIR = "/var/lib/mlstack"


def use_feature_store(task: dsl.PipelineTask) -> None:
    """On a cluster, a step using the feature store opens the cluster's (SQL registry, Redis
    online store) with the credentials of its Secret, and keeps its files (the Parquet source it
    writes) in an emptyDir. Platform config only: the local runners ignore it, and their steps
    keep the embedded default (the image's MLSTACK_FEAST_CONFIG, or the checkout's)."""
    kubernetes.use_secret_as_env(
        task,
        secret_name=DEFAULTS.feast_secret,
        secret_key_to_env={key: key for key in FEAST_SECRET_KEYS},
    )
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=DEFAULTS.steps_config_map,
        config_map_key_to_env={key: key for key in STEPS_CONFIG_KEYS},
    )
    kubernetes.empty_dir_mount(task, volume_name="mlstack-state", mount_path=STATE_DIR)


def ingest_and_validate(
    repo: Any, data_path: Any, data_rev: Any, *, test_size: Any, split_seed: Any
) -> dsl.PipelineTask:
    ingested = ingest(repo=repo, data_path=data_path, data_rev=data_rev)
    use_data_secrets(ingested)
    use_feature_store(ingested)  # the training set from the cluster's registry
    # the split the train step will make must hold every class on both sides
    validated = validate(
        dataset=ingested.outputs["dataset"], test_size=test_size, split_seed=split_seed
    )
    ingested.validated = validated  # type: ignore[attr-defined]
    return ingested


def train_evaluate_register(
    ingested: dsl.PipelineTask,
    hyperparameters: dict[str, Any],
    *,
    data_path: Any,
    tracking_uri: Any,
    experiment_name: Any,
    model_name: Any,
    test_size: Any,
    split_seed: Any,
    min_roc_auc: Any,
    min_f1: Any,
    max_regression: Any,
) -> TrainingOutputs:
    trained = train(
        dataset=ingested.outputs["dataset"],
        data_md5=ingested.outputs["data_md5"],
        git_sha=ingested.outputs["git_sha"],
        feature_source_md5=ingested.outputs["feature_source_md5"],
        feature_views=ingested.outputs["feature_views"],
        data_path=data_path,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        test_size=test_size,
        split_seed=split_seed,
        **hyperparameters,
    ).after(ingested.validated)  # type: ignore[attr-defined]
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
    # never from the cache: the decision depends on the registry's champion now, and a cached
    # result could name runs and versions a lost or reset store no longer has
    evaluated.set_caching_options(False)
    with dsl.If(evaluated.outputs["Output"] == True, name="gates-passed"):  # noqa: E712 (KFP DSL)
        register(
            mlflow_run_id=trained.outputs["mlflow_run_id"],
            model_uri=trained.outputs["model_uri"],
            model_name=model_name,
            decision=evaluated.outputs["decision"],
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
        ).set_caching_options(False)  # it re-checks the registry (a rerun finds its version)
    return TrainingOutputs(
        trained.outputs["mlflow_run_id"],
        ingested.outputs["data_md5"],
        ingested.outputs["git_sha"],
        evaluated.outputs["decision"],
    )
