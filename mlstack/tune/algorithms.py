"""Katib's algorithms as the local runner runs them: one table.

Katib v0.19.0 routes each algorithm to a suggestion service (katib-config's runtime.suggestions:
``tpe`` and ``random`` to hyperopt, ``grid`` and ``multivariate-tpe`` to optuna, ``cmaes`` to
goptuna, ``bayesianoptimization`` to scikit-optimize), and that service validates the
Experiment's algorithmSettings before the first trial: a setting it rejects fails the
Suggestion. The table below holds, per algorithm, the service and exactly the settings it
accepts with the same test of the value, and how each maps onto the optuna sampler that runs the
algorithm here. tests/unit/test_tune_katib_settings.py checks it against the services' own
validation code at v0.19.0 (tests/upstream/katib-suggestion-settings.json).

One deliberate difference: goptuna ignores a setting name it does not read, where the local runner
rejects it (a setting nobody reads is a mistake in the manifest).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlstack.errors import StackError

KATIB_VERSION = "v0.19.0"


class SettingError(StackError):
    pass


def _python_int(raw: str) -> int:
    return int(raw)  # the Python services test int(s.value)


def _python_float(raw: str) -> float:
    return float(raw)


def _go_int(raw: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", raw):  # strconv.Atoi
        raise ValueError(f"invalid syntax: {raw!r}")
    return int(raw)


def _go_float(raw: str) -> float:
    if re.search(r"[\s_]", raw):  # strconv.ParseFloat takes no spaces or digit separators
        raise ValueError(f"invalid syntax: {raw!r}")
    return float(raw)


@dataclass(frozen=True)
class Setting:
    parse: Callable[[str], Any]
    accept: Callable[[Any], bool]
    rule: str  # what the service requires, for the error line
    optuna: str | None  # the sampler argument it becomes here; None: validated, no equivalent


def _str(raw: str) -> str:
    return raw


def _one_of(*values: str) -> Setting:
    return Setting(_str, lambda v: v in values, f"one of {', '.join(values)}", None)


_NON_NEGATIVE_INT = Setting(_python_int, lambda v: v >= 0, "an integer >= 0", "seed")


@dataclass(frozen=True)
class Algorithm:
    service: str
    settings: dict[str, Setting] = field(default_factory=dict)


ALGORITHMS: dict[str, Algorithm] = {
    # hyperopt: rand.suggest; random_state seeds it
    "random": Algorithm("hyperopt", {"random_state": _NON_NEGATIVE_INT}),
    # hyperopt: tpe.suggest with these arguments; its first request's trials are random
    "tpe": Algorithm(
        "hyperopt",
        {
            "gamma": Setting(_python_float, lambda v: 0 < v < 1, "a number in (0, 1)", "gamma"),
            "prior_weight": Setting(_python_float, lambda v: v > 0, "a number > 0", "prior_weight"),
            "n_EI_candidates": Setting(
                _python_int, lambda v: v > 0, "an integer > 0", "n_ei_candidates"
            ),
            "random_state": _NON_NEGATIVE_INT,
        },
    ),
    # optuna: GridSampler
    "grid": Algorithm("optuna", {"random_state": _NON_NEGATIVE_INT}),
    # optuna: TPESampler(multivariate=True, constant_liar=True)
    "multivariate-tpe": Algorithm(
        "optuna",
        {
            "n_startup_trials": Setting(
                _python_int, lambda v: v >= 0, "an integer >= 0", "n_startup_trials"
            ),
            "n_ei_candidates": Setting(
                _python_int, lambda v: v >= 0, "an integer >= 0", "n_ei_candidates"
            ),
            "random_state": _NON_NEGATIVE_INT,
        },
    ),
    # goptuna: CMA-ES; a value its converter cannot parse fails the Suggestion
    "cmaes": Algorithm(
        "goptuna",
        {
            "random_state": Setting(_go_int, lambda v: True, "an integer", "seed"),
            "sigma": Setting(_go_float, lambda v: True, "a number", "sigma0"),
            "restart_strategy": Setting(
                _str,
                lambda v: v in ("ipop", "bipop", "none"),
                "one of ipop, bipop, none",
                "restart_strategy",
            ),
        },
    ),
    # scikit-optimize: Optimizer(base_estimator, n_initial_points, acq_func, acq_optimizer)
    "bayesianoptimization": Algorithm(
        "skopt",
        {
            "base_estimator": _one_of("GP", "RF", "ET", "GBRT"),
            "n_initial_points": Setting(
                _python_int, lambda v: v >= 0, "an integer >= 0", "n_startup_trials"
            ),
            "acq_func": _one_of("gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"),
            "acq_optimizer": _one_of("auto", "sampling", "lbfgs"),
            "random_state": _NON_NEGATIVE_INT,
        },
    ),
}

BAYES_NOTE = (
    "note: bayesianoptimization runs as optuna's TPE sampler locally (Katib runs "
    "scikit-optimize's Gaussian process; base_estimator, acq_func and acq_optimizer are "
    "checked as Katib checks them and have no local equivalent)"
)


# Katib's early-stopping services validate their settings the same way
EARLY_STOPPING: dict[str, Algorithm] = {
    "medianstop": Algorithm(
        "earlystopping-medianstop",
        {
            "min_trials_required": Setting(_python_int, lambda v: v > 0, "an integer > 0", None),
            "start_step": Setting(_python_int, lambda v: v >= 1, "an integer >= 1", None),
        },
    ),
}


def check(algorithm: str, settings: dict[str, str]) -> dict[str, Any]:
    """Each setting parsed and tested as Katib's suggestion service for ``algorithm`` does;
    the first one it would reject raises, naming the setting."""
    return _check(ALGORITHMS, "spec.algorithm", algorithm, settings)


def check_early_stopping(algorithm: str, settings: dict[str, str]) -> dict[str, Any]:
    """The same, as Katib's early-stopping service for ``algorithm`` checks its settings."""
    return _check(EARLY_STOPPING, "spec.earlyStopping", algorithm, settings)


