"""A Katib Experiment as this project reads it: the manifest parsed and checked, its parameters as
optuna distributions, its algorithm as an optuna sampler, its trial command and env with
``${trialParameters.X}`` substituted, and metrics read from a trial's output with the StdOut
collector's regular expression.

The local runner (``mlstack.tune.local``) follows Katib's own semantics where this file names
them: each algorithm's settings are checked as the Katib suggestion service that runs it checks
them, and it runs as the optuna sampler that behaves as that service (``mlstack.tune.algorithms``,
one table); parameters (int,
double with or without step, categorical, discrete) become optuna distributions. A field the local
runner does not support is an error naming the field, never ignored.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlstack.errors import StackError
from mlstack.tune.algorithms import SettingError, check, check_early_stopping, sampler_arguments

# Katib's StdOut collector default (metricsCollectorSpec.source.filter.metricsFormat)
DEFAULT_METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"


class ExperimentError(StackError):
    pass


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # int | double | categorical | discrete
    min: float | None = None
    max: float | None = None
    step: float | None = None
    values: tuple[str, ...] = ()
    log: bool = False

    def bounds(self) -> tuple[float, float]:
        """(min, max) of an int or double parameter; ``ExperimentError`` without both."""
        if self.min is None or self.max is None:
            raise ExperimentError(f"parameter '{self.name}': no feasibleSpace min and max")
        return self.min, self.max

    def distribution(self) -> Any:
        """The optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "int":
            low, high = self.bounds()
            return IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        if self.type == "double":
            low, high = self.bounds()
            return FloatDistribution(low, high, log=self.log, step=self.step)
        return CategoricalDistribution(list(self.values))

    def grid(self) -> list[Any]:
        """Every value of the parameter for the grid algorithm; ``ExperimentError`` for a
        numeric parameter without ``feasibleSpace.step``."""
        if self.type in ("categorical", "discrete"):
            return list(self.values)
        if self.step is None:
            raise ExperimentError(f"parameter '{self.name}': grid needs feasibleSpace.step")
        low, high = self.bounds()
        count = int(round((high - low) / self.step)) + 1
        values = [low + i * self.step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]

    def format(self, value: Any) -> str:
        """``value`` as the string Katib assigns to a trial for this parameter."""
        if self.type == "int":
            return str(int(value))
        if self.type == "double":
            return repr(float(value))
        return str(value)


