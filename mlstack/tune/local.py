"""The local Katib runner: an Experiment's trials as processes on this machine, optuna suggesting
their parameters.

``LocalTuner`` follows Katib where it can: the trial command is the primary container's, metrics
are read from the trial's stdout with the StdOut collector's regular expression,
``parallelTrialCount`` trials run as parallel processes, ``maxTrialCount``,
``maxFailedTrialCount``, the objective ``goal`` and median-stop early stopping end trials or the
experiment. An error or Ctrl-C kills every trial still running.
"""

from __future__ import annotations

import math
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlstack.tune.algorithms import BAYES_NOTE
from mlstack.tune.spec import (
    Experiment,
    ExperimentError,
    parse_metrics,
    sampler,
    trial_command,
    trial_env,
)


def observe(values: list[float], strategy: str) -> float:
    """A metric's observed value by its ``metricStrategies`` entry: min, max or the latest."""
    if strategy == "min":
        return min(values)
    if strategy == "max":
        return max(values)
    return values[-1]


def median_stop(
    current: list[float],
    completed: list[list[float]],
    *,
    maximize: bool,
    min_trials: int,
    start_step: int,
) -> bool:
    """Median stopping rule (Katib's medianstop): stop at step S when the trial's best value by S
    is strictly worse than the median of the completed trials' running averages up to S.
    Returns whether to stop; never stops before ``start_step`` or ``min_trials`` completions."""
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
        """The succeeded trial with the best objective value; None when none succeeded."""
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
        """The result as the few lines ``mlstack tune`` prints."""
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

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (``mlstack tune -o json``)."""
        best = self.best
        return {
            "experiment": self.experiment.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "parallel": self.parallel,
            "parent_run_id": self.parent_run_id,
            "trials": [
                {
                    "number": t.number,
                    "status": t.status,
                    "parameters": t.assignments,
                    "observation": t.observation,
                    "detail": t.detail,
                }
                for t in self.trials
            ],
            "best": None
            if best is None
            else {
                "number": best.number,
                "parameters": best.assignments,
                "observation": best.observation,
            },
        }

    def best_parameters(self) -> dict[str, str]:
        """The best trial's parameter assignments; ``ExperimentError`` when no trial succeeded."""
        best = self.best
        if best is None:
            raise ExperimentError(f"experiment {self.experiment.name}: no trial succeeded")
        return best.assignments


