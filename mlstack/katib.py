"""Katib Experiments: read one, run it locally with optuna, or create it in a cluster.

The local runner follows Katib's own semantics where this file names them: algorithms map to
optuna samplers as Katib's optuna suggestion service does; parameters (int, double with or
without step, categorical, discrete) become optuna distributions; the trial command is the
primary container's, with ``${trialParameters.X}`` substituted; metrics are read from the
trial's stdout with the StdOut collector's regular expression; ``parallelTrialCount`` trials run
as parallel processes; ``maxTrialCount``, ``maxFailedTrialCount``, the objective ``goal`` and
median-stop early stopping end trials or the experiment. A field it does not support is an
error naming the field, never ignored.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlstack.errors import StackError

# Katib's StdOut collector default (metricsCollectorSpec.source.filter.metricsFormat)
DEFAULT_METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"

# algorithm name -> (optuna sampler, Katib setting name -> (sampler argument, type))
_TPE_SETTINGS = {
    "n_startup_trials": ("n_startup_trials", int),
    "n_ei_candidates": ("n_ei_candidates", int),
    "random_state": ("seed", int),
}
_ALGORITHMS: dict[str, dict[str, tuple[str, type]]] = {
    "random": {"random_state": ("seed", int)},
    "grid": {"random_state": ("seed", int)},
    "tpe": _TPE_SETTINGS,
    "multivariate-tpe": _TPE_SETTINGS,
    "cmaes": {
        "random_state": ("seed", int),
        "sigma": ("sigma0", float),
        "restart_strategy": ("restart_strategy", str),
    },
    # Katib runs scikit-optimize's Gaussian process here; optuna's GPSampler needs torch, which
    # the training image does not carry, so the closest sampler at hand is TPE (also model-based).
    "bayesianoptimization": _TPE_SETTINGS,
}
BAYES_NOTE = (
    "note: bayesianoptimization runs as optuna's TPE sampler locally "
    "(Katib uses a Gaussian process; optuna's GPSampler needs torch)"
)


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

    def distribution(self):  # type: ignore[no-untyped-def]
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "int":
            return IntDistribution(
                int(self.min), int(self.max), log=self.log, step=int(self.step or 1)
            )
        if self.type == "double":
            return FloatDistribution(self.min, self.max, log=self.log, step=self.step)
        return CategoricalDistribution(list(self.values))

    def grid(self) -> list[Any]:
        if self.type in ("categorical", "discrete"):
            return list(self.values)
        if self.step is None:
            raise ExperimentError(f"parameter '{self.name}': grid needs feasibleSpace.step")
        count = int(round((self.max - self.min) / self.step)) + 1
        values = [self.min + i * self.step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]

    def format(self, value: Any) -> str:
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
        return (self.objective, *self.additional)


def _only(where: str, mapping: Any, allowed: Iterable[str]) -> dict:
    if not isinstance(mapping, dict):
        raise ExperimentError(f"{where}: expected a mapping")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ExperimentError(f"{where}.{unknown[0]}: not supported by the local runner")
    return mapping


def _settings(where: str, items: list | None) -> dict[str, str]:
    out = {}
    for i, item in enumerate(items or []):
        _only(f"{where}[{i}]", item, ("name", "value"))
        out[str(item["name"])] = str(item["value"])
    return out


def _parameter(i: int, raw: dict) -> Parameter:
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
    """An Experiment manifest as the local runner understands it; unsupported fields are errors."""
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
    if algorithm not in _ALGORITHMS:
        raise ExperimentError(
            f"spec.algorithm.algorithmName: '{algorithm}' not supported locally "
            f"(supported: {', '.join(sorted(_ALGORITHMS))})"
        )
    settings = _settings("spec.algorithm.algorithmSettings", algo.get("algorithmSettings"))
    for name in settings:
        if name not in _ALGORITHMS[algorithm]:
            raise ExperimentError(
                f"spec.algorithm.algorithmSettings: '{name}' not supported for {algorithm}"
            )
    early = None
    if "earlyStopping" in spec:
        es = _only(
            "spec.earlyStopping", spec["earlyStopping"], ("algorithmName", "algorithmSettings")
        )
        if es.get("algorithmName") != "medianstop":
            raise ExperimentError("spec.earlyStopping.algorithmName: only medianstop is supported")
        early = {"min_trials_required": "3", "start_step": "4"}
        given = _settings("spec.earlyStopping.algorithmSettings", es.get("algorithmSettings"))
        for name in given:
            if name not in early:
                raise ExperimentError(
                    f"spec.earlyStopping.algorithmSettings: '{name}' not supported"
                )
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
        algorithm=algorithm,
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
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"cannot read {path}: {exc}") from None
    return parse(doc)


def sampler(exp: Experiment):  # type: ignore[no-untyped-def]
    """The optuna sampler Katib's optuna service would use for this algorithm."""
    import optuna

    kwargs: dict[str, Any] = {}
    for name, raw in exp.algorithm_settings.items():
        arg, kind = _ALGORITHMS[exp.algorithm][name]
        try:
            kwargs[arg] = kind(raw)
        except ValueError:
            raise ExperimentError(
                f"algorithmSettings '{name}': {raw!r} is not a {kind.__name__}"
            ) from None
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
    if exp.algorithm == "multivariate-tpe":
        kwargs["multivariate"] = True
    return optuna.samplers.TPESampler(**kwargs)


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def substitute(value: Any, trial_values: dict[str, str]) -> Any:
    """Replace ``${trialParameters.X}`` everywhere in ``value`` (strings, lists, mappings)."""
    if isinstance(value, str):

        def one(match: re.Match) -> str:
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


