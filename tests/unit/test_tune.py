"""Katib: the Experiment manifest, the local runner's semantics, and the cluster launcher."""

import copy
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml

from mlstack.errors import StackError
from mlstack.settings import DEFAULTS
from mlstack.tune import cluster, local, run, spec
from tests.support.k8s_schema import experiment_errors

MANIFEST = yaml.safe_load(DEFAULTS.katib_experiment.read_text())


def manifest(**spec_changes) -> dict:
    doc = copy.deepcopy(MANIFEST)
    doc["spec"].update(spec_changes)
    return doc


# --- the manifest -------------------------------------------------------------------------------


def test_experiment_yaml_is_strictly_valid_and_matches_the_project():
    assert experiment_errors(MANIFEST) == []
    exp = spec.parse(MANIFEST)
    assert (exp.objective, exp.maximize, exp.algorithm) == ("roc_auc", True, "multivariate-tpe")
    assert exp.early_stopping == {"min_trials_required": "3", "start_step": "2"}
    assert exp.container["image"] == DEFAULTS.training_image
    # the trial runs the pipeline's training entrypoint with every parameter
    command = " ".join(exp.container["command"])
    assert "-m mlstack.tune.trial" in command
    for name in exp.trial_parameters:
        assert f"${{trialParameters.{name}}}" in command


def test_strict_walk_rejects_unknown_fields_and_wrong_types():
    doc = manifest(parallelTrialCounts=2, maxTrialCount="12")
    containers = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"]
    containers[0]["comand"] = ["python"]
    errors = experiment_errors(doc)
    assert "spec.parallelTrialCounts: unknown field (not in V1beta1ExperimentSpec)" in errors
    assert "spec.maxTrialCount: expected int, got '12'" in errors
    assert any(
        e.endswith("containers[0].comand: unknown field (not in V1Container)") for e in errors
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nasConfig": {}}, "spec.nasConfig: not supported"),
        ({"algorithm": {"algorithmName": "hyperband"}}, "'hyperband' not supported locally"),
        (
            {
                "algorithm": {
                    "algorithmName": "tpe",
                    "algorithmSettings": [{"name": "n_startup_trials", "value": "5"}],
                }
            },
            "'n_startup_trials' is not a setting of tpe",
        ),
        ({"metricsCollectorSpec": {"collector": {"kind": "File"}}}, "'File' not supported"),
        ({"earlyStopping": {"algorithmName": "hyperband"}}, "only medianstop"),
        ({"parameters": [{"name": "x", "parameterType": "complex"}]}, "parameterType: 'complex'"),
        (
            {
                "parameters": [
                    {
                        "name": "x",
                        "parameterType": "double",
                        "feasibleSpace": {"min": "2", "max": "1"},
                    }
                ]
            },
            "min 2.0 > max 1.0",
        ),
    ],
)
def test_unsupported_fields_fail_naming_the_field(change, message):
    with pytest.raises(spec.ExperimentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.parse(manifest(**change))


def test_unknown_placeholder_fails_at_parse_time():
    doc = manifest()
    doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ].append("--x=${trialSpec.Name}")
    with pytest.raises(spec.ExperimentError, match=r"\$\{trialSpec.Name\}: not supported"):
        spec.parse(doc)


# --- parameters, substitution, metrics ---------------------------------------------------------


def test_parameters_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params = {p.name: p for p in spec.parse(MANIFEST).parameters}
    assert params["max_iter"].distribution() == IntDistribution(50, 300, step=50)
    assert params["learning_rate"].distribution() == FloatDistribution(0.02, 0.3)
    assert params["l2_regularization"].distribution() == FloatDistribution(0.0, 1.0, step=0.25)
    assert params["max_depth"].distribution() == CategoricalDistribution(["2", "3", "4", "6"])
    assert params["class_weight"].distribution() == CategoricalDistribution(["balanced", "none"])
    assert params["max_iter"].grid() == [50, 100, 150, 200, 250, 300]
    assert params["l2_regularization"].grid() == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(spec.ExperimentError, match="grid needs feasibleSpace.step"):
        params["learning_rate"].grid()
    log = spec._parameter(
        0,
        {
            "name": "lr",
            "parameterType": "double",
            "feasibleSpace": {"min": "0.001", "max": "1", "distribution": "logUniform"},
        },
    )
    assert log.distribution() == FloatDistribution(0.001, 1.0, log=True)