class LocalTuner:
    """Runs one Experiment's trials locally; ``run()`` returns the result.

    ``env`` is added to every trial's environment (it wins over the container's values);
    ``parallel`` overrides ``parallelTrialCount``; ``max_trials`` can only lower
    ``maxTrialCount``; ``on_trial`` sees each trial once it ended.
    """

    def __init__(
        self,
        exp: Experiment,
        *,
        env: dict[str, str] | None = None,
        parallel: int | None = None,
        max_trials: int | None = None,
        progress: bool = True,
        on_trial: Callable[[Trial], None] | None = None,
    ) -> None:
        self.exp = exp
        self.env = env or {}
        self.parallel = parallel or exp.parallel
        self.total = trial_budget(exp, max_trials)
        self.progress = progress
        self.on_trial = on_trial
        self.trials: list[Trial] = []
        self.completed_curves: list[list[float]] = []
        self.failed = 0
        self.status = "Succeeded"
        self._stop_launching = False
        self._events: queue.Queue[Trial] = queue.Queue()
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[str]] = set()

    # --- the experiment -------------------------------------------------------------------------

    def run(self) -> ExperimentResult:
        """Run trials until the budget, the goal or the failure budget ends the experiment.

        Returns the result; raises ``ExperimentError`` when ``maxFailedTrialCount`` trials failed.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        exp = self.exp
        if exp.algorithm == "bayesianoptimization":
            print(BAYES_NOTE, file=sys.stderr)
        study = optuna.create_study(
            sampler=sampler(exp), direction="maximize" if exp.maximize else "minimize"
        )
        space = {p.name: p.distribution() for p in exp.parameters}
        by_name = {p.name: p for p in exp.parameters}
        asked: dict[int, Any] = {}
        running = 0
        started = time.monotonic()
        bar = _progress_bar(self.total, self.progress)
        try:
            while True:
                while self.can_launch(running):
                    suggestion = study.ask(space)
                    assignments = {n: by_name[n].format(v) for n, v in suggestion.params.items()}
                    trial = Trial(len(self.trials), assignments)
                    self.trials.append(trial)
                    asked[trial.number] = suggestion
                    running += 1
                    threading.Thread(target=self._worker, args=(trial,), daemon=True).start()
                if running == 0:
                    break
                trial = self._events.get()
                running -= 1
                self.tell(study, asked[trial.number], trial)
                if self.on_trial:
                    self.on_trial(trial)
                _advance(bar, trial, exp)
                self.record(trial)
        finally:
            self.kill_running()  # an error or Ctrl-C here must not leave trials running
            if bar is not None:
                bar.close()
        result = ExperimentResult(
            exp, self.trials, self.status, None, time.monotonic() - started, self.parallel
        )
        if self.status == "Failed":
            details = "; ".join(
                f"trial {t.number}: {t.detail}" for t in self.trials if t.status == "Failed"
            )
            raise ExperimentError(
                f"experiment {exp.name} failed: {self.failed} failed trials reached "
                f"maxFailedTrialCount {exp.max_failed} ({details})"
            )
        return result

    def can_launch(self, running: int) -> bool:
        """Whether another trial may start now, with ``running`` trials running."""
        return (
            not self._stop_launching and running < self.parallel and len(self.trials) < self.total
        )

    def tell(self, study: Any, suggestion: Any, trial: Trial) -> None:
        """Report an ended trial to the optuna study that suggested its parameters."""
        from optuna.trial import TrialState

        if trial.status == "Succeeded":
            study.tell(suggestion, trial.observation[self.exp.objective])
        elif trial.status == "EarlyStopped":
            for step, value in enumerate(trial.reports.get(self.exp.objective, [])):
                suggestion.report(value, step)
            study.tell(suggestion, state=TrialState.PRUNED)
        else:
            study.tell(suggestion, state=TrialState.FAIL)

    def record(self, trial: Trial) -> None:
        """Count an ended trial: the experiment fails at the failure budget (as Katib) and stops
        launching once a trial reaches the goal."""
        exp = self.exp
        if trial.status == "Failed":
            self.failed += 1
        if self.failed >= exp.max_failed:
            self.status, self._stop_launching = "Failed", True
        elif trial.status == "Succeeded" and goal_reached(exp, trial.observation[exp.objective]):
            self.status, self._stop_launching = "GoalReached", True

    def kill_running(self) -> None:
        """Kill every trial process still running."""
        with self._lock:
            running_now = list(self._processes)
        for proc in running_now:
            proc.kill()

    # --- one trial ------------------------------------------------------------------------------

    def _worker(self, trial: Trial) -> None:
        try:
            self.run_trial(trial)
        except Exception as exc:  # a trial that cannot even start is a failed trial
            trial.status, trial.detail = "Failed", f"{type(exc).__name__}: {exc}"
        self._events.put(trial)

    def run_trial(self, trial: Trial) -> None:
        """Run one trial's process to its end and set its status, observation and time."""
        exp = self.exp
        t0 = time.monotonic()
        proc = subprocess.Popen(
            trial_command(exp, trial.assignments),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=trial_env(exp, self.env, trial.assignments),
        )
        with self._lock:
            self._processes.add(proc)
        try:
            code, last = self.follow(trial, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            with self._lock:
                self._processes.discard(proc)
        trial.seconds = time.monotonic() - t0
        self.conclude(trial, code, last)

    def follow(self, trial: Trial, proc: subprocess.Popen[str]) -> tuple[int, str]:
        """Read the trial's output to its end: metrics, and early stopping after each report.

        Returns the exit code and the last non-empty output line."""
        exp = self.exp
        last = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                last = line.strip()
            for name, value in parse_metrics(line, exp.metrics_format, exp.metric_names):
                trial.reports.setdefault(name, []).append(value)
            if trial.status == "Running" and self.should_stop(trial):
                trial.status = "EarlyStopped"
                proc.terminate()
        return proc.wait(), last

    def should_stop(self, trial: Trial) -> bool:
        """Median-stop early stopping for a running trial, against the trials completed so far."""
        early = self.exp.early_stopping
        curve = trial.reports.get(self.exp.objective, [])
        if not early or not curve:
            return False
        with self._lock:
            return median_stop(
                curve,
                self.completed_curves,
                maximize=self.exp.maximize,
                min_trials=int(early["min_trials_required"]),
                start_step=int(early["start_step"]),
            )

    def conclude(self, trial: Trial, code: int, last: str) -> None:
        """A finished process's trial: its observations by metric strategy, and its status
        (unless early stopping already set it): succeeded when it exited 0 and reported the
        objective, else failed with the reason."""
        exp = self.exp
        default = "max" if exp.maximize else "min"
        for name, values in trial.reports.items():
            trial.observation[name] = observe(values, exp.strategies.get(name, default))
        if trial.status != "Running":
            return
        if code == 0 and exp.objective in trial.observation:
            trial.status = "Succeeded"
            with self._lock:
                self.completed_curves.append(trial.reports[exp.objective])
        else:
            trial.status = "Failed"
            trial.detail = (
                f"exit code {code}: {last}" if code else f"no '{exp.objective}' metric reported"
            )


def trial_budget(exp: Experiment, max_trials: int | None = None) -> int:
    """How many trials may run: ``maxTrialCount``, lowered by ``max_trials``; a grid ends when
    every point was tried (as Katib's)."""
    total = min(max_trials or exp.max_trials, exp.max_trials)
    if exp.algorithm == "grid":
        total = min(total, math.prod(len(p.grid()) for p in exp.parameters))
    return total


def trial_line(exp: Experiment, trial: Trial) -> str:
    """One line about an ended trial: ``trial 3/12 Succeeded roc_auc=0.8712``."""
    value = trial.observation.get(exp.objective)
    shown = f" {exp.objective}={value:.4f}" if value is not None else ""
    return f"trial {trial.number + 1}/{trial_budget(exp)} {trial.status}{shown}"


def goal_reached(exp: Experiment, value: float) -> bool:
    """Whether an objective value reaches the Experiment's goal (never, without a goal)."""
    if exp.goal is None:
        return False
    return value >= exp.goal if exp.maximize else value <= exp.goal


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