def observe(values: list[float], strategy: str) -> float:
    if strategy == "min":
        return min(values)
    if strategy == "max":
        return max(values)
    return values[-1]


def median_stop(
    current: list[float],
    completed: list[list[float]],
    maximize: bool,
    min_trials: int,
    start_step: int,
) -> bool:
    """Median stopping rule (Katib's medianstop): stop at step S when the trial's best value by S
    is strictly worse than the median of the completed trials' running averages up to S."""
    step = len(current)
    if step < start_step or len(completed) < min_trials:
        return False
    averages = [statistics.fmean(c[:step]) for c in completed if c]
    if len(averages) < min_trials:
        return False
    median = statistics.median(averages)
    best = max(current) if maximize else min(current)
    return best < median if maximize else best > median


@dataclass
class Trial:
    number: int
    assignments: dict[str, str]
    status: str = "Running"  # Succeeded | Failed | EarlyStopped
    reports: dict[str, list[float]] = field(default_factory=dict)
    observation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""


@dataclass
class ExperimentResult:
    experiment: Experiment
    trials: list[Trial]
    status: str  # Succeeded | GoalReached | Failed
    parent_run_id: str | None
    seconds: float
    parallel: int

    @property
    def best(self) -> Trial | None:
        done = [
            t
            for t in self.trials
            if t.status == "Succeeded" and self.experiment.objective in t.observation
        ]
        if not done:
            return None

        def key(t: Trial) -> float:
            return t.observation[self.experiment.objective]

        return max(done, key=key) if self.experiment.maximize else min(done, key=key)

    def render(self) -> str:
        exp = self.experiment
        counts = {
            s: sum(t.status == s for t in self.trials)
            for s in ("Succeeded", "EarlyStopped", "Failed")
        }
        lines = [
            f"experiment     {exp.name}: {self.status} in {self.seconds:.0f}s, {len(self.trials)} trials "
            + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()),
            f"algorithm      {exp.algorithm}, parallel {self.parallel}, early stopping "
            + ("medianstop" if exp.early_stopping else "off"),
        ]
        if self.parent_run_id:
            lines.append(f"MLflow parent  {self.parent_run_id}")
        best = self.best
        if best is None:
            lines.append("best trial     none succeeded")
        else:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.observation.items())
            params = ", ".join(f"{k}={v}" for k, v in best.assignments.items())
            lines += [f"best trial     #{best.number}: {metrics}", f"parameters     {params}"]
        return "\n".join(lines)

    def best_parameters(self) -> dict[str, str]:
        best = self.best
        if best is None:
            raise ExperimentError(f"experiment {self.experiment.name}: no trial succeeded")
        return best.assignments


def trial_command(exp: Experiment, assignments: dict[str, str]) -> list[str]:
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