def test_trial_command_substitutes_every_parameter():
    exp = spec.parse(MANIFEST)
    argv = spec.trial_command(
        exp,
        {
            "learning_rate": "0.05",
            "max_iter": "150",
            "max_depth": "3",
            "l2_regularization": "0.25",
            "class_weight": "none",
        },
    )
    assert argv[0] == sys.executable
    assert argv[1:3] == ["-m", "mlstack.tune.trial"]
    assert "--learning-rate=0.05" in argv and "--class-weight=none" in argv
    assert not any("${" in a for a in argv)
    assert spec.substitute({"a": ["x=${trialParameters.p}"]}, {"p": "1"}) == {"a": ["x=1"]}
    with pytest.raises(spec.ExperimentError, match="no such trial parameter"):
        spec.substitute("${trialParameters.q}", {"p": "1"})


FMT = (spec.DEFAULT_METRICS_FORMAT,)
NAMES = ("roc_auc", "f1")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "2026-11-23T10:00:00Z iterations=25 roc_auc=0.812 f1=0.6",
            [("roc_auc", 0.812), ("f1", 0.6)],
        ),
        ("roc_auc = 8.1e-1", [("roc_auc", 0.81)]),
        ("roc_auc=.5 loss=0.3", [("roc_auc", 0.5)]),
        ("roc_auc=-1E2", [("roc_auc", -100.0)]),
        ("roc_auc=", []),
        ("roc_auc=abc f1=0.4", [("f1", 0.4)]),
        ("roc_auc: 0.8", []),
        ("Traceback (most recent call last):", []),
        ("", []),
    ],
)
def test_stdout_collector_parsing(line, expected):
    assert spec.parse_metrics(line, FMT, NAMES) == expected


def test_custom_metrics_format():
    assert spec.parse_metrics("roc_auc: 0.7", [r"([\w|-]+)\s*:\s*([+-]?\d*(\.\d+)?)"], NAMES) == [
        ("roc_auc", 0.7)
    ]


def test_metric_strategies():
    assert local.observe([0.5, 0.9, 0.7], "max") == 0.9
    assert local.observe([0.5, 0.9, 0.7], "min") == 0.5
    assert local.observe([0.5, 0.9, 0.7], "latest") == 0.7


# --- algorithms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "settings"),
    [
        ("random", optuna.samplers.RandomSampler, [{"name": "random_state", "value": "3"}]),
        ("grid", optuna.samplers.GridSampler, []),
        (
            "tpe",
            optuna.samplers.TPESampler,
            [{"name": "gamma", "value": "0.3"}, {"name": "n_EI_candidates", "value": "12"}],
        ),
        (
            "multivariate-tpe",
            optuna.samplers.TPESampler,
            [{"name": "n_startup_trials", "value": "4"}],
        ),
        ("cmaes", optuna.samplers.CmaEsSampler, [{"name": "sigma", "value": "0.5"}]),
        ("bayesianoptimization", optuna.samplers.TPESampler, []),
    ],
)
def test_algorithm_mapping(name, cls, settings):
    doc = manifest(algorithm={"algorithmName": name, "algorithmSettings": settings})
    if name == "grid":
        doc["spec"]["parameters"] = [
            p for p in doc["spec"]["parameters"] if p["name"] != "learning_rate"
        ]
        doc["spec"]["trialTemplate"]["trialParameters"] = [
            tp
            for tp in doc["spec"]["trialTemplate"]["trialParameters"]
            if tp["reference"] != "learning_rate"
        ]
        c = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
        c["command"] = [a for a in c["command"] if "learningRate" not in a]
    sampler = spec.sampler(spec.parse(doc))
    assert isinstance(sampler, cls)
    if name == "multivariate-tpe":  # Katib's optuna service
        assert (sampler._multivariate, sampler._constant_liar) == (True, True)
        assert sampler._n_startup_trials == 4
    if name == "tpe":  # Katib's hyperopt service: its first request is random
        assert sampler._n_startup_trials == doc["spec"]["parallelTrialCount"]
        assert sampler._n_ei_candidates == 12
        assert sampler._gamma(100) == 3  # ceil(0.3 * sqrt(100)), as hyperopt's tpe