@dataclass(frozen=True)
class Experiment:
    name: str
    maximize: bool
    objective: str
    additional: tuple[str, ...]
    goal: float | None
    strategies: dict[str, str]
    algorithm: str
    algorithm_settings: dict[str, str]
    early_stopping: dict[str, str] | None
    parallel: int
    max_trials: int
    max_failed: int
    metrics_format: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    trial_parameters: dict[str, str]  # trialParameters name -> parameter (reference)
    container: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The objective metric's name, then the additional metrics'."""
        return (self.objective, *self.additional)


def _only(where: str, mapping: Any, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ExperimentError(f"{where}: expected a mapping")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ExperimentError(f"{where}.{unknown[0]}: not supported by the local runner")
    return dict(mapping)


def _settings(where: str, items: list[Any] | None) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items or []):
        _only(f"{where}[{i}]", item, ("name", "value"))
        out[str(item["name"])] = str(item["value"])
    return out


def _parameter(i: int, raw: dict[str, Any]) -> Parameter:
    where = f"spec.parameters[{i}]"
    _only(where, raw, ("name", "parameterType", "feasibleSpace"))
    kind = raw.get("parameterType")
    space = _only(
        f"{where}.feasibleSpace",
        raw.get("feasibleSpace", {}),
        ("min", "max", "step", "list", "distribution"),
    )
    distribution = space.get("distribution", "uniform")
    if distribution not in ("uniform", "logUniform"):
        raise ExperimentError(f"{where}.feasibleSpace.distribution: '{distribution}' not supported")
    log = distribution == "logUniform"
    name = str(raw.get("name", ""))
    if not name:
        raise ExperimentError(f"{where}.name: missing")
    if kind in ("int", "double"):
        try:
            low, high = float(space["min"]), float(space["max"])
            step = float(space["step"]) if "step" in space else None
        except (KeyError, ValueError) as exc:
            raise ExperimentError(
                f"{where}.feasibleSpace: needs numeric min and max ({exc})"
            ) from None
        if low > high:
            raise ExperimentError(f"{where}.feasibleSpace: min {low} > max {high}")
        return Parameter(name, kind, low, high, step, log=log)
    if kind in ("categorical", "discrete"):
        values = tuple(str(v) for v in space.get("list", []))
        if not values:
            raise ExperimentError(f"{where}.feasibleSpace.list: empty")
        return Parameter(name, kind, values=values)
    raise ExperimentError(
        f"{where}.parameterType: '{kind}' is not int, double, categorical or discrete"
    )


def parse(doc: dict[str, Any]) -> Experiment:
    """An Experiment manifest as the local runner understands it; unsupported fields are errors
    (``ExperimentError``, naming the field)."""
    if doc.get("apiVersion") != f"{GROUP}/{VERSION}" or doc.get("kind") != "Experiment":
        raise ExperimentError(f"not a {GROUP}/{VERSION} Experiment")
    spec = _only(
        "spec",
        doc.get("spec", {}),
        (
            "objective",
            "algorithm",
            "earlyStopping",
            "parallelTrialCount",
            "maxTrialCount",
            "maxFailedTrialCount",
            "metricsCollectorSpec",
            "parameters",
            "trialTemplate",
        ),
    )
    obj = _only(
        "spec.objective",
        spec.get("objective", {}),
        ("type", "goal", "objectiveMetricName", "additionalMetricNames", "metricStrategies"),
    )
    if obj.get("type") not in ("maximize", "minimize"):
        raise ExperimentError("spec.objective.type: must be maximize or minimize")
    if not obj.get("objectiveMetricName"):
        raise ExperimentError("spec.objective.objectiveMetricName: missing")
    maximize = obj["type"] == "maximize"
    strategies = {}
    for i, s in enumerate(obj.get("metricStrategies", []) or []):
        _only(f"spec.objective.metricStrategies[{i}]", s, ("name", "value"))
        if s["value"] not in ("min", "max", "latest"):
            raise ExperimentError(f"spec.objective.metricStrategies[{i}].value: min, max or latest")
        strategies[s["name"]] = s["value"]
    algo = _only(
        "spec.algorithm", spec.get("algorithm", {}), ("algorithmName", "algorithmSettings")
    )
    algorithm = algo.get("algorithmName")
    settings = _settings("spec.algorithm.algorithmSettings", algo.get("algorithmSettings"))
    try:  # as Katib's suggestion service for the algorithm validates them
        check(str(algorithm), settings)
    except SettingError as exc:
        raise ExperimentError(str(exc)) from None
    early = None
    if "earlyStopping" in spec:
        es = _only(
            "spec.earlyStopping", spec["earlyStopping"], ("algorithmName", "algorithmSettings")
        )
        if es.get("algorithmName") != "medianstop":
            raise ExperimentError("spec.earlyStopping.algorithmName: only medianstop is supported")
        early = {"min_trials_required": "3", "start_step": "4"}
        given = _settings("spec.earlyStopping.algorithmSettings", es.get("algorithmSettings"))
        try:  # as Katib's early-stopping service validates them
            check_early_stopping("medianstop", given)
        except SettingError as exc:
            raise ExperimentError(str(exc)) from None
        early.update(given)
    collector = _only(
        "spec.metricsCollectorSpec", spec.get("metricsCollectorSpec", {}), ("collector", "source")
    )
    kind = _only(
        "spec.metricsCollectorSpec.collector",
        collector.get("collector", {"kind": "StdOut"}),
        ("kind",),
    )
    if kind.get("kind", "StdOut") != "StdOut":
        raise ExperimentError(
            f"spec.metricsCollectorSpec.collector.kind: '{kind['kind']}' not supported (StdOut only)"
        )
    formats: tuple[str, ...] = (DEFAULT_METRICS_FORMAT,)
    if "source" in collector:
        source = _only("spec.metricsCollectorSpec.source", collector["source"], ("filter",))
        filt = _only(
            "spec.metricsCollectorSpec.source.filter", source.get("filter", {}), ("metricsFormat",)
        )
        formats = tuple(filt.get("metricsFormat") or formats)
    template = _only(
        "spec.trialTemplate",
        spec.get("trialTemplate", {}),
        (
            "primaryContainerName",
            "trialParameters",
            "trialSpec",
            "successCondition",
            "failureCondition",
            "retain",
        ),
    )
    trial_parameters = {}
    for i, tp in enumerate(template.get("trialParameters", [])):
        _only(f"spec.trialTemplate.trialParameters[{i}]", tp, ("name", "reference", "description"))
        trial_parameters[tp["name"]] = tp.get("reference", tp["name"])
    parameters = tuple(_parameter(i, p) for i, p in enumerate(spec.get("parameters", [])))
    known = {p.name for p in parameters}
    for tp_name, ref in trial_parameters.items():
        if ref not in known:
            raise ExperimentError(
                f"spec.trialTemplate.trialParameters '{tp_name}': no parameter '{ref}'"
            )
    containers = (
        template.get("trialSpec", {})
        .get("spec", {})
        .get("template", {})
        .get("spec", {})
        .get("containers", [])
    )
    primary = [c for c in containers if c.get("name") == template.get("primaryContainerName")]
    if not primary:
        raise ExperimentError("spec.trialTemplate: no container named by primaryContainerName")
    goal = obj.get("goal")
    experiment = Experiment(
        name=doc.get("metadata", {}).get("name", "experiment"),
        maximize=maximize,
        objective=obj["objectiveMetricName"],
        additional=tuple(obj.get("additionalMetricNames", []) or []),
        goal=float(goal) if goal is not None else None,
        strategies=strategies,
        algorithm=str(algorithm),
        algorithm_settings=settings,
        early_stopping=early,
        parallel=int(spec.get("parallelTrialCount", 3)),
        max_trials=int(spec.get("maxTrialCount", 10)),
        max_failed=int(spec.get("maxFailedTrialCount", 3)),
        metrics_format=formats,
        parameters=parameters,
        trial_parameters=trial_parameters,
        container=primary[0],
        raw=doc,
    )
    # every placeholder of the command and env must resolve: fail now, not in each trial
    trial_command(experiment, {p.name: "0" for p in parameters})
    trial_env(experiment, {})
    return experiment


def load(path: str | Path) -> Experiment:
    """The Experiment in the YAML file at ``path`` (``parse``); ``ExperimentError`` when it cannot
    be read or is not one the local runner supports."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"cannot read {path}: {exc}") from None
    return parse(doc)