def run_local(
    exp: Experiment,
    env: dict[str, str] | None = None,
    parallel: int | None = None,
    max_trials: int | None = None,
    progress: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
) -> ExperimentResult:
    """Run the Experiment's trials as local processes, optuna suggesting the parameters."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parallel = parallel or exp.parallel
    total = min(max_trials or exp.max_trials, exp.max_trials)
    if exp.algorithm == "grid":  # Katib's grid ends when every point was tried
        total = min(total, math.prod(len(p.grid()) for p in exp.parameters))
    if exp.algorithm == "bayesianoptimization":
        print(BAYES_NOTE, file=sys.stderr)
    study = optuna.create_study(
        sampler=sampler(exp), direction="maximize" if exp.maximize else "minimize"
    )
    space = {p.name: p.distribution() for p in exp.parameters}
    by_name = {p.name: p for p in exp.parameters}
    events: queue.Queue = queue.Queue()
    lock = threading.Lock()
    processes: set[subprocess.Popen] = set()
    completed_curves: list[list[float]] = []
    trials: list[Trial] = []
    optuna_trials: dict[int, Any] = {}
    running = 0
    failed = 0
    status = "Succeeded"
    started = time.monotonic()
    bar = _progress_bar(total, progress)
    stop_launching = False

    def worker(trial: Trial) -> None:
        try:
            run_trial(trial)
        except Exception as exc:  # a trial that cannot even start is a failed trial
            trial.status, trial.detail = "Failed", f"{type(exc).__name__}: {exc}"
        events.put(trial)

    def run_trial(trial: Trial) -> None:
        t0 = time.monotonic()
        argv = trial_command(exp, trial.assignments)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=trial_env(exp, env or {}, trial.assignments),
        )
        with lock:
            processes.add(proc)
        try:
            code, last = follow(trial, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            with lock:
                processes.discard(proc)
        trial.seconds = time.monotonic() - t0
        for name, values in trial.reports.items():
            default = "max" if exp.maximize else "min"
            trial.observation[name] = observe(values, exp.strategies.get(name, default))
        if trial.status == "Running":
            if code == 0 and exp.objective in trial.observation:
                trial.status = "Succeeded"
                with lock:
                    completed_curves.append(trial.reports[exp.objective])
            else:
                trial.status = "Failed"
                trial.detail = (
                    f"exit code {code}: {last}" if code else f"no '{exp.objective}' metric reported"
                )

    def follow(trial: Trial, proc: subprocess.Popen) -> tuple[int, str]:
        """Read the trial's output to its end: metrics, and early stopping after each report."""
        last = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                last = line.strip()
            for name, value in parse_metrics(line, exp.metrics_format, exp.metric_names):
                trial.reports.setdefault(name, []).append(value)
            curve = trial.reports.get(exp.objective, [])
            if exp.early_stopping and curve and trial.status == "Running":
                with lock:
                    stop = median_stop(
                        curve,
                        completed_curves,
                        exp.maximize,
                        int(exp.early_stopping["min_trials_required"]),
                        int(exp.early_stopping["start_step"]),
                    )
                if stop:
                    trial.status = "EarlyStopped"
                    proc.terminate()
        return proc.wait(), last

    try:
        while True:
            while not stop_launching and running < parallel and len(trials) < total:
                ot = study.ask(space)
                assignments = {n: by_name[n].format(v) for n, v in ot.params.items()}
                trial = Trial(len(trials), assignments)
                trials.append(trial)
                optuna_trials[trial.number] = ot
                running += 1
                threading.Thread(target=worker, args=(trial,), daemon=True).start()
            if running == 0:
                break
            trial = events.get()
            running -= 1
            ot = optuna_trials[trial.number]
            value = trial.observation.get(exp.objective)
            if trial.status == "Succeeded":
                study.tell(ot, value)
            elif trial.status == "EarlyStopped":
                for step, v in enumerate(trial.reports.get(exp.objective, [])):
                    ot.report(v, step)
                study.tell(ot, state=TrialState.PRUNED)
            else:
                failed += 1
                study.tell(ot, state=TrialState.FAIL)
            if on_trial:
                on_trial(trial)
            _advance(bar, trial, exp)
            if failed >= exp.max_failed:  # as Katib: the experiment fails at the budget
                status, stop_launching = "Failed", True
            elif (
                trial.status == "Succeeded"
                and exp.goal is not None
                and (value >= exp.goal if exp.maximize else value <= exp.goal)
            ):
                status, stop_launching = "GoalReached", True
    finally:
        # an error or Ctrl-C here must not leave trials running
        with lock:
            running_now = list(processes)
        for proc in running_now:
            proc.kill()
        if bar is not None:
            bar.close()
    result = ExperimentResult(exp, trials, status, None, time.monotonic() - started, parallel)
    if status == "Failed":
        details = "; ".join(f"trial {t.number}: {t.detail}" for t in trials if t.status == "Failed")
        raise ExperimentError(
            f"experiment {exp.name} failed: {failed} failed trials reached maxFailedTrialCount "
            f"{exp.max_failed} ({details})"
        )
    return result


def _progress_bar(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="trials", unit="trial", file=sys.stderr)


def _advance(bar, trial: Trial, exp: Experiment) -> None:  # type: ignore[no-untyped-def]
    if bar is None:
        return
    value = trial.observation.get(exp.objective)
    shown = f"{value:.4f}" if value is not None else "-"
    bar.set_postfix_str(f"#{trial.number} {trial.status} {exp.objective}={shown}")
    bar.update(1)


# --- the cluster path -------------------------------------------------------------------------