def _check(
    tables: dict[str, Algorithm], field: str, algorithm: str, settings: dict[str, str]
) -> dict[str, Any]:
    where = f"{field}.algorithmSettings"
    if algorithm not in tables:
        raise SettingError(
            f"{field}.algorithmName: '{algorithm}' not supported locally "
            f"(supported: {', '.join(sorted(tables))})"
        )
    table = tables[algorithm]
    values: dict[str, Any] = {}
    for name, raw in settings.items():
        if name not in table.settings:
            raise SettingError(
                f"{where}: '{name}' is not a setting of {algorithm} (Katib {KATIB_VERSION} runs "
                f"it in its {table.service} service, which takes: {', '.join(table.settings)})"
            )
        setting = table.settings[name]
        try:
            value = setting.parse(str(raw))
            ok = setting.accept(value)
        except (ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            raise SettingError(f"{where}: '{name}' must be {setting.rule} (got {raw!r})")
        values[name] = value
    return values


def sampler_arguments(algorithm: str, values: dict[str, Any], parallel: int) -> dict[str, Any]:
    """The optuna sampler's arguments that give the service's behaviour for these settings."""
    table = ALGORITHMS[algorithm].settings
    kwargs: dict[str, Any] = {
        table[name].optuna: value  # type: ignore[misc]
        for name, value in values.items()
        if table[name].optuna is not None
    }
    if algorithm == "tpe":
        # hyperopt's TPE: its first request (parallelTrialCount trials) is random, and gamma is
        # the fraction of sqrt(n) trials taken as good, at most 25 (optuna's
        # hyperopt_default_gamma with hyperopt's 0.25 as the parameter)
        gamma = kwargs.pop("gamma", 0.25)
        kwargs["gamma"] = lambda n, g=gamma: min(math.ceil(g * math.sqrt(n)), 25)
        kwargs["n_startup_trials"] = parallel
        kwargs.setdefault("prior_weight", 1.0)
        kwargs["consider_endpoints"] = False
    if algorithm in ("tpe", "multivariate-tpe"):
        kwargs["constant_liar"] = algorithm == "multivariate-tpe"  # optuna's service sets it
    if algorithm == "multivariate-tpe":
        kwargs["multivariate"] = True
    if algorithm == "cmaes":
        kwargs["n_startup_trials"] = 0  # goptuna's CMA-ES starts at once
        if kwargs.get("restart_strategy") == "none":
            kwargs.pop("restart_strategy")
    if algorithm == "bayesianoptimization":
        kwargs.setdefault("n_startup_trials", 10)  # scikit-optimize's n_initial_points default
    return kwargs