def test_bad_algorithm_setting_value():
    doc = manifest(
        algorithm={
            "algorithmName": "multivariate-tpe",
            "algorithmSettings": [{"name": "n_startup_trials", "value": "many"}],
        }
    )
    with pytest.raises(spec.ExperimentError, match="'n_startup_trials' must be an integer >= 0"):
        spec.sampler(spec.parse(doc))


# --- median stop, failed-trial budget, early stopping: with small scripted trials ----------------


def test_median_stop_rule():
    done = [[0.7, 0.8, 0.9], [0.6, 0.7, 0.8], [0.5, 0.6, 0.7]]
    # running averages up to step 2: 0.75, 0.65, 0.55 -> median 0.65
    assert local.median_stop([0.5, 0.6], done, maximize=True, min_trials=3, start_step=2)
    assert not local.median_stop([0.5, 0.66], done, maximize=True, min_trials=3, start_step=2)
    assert not local.median_stop(
        [0.1], done, maximize=True, min_trials=3, start_step=2
    )  # before start_step
    assert not local.median_stop(
        [0.1, 0.1], done[:2], maximize=True, min_trials=3, start_step=2
    )  # too few completed trials
    assert local.median_stop(
        [0.9, 0.9], [[0.5, 0.5]] * 3, maximize=False, min_trials=3, start_step=2
    )  # minimize


def scripted(tmp_path: Path, body: str, parameters: list[dict], **fields) -> spec.Experiment:
    """An Experiment whose trial is a small Python script (the runner's logic, not the model)."""
    script = tmp_path / "trial.py"
    script.write_text(textwrap.dedent(body))
    names = [p["name"] for p in parameters]
    doc = {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": "scripted"},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "score"},
            "algorithm": {"algorithmName": "grid"},
            "parallelTrialCount": 1,
            "maxTrialCount": 3,
            "maxFailedTrialCount": 3,
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [{"name": n, "reference": n} for n in names],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"template": {"spec": {"containers": [{
                        "name": "main",
                        "image": "unused-locally",
                        "command": ["python", str(script), *[f"${{trialParameters.{n}}}" for n in names]],
                    }]}}},
                },
            },
            **fields,
        },
    }  # fmt: skip
    return spec.parse(doc)


def test_failed_trial_budget_fails_the_experiment(tmp_path):
    exp = scripted(
        tmp_path,
        """
        import sys
        print("starting")
        sys.exit(3)
        """,
        [{"name": "q", "parameterType": "discrete", "feasibleSpace": {"list": ["1", "2", "3"]}}],
        maxFailedTrialCount=2,
    )
    seen = []
    with pytest.raises(
        spec.ExperimentError, match="2 failed trials reached maxFailedTrialCount 2"
    ) as err:
        local.LocalTuner(exp, progress=False, on_trial=seen.append).run()
    assert "exit code 3: starting" in str(err.value)
    assert [t.status for t in seen] == ["Failed", "Failed"]  # Katib's rule: fail at the budget


