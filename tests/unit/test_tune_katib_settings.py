"""The local runner accepts exactly the algorithm settings Katib's suggestion services accept.

The oracle is Katib v0.19.0's own code: tests/upstream/katib-suggestion-settings.json holds, per
algorithm, the service katib-config routes it to and each setting's acceptance test as that
service's validation reads it, as data (tools/katib_settings.py extracts it from the source at
the tag): for the Python services, Python's int() or float() of the value and the bounds the
service checks, or the values it takes; for the Go service, strconv's parse.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any

import pytest
import yaml

from mlstack.tune.algorithms import (
    ALGORITHMS,
    EARLY_STOPPING,
    SettingError,
    check,
    check_early_stopping,
)
from tests.conftest import ROOT

KATIB = json.loads((ROOT / "tests/upstream/katib-suggestion-settings.json").read_text())
BOUNDS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
SAMPLES = [
    "-1", "0", "0.25", "0.5", "1", "2", "5", "25", "1e3", "-0.5", "abc", "", " 3", "1_0",
    "inf", "nan", "GP", "RF", "EI", "lbfgs", "auto", "ipop", "bipop", "none", "None",
]  # fmt: skip


def katib_accepts(algorithm: str, name: str, value: str, kind: str = "algorithms") -> bool:
    """What Katib's service for ``algorithm`` says of one setting."""
    entry = KATIB[kind][algorithm]
    rule = entry["settings"].get(name)
    if rule is None:
        return entry["unknown"] == "ignored"
    if "accept" in rule:  # the Python service's test: int()/float() of the value, then bounds
        check = rule["accept"]
        if "one_of" in check:
            return value in check["one_of"]
        if "parse" not in check:
            return True
        try:
            number = {"int": int, "float": float}[check["parse"]](value)
        except ValueError:  # the service's int()/float() raises: the setting is rejected
            return False
        return all(BOUNDS[op](number, bound) for op, bound in check["bounds"])
    if "parse" in rule:  # Go: strconv.Atoi / strconv.ParseFloat
        if rule["parse"] == "int":
            return re.fullmatch(r"[+-]?\d+", value) is not None
        try:
            float(value)
        except ValueError:
            return False
        return re.search(r"[\s_]", value) is None
    return value in rule["one_of"]


def runner_accepts(algorithm: str, name: str, value: str) -> bool:
    try:
        check(algorithm, {name: value})
    except SettingError as exc:
        assert f"'{name}'" in str(exc), str(exc)  # the error names the setting
        return False
    return True


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_runs_in_the_service_katib_routes_it_to(algorithm: str) -> None:
    assert ALGORITHMS[algorithm].service == KATIB["algorithms"][algorithm]["service"]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_runner_takes_the_settings_the_service_takes(algorithm: str) -> None:
    assert set(ALGORITHMS[algorithm].settings) == set(KATIB["algorithms"][algorithm]["settings"])


@pytest.mark.parametrize(
    ("algorithm", "name"),
    [(a, n) for a in sorted(ALGORITHMS) for n in KATIB["algorithms"][a]["settings"]],
)
def test_each_value_is_accepted_exactly_when_katib_accepts_it(algorithm: str, name: str) -> None:
    verdicts = {
        v: (runner_accepts(algorithm, name, v), katib_accepts(algorithm, name, v)) for v in SAMPLES
    }
    differ = {v: f"runner {r}, katib {k}" for v, (r, k) in verdicts.items() if r != k}
    assert not differ, differ
    assert any(k for _, k in verdicts.values()), "no sample accepted: the comparison says nothing"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_setting_the_service_does_not_read_is_an_error(algorithm: str) -> None:
    """Katib's Python services reject it; goptuna ignores it, and the runner rejects it too
    (docs/tuning.md)."""
    assert not runner_accepts(algorithm, "n_startup_jobs", "5")
    if KATIB["algorithms"][algorithm]["unknown"] == "rejected":
        assert not katib_accepts(algorithm, "n_startup_jobs", "5")


def experiment_settings(doc: dict[str, Any]) -> tuple[str, dict[str, str]]:
    algo = doc["spec"]["algorithm"]
    return algo["algorithmName"], {s["name"]: s["value"] for s in algo.get("algorithmSettings", [])}


def test_the_experiment_passes_katibs_validation_and_the_runners() -> None:
    algorithm, settings = experiment_settings(
        yaml.safe_load((ROOT / "katib/experiment.yaml").read_text())
    )
    rejected = [n for n, v in settings.items() if not katib_accepts(algorithm, n, v)]
    assert not rejected, (
        f"Katib's {KATIB['algorithms'][algorithm]['service']} service rejects {rejected}"
    )
    check(algorithm, settings)


def test_tpe_with_optunas_setting_names_is_rejected_as_katib_rejects_it() -> None:
    """The defect: Katib sends tpe to hyperopt, which knows no n_startup_trials."""
    assert not katib_accepts("tpe", "n_startup_trials", "5")
    with pytest.raises(SettingError, match="'n_startup_trials'.*hyperopt"):
        check("tpe", {"n_startup_trials": "5", "random_state": "7"})


@pytest.mark.parametrize("algorithm", sorted(EARLY_STOPPING))
def test_early_stopping_settings_are_accepted_exactly_when_katib_accepts_them(
    algorithm: str,
) -> None:
    upstream = KATIB["early_stopping"][algorithm]
    table = EARLY_STOPPING[algorithm]
    assert table.service == upstream["service"]
    assert set(table.settings) == set(upstream["settings"])
    for name in [*upstream["settings"], "n_startup_jobs"]:
        for value in SAMPLES:
            try:
                check_early_stopping(algorithm, {name: value})
                runner = True
            except SettingError as exc:
                assert f"'{name}'" in str(exc)
                runner = False
            assert runner == katib_accepts(algorithm, name, value, "early_stopping"), (name, value)