def sampler(exp: Experiment):  # type: ignore[no-untyped-def]
    """The optuna sampler that runs the algorithm as Katib's suggestion service for it does
    (mlstack.tune.algorithms)."""
    import optuna

    kwargs = sampler_arguments(
        exp.algorithm, check(exp.algorithm, exp.algorithm_settings), exp.parallel
    )
    if exp.algorithm == "random":
        return optuna.samplers.RandomSampler(**kwargs)
    if exp.algorithm == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """GridSampler stops a study with ``study.stop()``, which only works inside
            ``optimize``; this runner asks and tells, and ends at the grid's size itself."""

            def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
                return None

        return AskTellGridSampler({p.name: p.grid() for p in exp.parameters}, **kwargs)
    if exp.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(**kwargs)
    return optuna.samplers.TPESampler(**kwargs)


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def substitute(value: Any, trial_values: dict[str, str]) -> Any:
    """Replace ``${trialParameters.X}`` everywhere in ``value`` (strings, lists, mappings);
    ``ExperimentError`` for another placeholder or an unknown trial parameter."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if not key.startswith("trialParameters."):
                raise ExperimentError(f"placeholder ${{{key}}}: not supported by the local runner")
            name = key.removeprefix("trialParameters.")
            if name not in trial_values:
                raise ExperimentError(f"placeholder ${{{key}}}: no such trial parameter")
            return trial_values[name]

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, trial_values) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, trial_values) for k, v in value.items()}
    return value


def parse_metrics(
    line: str, formats: Iterable[str], names: Iterable[str]
) -> list[tuple[str, float]]:
    """The (name, value) pairs one output line reports, as Katib's StdOut collector reads them:
    every match of each format, first group the name, second the value; other names, empty or
    unparseable values are skipped."""
    wanted = set(names)
    out = []
    for fmt in formats:
        for match in re.finditer(fmt, line):
            name, raw = match.group(1), match.group(2)
            if name not in wanted or not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isfinite(value):
                out.append((name, value))
    return out


def trial_command(exp: Experiment, assignments: dict[str, str]) -> list[str]:
    """The primary container's command and args with the trial's values substituted (``python``
    is this interpreter); ``ExperimentError`` when there is no command or a placeholder is
    unknown."""
    values = {tp: assignments[ref] for tp, ref in exp.trial_parameters.items()}
    container = substitute({k: exp.container.get(k, []) for k in ("command", "args")}, values)
    argv = [*container["command"], *container["args"]]
    if not argv:
        raise ExperimentError("the primary container has no command")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the container's interpreter is this environment's locally
    return argv


def trial_env(
    exp: Experiment, overrides: dict[str, str], assignments: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment, the container's ``env`` values (placeholders substituted;
    ``valueFrom`` items are cluster Secrets and ConfigMaps: locally this environment provides
    them), then the runner's own values."""
    values = {tp: (assignments or {}).get(ref, "0") for tp, ref in exp.trial_parameters.items()}
    env = dict(os.environ)
    for item in exp.container.get("env", []) or []:
        if "value" in item and item["value"] != "":
            env[item["name"]] = str(substitute(str(item["value"]), values))
    env.update(overrides)
    return env
