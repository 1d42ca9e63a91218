"""Register a model version that passed the gates, with lineage tags and an alias.

All or nothing: if tagging or aliasing fails after the version was created, the version is
deleted again (which also drops any alias MLflow attached to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlstack.errors import StackError
from mlstack.train import tracking
from mlstack.train.evaluation import CHALLENGER, CHAMPION, Decision, champion_version


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    alias: str
    created: bool


def _alias_target(client, model_name: str, alias: str) -> str | None:  # type: ignore[no-untyped-def]
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def register(
    run_id: str,
    model_uri: str,
    *,
    model_name: str,
    decision: Decision,
    tracking_uri: str,
    experiment_name: str,
) -> Registration:
    """Create (or find, for this run) the model version; alias it ``champion`` when the registry
    has none, else ``challenger``.

    Returns the registration (version, alias, and whether it is new: a rerun of the same run
    finds its version again). Raises ``StackError`` for a model whose gates did not pass, or
    when the tracking server is unreachable."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not decision.passed:
        failed = ", ".join(g.name for g in decision.gates if not g.passed)
        raise StackError(f"refusing to register run {run_id}: gates failed ({failed})")
    tracking.connect(tracking_uri, experiment_name)
    client = MlflowClient()
    existing = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        mv = existing[0]
        aliases = list(mv.aliases)
        return Registration(model_name, str(mv.version), aliases[0] if aliases else "", False)

    run = client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k in tracking.LINEAGE_TAGS}
    tags["mlflow_run_id"] = run_id
    tags[tracking.TAG_GATES_PASSED] = "true"
    for key in ("roc_auc", "f1"):
        tags[key] = f"{decision.challenger[key]:.6f}"
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    alias = CHALLENGER if champion_version(model_name) is not None else CHAMPION
    previous = _alias_target(client, model_name, alias)
    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    try:
        client.set_tag(run_id, "registered_version", str(mv.version))
        # the alias moves last: until then the registry's aliases are as they were
        client.set_registered_model_alias(model_name, alias, mv.version)
    except BaseException:
        client.delete_model_version(model_name, mv.version)  # drops an alias that did move
        if previous is not None:
            client.set_registered_model_alias(model_name, alias, previous)
        raise
    return Registration(model_name, str(mv.version), alias, created=True)


def find_version(model_name: str, ref: str, tracking_uri: str) -> str:
    """The registry version behind ``ref`` (a version number or an alias).

    Returns the version number; raises ``StackError`` in one line when the tracking server is
    unreachable or no such version exists (for instance before the first pipeline run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    what = f"version {ref}" if ref.isdigit() else f"version with alias '{ref}'"
    missing = StackError(
        f"model '{model_name}' has no {what} in {tracking_uri}: "
        "register one first ('make run' or 'mlstack pipeline run')"
    )
    store = tracking_uri.removeprefix("sqlite:///")
    if store != tracking_uri and not Path(store).exists():
        raise missing  # a store never written: nothing registered (and nothing to create here)
    tracking.check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        if ref.isdigit():
            return str(client.get_model_version(model_name, ref).version)
        return str(client.get_model_version_by_alias(model_name, ref).version)
    except MlflowException:
        raise missing from None