def test_trial_env_substitutes_placeholders_and_the_runner_wins(tmp_path):
    exp = scripted(
        tmp_path,
        """
        import os
        print(f"score={os.environ['Q_VALUE']}")
        print(f"f1={len(os.environ['FROM_RUNNER'])}")
        """,
        [{"name": "q", "parameterType": "discrete", "feasibleSpace": {"list": ["0.25"]}}],
        maxTrialCount=1,
    )
    container = exp.container
    container["env"] = [
        {"name": "Q_VALUE", "value": "${trialParameters.q}"},
        {"name": "FROM_RUNNER", "value": "template"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    result = local.LocalTuner(exp, env={"FROM_RUNNER": "runner!"}, progress=False).run()
    assert result.best.observation["score"] == pytest.approx(0.25)
    doc = copy.deepcopy(exp.raw)
    doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0][
        "env"
    ] = [{"name": "POD", "value": "${trialSpec.Name}"}]
    with pytest.raises(spec.ExperimentError, match="trialSpec.Name"):
        spec.parse(doc)


def test_an_interrupted_runner_leaves_no_trial_running(tmp_path):
    marker, finished = tmp_path / "pids", tmp_path / "finished"
    exp = scripted(
        tmp_path,
        f"""
        import os, time
        with open({str(marker)!r}, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        time.sleep(30)
        open({str(finished)!r}, "a").close()  # only a trial left running gets here
        """,
        [{"name": "q", "parameterType": "discrete", "feasibleSpace": {"list": ["1", "2"]}}],
        maxTrialCount=2,
        parallelTrialCount=2,
    )

    import os
    import signal
    import threading

    def started() -> list[int]:
        return [int(p) for p in marker.read_text().split()] if marker.exists() else []

    def stop_once_both_started():
        deadline = time.monotonic() + 120  # generous: a loaded machine starts Python slowly
        while len(started()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    threading.Thread(target=stop_once_both_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        local.LocalTuner(exp, progress=False).run()
    pids = started()
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "zombie" not in status.read_text().lower()
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]
    assert not finished.exists()  # killed, not waited for


def test_missing_objective_metric_is_a_failed_trial(tmp_path):
    exp = scripted(
        tmp_path,
        """
        import sys
        print("f1=0.5")
        print("score=oops")
        """,
        [{"name": "q", "parameterType": "discrete", "feasibleSpace": {"list": ["1"]}}],
        maxTrialCount=1,
    )
    result = local.LocalTuner(exp, progress=False).run()
    assert result.trials[0].status == "Failed"
    assert result.trials[0].detail == "no 'score' metric reported"
    with pytest.raises(spec.ExperimentError, match="no trial succeeded"):
        result.best_parameters()


CURVES = """
import sys, time
q = float(sys.argv[1])
for step in range(1, 6):
    print(f"2026-11-23T10:00:0{step}Z step={step} score={q * step / 5:.3f}", flush=True)
    time.sleep(0.05)
"""


def test_early_stopping_stops_the_worse_trial_and_the_best_wins(tmp_path):
    exp = scripted(
        tmp_path,
        CURVES,
        [
            {
                "name": "q",
                "parameterType": "discrete",
                "feasibleSpace": {"list": ["0.9", "0.8", "0.7", "0.1"]},
            }
        ],
        maxTrialCount=4,
        # this seed makes the grid try 0.1 last, after three better curves completed
        algorithm={
            "algorithmName": "grid",
            "algorithmSettings": [{"name": "random_state", "value": "5"}],
        },
        earlyStopping={
            "algorithmName": "medianstop",
            "algorithmSettings": [
                {"name": "min_trials_required", "value": "2"},
                {"name": "start_step", "value": "2"},
            ],
        },
    )
    result = local.LocalTuner(exp, progress=False).run()
    assert [t.assignments["q"] for t in result.trials] == ["0.9", "0.8", "0.7", "0.1"]
    assert [t.status for t in result.trials] == [
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "EarlyStopped",
    ]
    assert len(result.trials[-1].reports["score"]) < 5  # stopped before its last report
    assert result.best.assignments["q"] == "0.9"
    assert result.best.observation["score"] == pytest.approx(0.9)


def test_goal_reached_stops_launching(tmp_path):
    exp = scripted(
        tmp_path,
        CURVES,
        [
            {
                "name": "q",
                "parameterType": "discrete",
                "feasibleSpace": {"list": ["1.0", "0.2", "0.3"]},
            }
        ],
        objective={"type": "maximize", "objectiveMetricName": "score", "goal": 0.1},
    )
    result = local.LocalTuner(exp, progress=False).run()
    assert result.status == "GoalReached" and len(result.trials) == 1


def test_parallel_trials_run_at_once(tmp_path):
    # each trial reports only once it has seen the other one running: trials run one after the
    # other would both fail, whatever the machine's speed
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    exp = scripted(
        tmp_path,
        f"""
        import os, sys, time
        open(os.path.join({str(arrived)!r}, sys.argv[1]), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir({str(arrived)!r})) < 2:
            if time.monotonic() > deadline:
                sys.exit("the other trial never started")
            time.sleep(0.05)
        print("score=1")
        """,
        [{"name": "q", "parameterType": "discrete", "feasibleSpace": {"list": ["1", "2"]}}],
        maxTrialCount=2,
        parallelTrialCount=2,
    )
    result = local.LocalTuner(exp, progress=False).run()
    assert [t.status for t in result.trials] == ["Succeeded", "Succeeded"]


# --- the cluster path, against the API's interface ---------------------------------------------


class FakeCustomObjects:
    """Records create calls and answers get with a scripted sequence of Experiment statuses."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.created = None
        self.deleted = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1beta1", "experiments")
        self.created = body
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name}, "status": status}


RUNNING = {"conditions": [{"type": "Running", "status": "True"}]}
SUCCEEDED = {
    "conditions": [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}],
    "currentOptimalTrial": {
        "parameterAssignments": [
            {"name": "learning_rate", "value": "0.05"},
            {"name": "max_iter", "value": "250"},
        ]
    },
}


def test_for_cluster_fills_the_trial_env_and_names_uniquely():
    exp = spec.parse(MANIFEST)
    env = {"MLSTACK_DATA_REPO": "https://git.example/churn.git", "MLSTACK_DATA_REV": "a" * 40,
           "MLSTACK_PARENT_RUN_ID": "r1", "EXTRA": "1"}  # fmt: skip
    a, b = cluster.for_cluster(exp, "team-ml", env), cluster.for_cluster(exp, "team-ml", env)
    assert cluster.for_cluster(exp, "", env)["metadata"]["namespace"] == "ml-training"  # the YAML's
    assert a["metadata"]["namespace"] == "team-ml"
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["metadata"]["name"].startswith("churn-tuning-")
    container = a["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["MLSTACK_DATA_REV"] == "a" * 40 and values["EXTRA"] == "1"
    assert values["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
    assert experiment_errors(a) == []
    assert MANIFEST["metadata"]["name"] == "churn-tuning"  # the parsed manifest is not modified


def test_run_in_cluster_polls_until_succeeded():
    api = FakeCustomObjects([RUNNING, RUNNING, SUCCEEDED])
    body = cluster.for_cluster(spec.parse(MANIFEST), "ns", {})
    slept = []
    best = cluster.run_in_cluster(
        body, timeout_seconds=100, api=api, poll_seconds=5, sleep=slept.append
    )
    assert best == {"learning_rate": "0.05", "max_iter": "250"}
    assert api.created is body and slept == [5, 5]
    assert api.deleted == []  # a finished Experiment stays, with its trials, for inspection


def test_run_in_cluster_failure_and_timeout_are_clear():
    body = cluster.for_cluster(spec.parse(MANIFEST), "ns", {})
    failed = {
        "conditions": [{"type": "Failed", "status": "True", "message": "too many failed trials"}]
    }
    with pytest.raises(StackError, match="failed: too many failed trials"):
        cluster.run_in_cluster(
            body, timeout_seconds=100, api=FakeCustomObjects([failed]), sleep=lambda s: None
        )
    with pytest.raises(StackError, match="did not finish in 30s"):
        cluster.run_in_cluster(
            body,
            timeout_seconds=30,
            api=FakeCustomObjects([RUNNING]),
            poll_seconds=10,
            sleep=lambda s: None,
        )


def test_no_cluster_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StackError, match="no Kubernetes cluster configured"):
        cluster.custom_objects_api()


def test_tune_refuses_an_unknown_backend():
    with pytest.raises(StackError, match="backend must be 'cluster' or 'local'"):
        run.tune(
            yaml.safe_dump(MANIFEST),
            backend="laptop",
            namespace="ns",
            tracking_uri="",
            experiment_name="e",
            repo=".",
            data_rev="HEAD",
            timeout_seconds=1,
        )