def for_cluster(
    exp: Experiment, namespace: str, env: dict[str, str], image: str | None = None
) -> dict[str, Any]:
    """The manifest to create: a unique name, the namespace, and the trial container's env values
    (data repo and rev, tracking URI, parent run) filled in."""
    import copy

    body = copy.deepcopy(exp.raw)
    meta = body.get("metadata", {})
    body["metadata"] = {**meta, "namespace": namespace or meta.get("namespace", "default")}
    body["metadata"]["name"] = f"{exp.name}-{uuid.uuid4().hex[:6]}"
    template = body["spec"]["trialTemplate"]
    for container in template["trialSpec"]["spec"]["template"]["spec"]["containers"]:
        if container.get("name") != template["primaryContainerName"]:
            continue
        if image:
            container["image"] = image
        items = container.setdefault("env", [])
        present = {item["name"] for item in items}
        for item in items:
            if item["name"] in env:  # a value given here wins over the manifest's Secret
                item.pop("valueFrom", None)
                item["value"] = env[item["name"]]
        items.extend({"name": k, "value": v} for k, v in env.items() if k not in present)
    return body


def custom_objects_api():  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise StackError(f"no Kubernetes cluster configured: {exc}") from None
    return client.CustomObjectsApi()


def run_in_cluster(
    body: dict[str, Any],
    timeout_seconds: float,
    api: Any = None,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Create the Experiment, wait for it to finish, return the best trial's parameters."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as exc:
        raise StackError(
            f"cannot create Experiment {namespace}/{name}: {exc.status} {exc.reason}"
        ) from None
    except OSError as exc:
        raise StackError(f"Kubernetes API unreachable: {exc}") from None
    try:
        return _wait(api, namespace, name, timeout_seconds, poll_seconds, sleep)
    except BaseException:
        # failed, timed out or interrupted: stop its trials rather than leave them running
        with contextlib.suppress(Exception):
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise


def _wait(api, namespace, name, timeout_seconds, poll_seconds, sleep) -> dict[str, str]:  # type: ignore[no-untyped-def]
    waited = 0.0
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status", {})
        conditions = {
            c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"
        }
        if "Succeeded" in conditions:
            assignments = status.get("currentOptimalTrial", {}).get("parameterAssignments", [])
            if not assignments:
                raise StackError(
                    f"Experiment {namespace}/{name} succeeded without an optimal trial"
                )
            return {a["name"]: str(a["value"]) for a in assignments}
        if "Failed" in conditions:
            raise StackError(
                f"Experiment {namespace}/{name} failed: {conditions['Failed'].get('message', '')}"
            )
        if waited >= timeout_seconds:
            raise StackError(
                f"Experiment {namespace}/{name} did not finish in {timeout_seconds:.0f}s"
            )
        sleep(poll_seconds)
        waited += poll_seconds


# --- what the tune step and the CLI call ------------------------------------------------------


@contextlib.contextmanager
def parent_run(exp: Experiment, tracking_uri: str, experiment_name: str) -> Iterator[str]:
    """The MLflow run every trial of one tuning nests under (``MLSTACK_PARENT_RUN_ID``)."""
    import mlflow

    from mlstack import tracking

    experiment_id = tracking.connect(tracking_uri, experiment_name)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tuning-{exp.name}") as run:
        mlflow.set_tags({"katib_experiment": exp.name, "katib_algorithm": exp.algorithm})
        yield run.info.run_id


def trial_env_for(
    tracking_uri: str, experiment_name: str, parent: str, repo: str, rev: str
) -> dict[str, str]:
    """What every trial needs from the tune step: data version, split, tracking, parent run."""
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
    tracking_uri: str,
    experiment_name: str,
    repo: str,
    data_rev: str,
    parallel: int | None = None,
    max_trials: int | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Run ``exp`` locally, every trial an MLflow run under one tuning parent run."""
    import mlflow

    with parent_run(exp, tracking_uri, experiment_name) as parent:
        env = trial_env_for(tracking_uri, experiment_name, parent, repo, data_rev)
        result = run_local(
            exp, env=env, parallel=parallel, max_trials=max_trials, progress=progress
        )
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
    backend: str,
    namespace: str,
    tracking_uri: str,
    experiment_name: str,
    repo: str,
    data_rev: str,
    timeout_seconds: float,
) -> dict[str, str]:
    """The tune step: the Experiment in the cluster (``backend="cluster"``, through the Kubernetes
    API) or with the local runner (``"local"``); returns the best trial's parameters."""
    import mlflow

    if backend not in ("cluster", "local"):
        raise StackError(f"backend must be 'cluster' or 'local', got {backend!r}")
    exp = parse(yaml.safe_load(experiment_yaml))
    if backend == "local":
        return tune_local(
            exp, tracking_uri, experiment_name, repo, data_rev, progress=False
        ).best_parameters()
    with parent_run(exp, tracking_uri, experiment_name) as parent:
        env = trial_env_for(tracking_uri, experiment_name, parent, repo, data_rev)
        best = run_in_cluster(for_cluster(exp, namespace, env), timeout_seconds)
        mlflow.log_params({f"best_{k}": v for k, v in best.items()})
    return best
