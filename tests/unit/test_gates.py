import pytest

from mlstack.settings import Gates
from mlstack.train.evaluation import Decision, decide

GATES = Gates(min_roc_auc=0.75, min_f1=0.4, max_regression=0.01)


def m(auc: float, f1: float = 0.6) -> dict[str, float]:
    return {"roc_auc": auc, "f1": f1}


def by_name(decision: Decision) -> dict[str, bool]:
    return {g.name: g.passed for g in decision.gates}


def test_no_champion_only_absolute_gates():
    assert decide(m(0.80), None, GATES).passed
    d = decide(m(0.70), None, GATES)
    assert not d.passed
    assert by_name(d) == {"min_roc_auc": False, "min_f1": True, "vs_champion": True}


def test_better_than_champion_passes():
    assert decide(m(0.85), m(0.80), GATES, champion_version="3").passed


def test_tie_passes():
    assert decide(m(0.80), m(0.80), GATES, champion_version="3").passed


def test_worse_within_margin_passes_beyond_margin_fails():
    assert decide(m(0.795), m(0.80), GATES, champion_version="3").passed
    d = decide(m(0.78), m(0.80), GATES, champion_version="3")
    assert not d.passed
    assert by_name(d)["vs_champion"] is False
    assert "champion v3" in d.gates[-1].detail


def test_f1_gate_alone_fails():
    assert by_name(decide(m(0.9, f1=0.2), None, GATES)) == {
        "min_roc_auc": True,
        "min_f1": False,
        "vs_champion": True,
    }


@pytest.mark.parametrize("champion", [None, m(0.8)])
def test_decision_json_round_trip(champion):
    d = decide(m(0.81), champion, GATES, champion_version="1" if champion else None)
    assert Decision.from_json(d.to_json()) == d
