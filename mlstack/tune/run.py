"""What the tune step and the CLI call: one tuning as an MLflow parent run whose trials nest under
it, run locally (``LocalTuner``) or as a Katib Experiment in the cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import yaml

from mlstack.errors import StackError
from mlstack.tune.cluster import for_cluster, run_in_cluster
from mlstack.tune.local import ExperimentResult, LocalTuner, Trial, trial_line
from mlstack.tune.spec import Experiment, parse


@contextlib.contextmanager
def parent_run(exp: Experiment, tracking_uri: str, experiment_name: str) -> Iterator[str]:
    """The MLflow run every trial of one tuning nests under (``MLSTACK_PARENT_RUN_ID``)."""
    import mlflow

    from mlstack.train import tracking

    experiment_id = tracking.connect(tracking_uri, experiment_name)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tuning-{exp.name}") as run:
        mlflow.set_tags({"katib_experiment": exp.name, "katib_algorithm": exp.algorithm})
        yield run.info.run_id


def trial_env_for(
    *, tracking_uri: str, experiment_name: str, parent: str, repo: str, rev: str
) -> dict[str, str]:
    """What every trial needs from the tune step: data version, split, tracking, parent run.
    Returns the environment variables by name; raises ``StackError`` on bad settings."""
    from mlstack.settings import load_settings

    settings = load_settings()
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLSTACK_EXPERIMENT_NAME": experiment_name,
        "MLSTACK_PARENT_RUN_ID": parent,
        "MLSTACK_DATA_REPO": repo,
        "MLSTACK_DATA_REV": rev,
        "MLSTACK_DATA_PATH": settings.data_path,
        "MLSTACK_TEST_SIZE": repr(settings.test_size),
        "MLSTACK_SPLIT_SEED": str(settings.split_seed),
    }
    if settings.dvc_remote:
        env["MLSTACK_DVC_REMOTE"] = settings.dvc_remote
    return env


def tune_local(
    exp: Experiment,
    *,
    tracking_uri: str,
    experiment_name: str,
    repo: str,
    data_rev: str,
    parallel: int | None = None,
    max_trials: int | None = None,
    progress: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
) -> ExperimentResult:
    """Run ``exp`` locally, every trial an MLflow run under one tuning parent run; ``on_trial``
    sees each trial as it ends.

    Returns the result (its ``parent_run_id`` set); raises ``ExperimentError`` when the failed
    trials reach ``maxFailedTrialCount``, ``StackError`` when MLflow is unreachable."""
    import mlflow

    with parent_run(exp, tracking_uri, experiment_name) as parent:
        env = trial_env_for(
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            parent=parent,
            repo=repo,
            rev=data_rev,
        )
        result = LocalTuner(
            exp,
            env=env,
            parallel=parallel,
            max_trials=max_trials,
            progress=progress,
            on_trial=on_trial,
        ).run()
        result.parent_run_id = parent
        counts = {
            s: sum(t.status == s for t in result.trials)
            for s in ("Succeeded", "Failed", "EarlyStopped")
        }
        mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()})
        best = result.best
        if best is not None:
            mlflow.log_params({f"best_{k}": v for k, v in best.assignments.items()})
            mlflow.log_metrics({f"best_{k}": v for k, v in best.observation.items()})
    return result


def tune(
    experiment_yaml: str,
    *,
    backend: str,
    namespace: str,
    tracking_uri: str,
    experiment_name: str,
    repo: str,
    data_rev: str,
    timeout_seconds: float,
) -> dict[str, str]:
    """The tune step: the Experiment in the cluster (``backend="cluster"``, through the Kubernetes
    API) or with the local runner (``"local"``); returns the best trial's parameters.

    Raises ``StackError`` for an unknown backend or an unreachable tracking server or cluster,
    ``ExperimentError`` (a ``StackError``) for a manifest the runner does not support or an
    experiment in which no trial succeeded."""
    import mlflow

    if backend not in ("cluster", "local"):
        raise StackError(f"backend must be 'cluster' or 'local', got {backend!r}")
    exp = parse(yaml.safe_load(experiment_yaml))
    if backend == "local":

        def report(trial: Trial) -> None:  # one line per trial, shown live by a local run
            print(f"progress: {trial_line(exp, trial)}", flush=True)

        return tune_local(
            exp,
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            repo=repo,
            data_rev=data_rev,
            progress=False,
            on_trial=report,
        ).best_parameters()
    with parent_run(exp, tracking_uri, experiment_name) as parent:
        env = trial_env_for(
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            parent=parent,
            repo=repo,
            rev=data_rev,
        )
        best = run_in_cluster(for_cluster(exp, namespace, env), timeout_seconds=timeout_seconds)
        mlflow.log_params({f"best_{k}": v for k, v in best.items()})
    return best
