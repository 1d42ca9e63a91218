"""Evaluate a trained model against the current champion and decide the quality gates."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlstack.errors import StackError
from mlstack.settings import Gates, check_gate_floors, gate_thresholds
from mlstack.train import artifacts, tracking
from mlstack.train.training import compute_metrics, held_out

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    gates: list[GateResult]
    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None

    def to_json(self) -> str:
        """The decision as JSON (what the evaluate step writes for the register step)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """The decision ``to_json`` wrote; ``KeyError``/``TypeError`` on another document."""
        raw = json.loads(text)
        raw["gates"] = [GateResult(**g) for g in raw["gates"]]
        return cls(**raw)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    gates: Gates,
    *,
    champion_version: str | None = None,
) -> Decision:
    """Absolute thresholds, then: not worse than the champion by more than ``max_regression``.

    A tie with the champion passes; with no champion only the absolute gates apply. Returns the
    decision with every gate's result; raises nothing (a missing metric is a ``KeyError``).
    """
    results = [
        GateResult(
            "min_roc_auc",
            challenger["roc_auc"] >= gates.min_roc_auc,
            challenger["roc_auc"],
            gates.min_roc_auc,
            f"roc_auc {challenger['roc_auc']:.4f} vs minimum {gates.min_roc_auc}",
        ),
        GateResult(
            "min_f1",
            challenger["f1"] >= gates.min_f1,
            challenger["f1"],
            gates.min_f1,
            f"f1 {challenger['f1']:.4f} vs minimum {gates.min_f1}",
        ),
    ]
    metric = gates.primary_metric
    if champion is None:
        results.append(GateResult("vs_champion", True, challenger[metric], 0.0, "no champion yet"))
    else:
        floor = champion[metric] - gates.max_regression
        results.append(
            GateResult(
                "vs_champion",
                challenger[metric] >= floor,
                challenger[metric],
                floor,
                f"{metric} {challenger[metric]:.4f} vs champion v{champion_version} "
                f"{champion[metric]:.4f} - margin {gates.max_regression}",
            )
        )
    return Decision(
        passed=all(r.passed for r in results),
        gates=results,
        challenger=challenger,
        champion=champion,
        champion_version=champion_version,
    )


def champion_version(model_name: str) -> str | None:
    """The version behind the ``champion`` alias, or None when there is none (or no model)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _run_model(run_id: str) -> artifacts.LoadedModel:
    """The run's model through the project's loader; its digest recorded on the run
    (``model_digest``: what registration copies and promote and the predictor check). A run that
    already has one (a retried step) must still hold the same files."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        recorded = client.get_run(run_id).data.tags.get(tracking.TAG_MODEL_DIGEST) or None
    except MlflowException as exc:
        raise StackError(f"cannot load the model of run {run_id}: {exc.message}") from None
    loaded = artifacts.load_logged_model(f"runs:/{run_id}/model", recorded)
    client.set_tag(run_id, tracking.TAG_MODEL_DIGEST, loaded.digest)
    return loaded


def _version_model(model_name: str, version: str) -> artifacts.LoadedModel:
    """A registry version through the project's loader, checked against the digest its version
    carries (a version registered before digests were recorded has none: format checks only)."""
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version(model_name, version)
    expected = (mv.tags or {}).get(tracking.TAG_MODEL_DIGEST) or None
    return artifacts.load_logged_model(f"models:/{model_name}/{version}", expected)


def evaluate(
    dataset_path: str | Path,
    run_id: str,
    *,
    model_name: str,
    tracking_uri: str,
    experiment_name: str,
    gates: Gates,
    test_size: float,
    split_seed: int,
) -> Decision:
    """Score the run's model and the current champion on the same held-out split; decide gates.

    The comparison is logged to the run (``champion_*`` metrics, ``gate_threshold.*``,
    ``gates_passed`` and ``gate.*`` tags). Returns the decision (``decide``); raises
    ``StackError`` when ``gates`` are looser than the floors (``GATE_FLOORS``), the tracking
    server is unreachable or the run has no loadable model.
    """
    import mlflow

    check_gate_floors(gates)  # before anything is read or logged: a run may not loosen the gates
    tracking.connect(tracking_uri, experiment_name)
    test = held_out(dataset_path, test_size, split_seed)
    challenger = compute_metrics(_run_model(run_id).pipeline, test)
    version = champion_version(model_name)
    champion = None
    if version is not None:
        champion = compute_metrics(_version_model(model_name, version).pipeline, test)
    decision = decide(challenger, champion, gates, champion_version=version)
    client = mlflow.MlflowClient()
    if champion is not None:
        for key, value in champion.items():
            client.log_metric(run_id, f"champion_{key}", value)
    for name, threshold in gate_thresholds(gates).items():
        client.set_tag(run_id, f"{tracking.TAG_THRESHOLD_PREFIX}{name}", repr(threshold))
    client.set_tag(run_id, tracking.TAG_GATES_PASSED, str(decision.passed).lower())
    for gate in decision.gates:
        client.set_tag(run_id, f"gate.{gate.name}", "pass" if gate.passed else "fail")
    return decision
