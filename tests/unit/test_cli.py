import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from mlstack.cli import main, package_version
from mlstack.errors import StackError
from mlstack.pipeline.compile import parse_params
from mlstack.settings import code_root, environment_variables, load_settings
from tests.conftest import git
from tests.support.cli import cli_argv, run_cli
from tests.support.servers import stop

IR = load_settings().ir_path


def test_params_are_typed_by_the_pipeline_definition():
    got = parse_params(["max_iter=50", "learning_rate=0.2", "class_weight=none"], IR)
    assert got == {"max_iter": 50, "learning_rate": 0.2, "class_weight": "none"}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("bogus=1", "not a pipeline parameter"),
        ("max_iter=lots", "'lots' is not a int"),
        ("max_iter", "expected key=value"),
    ],
)
def test_bad_params_are_named(pair, message):
    with pytest.raises(StackError, match=message):
        parse_params([pair], IR)


def test_bad_param_on_the_command_line_is_one_line(tmp_path: Path):
    done = run_cli(
        "pipeline", "run", "--param", "bogus=1", env={"MLSTACK_STATE_DIR": str(tmp_path)}
    )
    assert done.returncode == 1
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert "--param bogus: not a pipeline parameter" in done.stderr


def test_generate_writes_a_valid_dataset(tmp_path: Path, capsys):
    out = tmp_path / "batch.csv"
    main(["data", "generate", str(out), "--rows", "300", "--seed", "4", "--drift"])
    assert "wrote 300 rows" in capsys.readouterr().out
    from mlstack.data.validate import validate_file

    assert validate_file(out)["rows"] == 300


def test_compile_check_passes_on_the_checked_in_ir():
    done = run_cli("pipeline", "compile", "--check")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_data_add_refuses_a_missing_file(data_repo: Path):
    done = run_cli("data", "add", "/nonexistent.csv", env={"MLSTACK_REPO_ROOT": str(data_repo)})
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no such file: /nonexistent.csv"


# --- first contact: each failure or fallback is one clear line ----------------------------------


def test_bootstrap_on_a_fresh_clone_prints_only_its_success_line(tmp_path: Path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(code_root()), str(clone))
    # as on a new machine: the default remote is a new, empty directory
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")],
        cwd=clone,
        check=True,
    )
    done = run_cli("data", "bootstrap", env={"MLSTACK_REPO_ROOT": str(clone)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no DVC warning about cache files missing from the empty remote
    assert done.stdout.count("\n") == 1 and "is in the DVC cache and on remote" in done.stdout


def test_serve_before_anything_is_registered_is_one_line(tmp_path: Path):
    done = run_cli("serve", env={"MLSTACK_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 1
    assert done.stderr.startswith("error: model 'churn-classifier' has no version with alias")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()  # nothing made by looking


def test_run_submit_without_an_endpoint_is_one_line():
    done = run_cli("run", "submit")
    assert done.returncode == 1
    assert (
        done.stderr
        == "error: run submit needs --endpoint, the KFP API (e.g. http://localhost:8080)\n"
    )


def test_schedules_plan_offline_without_an_endpoint():
    done = run_cli("schedules", "sync", "--dry-run")
    assert done.returncode == 0, done.stderr
    first, *plan = done.stdout.splitlines()
    assert first.startswith("offline plan (no --endpoint)")
    assert plan and all(line.startswith("+ create  ") for line in plan)
    data = json.loads(run_cli("schedules", "sync", "--dry-run", "-o", "json").stdout)
    assert data["offline"] and data["create"] and not data["delete"]
    refused = run_cli("schedules", "sync")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1


# --- conventions of the command line (kubectl, kfp, dvc alike) ------------------------------------


def test_version_and_bare_mlstack_prints_the_help_with_the_environment():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout == f"mlstack {package_version()}\n"
    bare = run_cli()
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("usage: mlstack")
    for name, default in environment_variables():
        assert f"{name}" in bare.stdout and default in bare.stdout
    serve = run_cli("serve", "--help")
    assert "(default: 8080)" in serve.stdout and "(default: champion)" in serve.stdout


def test_help_reads_no_settings_and_runs_no_git(tmp_path: Path):
    calls = tmp_path / "git-calls"
    stub = tmp_path / "bin" / "git"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    stub.chmod(0o755)
    env = {"MLSTACK_SPLIT_SEED": "abc", "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    for args in (["--help"], ["run", "submit", "--help"], ["pipeline", "run", "--help"]):
        done = run_cli(*args, env=env)
        assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr
    assert not calls.exists()


def test_a_bad_setting_is_one_line():
    done = run_cli(
        "root-app", "--repo-url", "x", "--revision", "y", env={"MLSTACK_SPLIT_SEED": "abc"}
    )
    assert done.returncode == 1
    assert done.stderr == "error: MLSTACK_SPLIT_SEED='abc': not a valid int\n"


def test_an_unexpected_error_is_one_line_and_its_traceback_comes_with_v(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a directory should be")
    out = str(blocker / "batch.csv")
    done = run_cli("data", "generate", out, "--rows", "10")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "a-file" in done.stderr and "-v" in done.stderr
    verbose = run_cli("-v", "data", "generate", out, "--rows", "10")
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr


def experiment_yaml(tmp_path: Path, body: str) -> Path:
    """A one-trial Katib Experiment whose trial is a small script (the CLI's behaviour, not the
    model's)."""
    script = tmp_path / "trial.py"
    script.write_text(textwrap.dedent(body))
    doc = yaml.safe_load(load_settings().katib_experiment.read_text())
    doc["spec"].update(maxTrialCount=1, parallelTrialCount=1)
    doc["spec"].pop("earlyStopping", None)
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    container["command"] = ["python", str(script)]
    doc["spec"]["trialTemplate"]["trialParameters"] = []
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_tune_output_into_a_pipe_has_no_ansi_or_carriage_returns(data_repo: Path, tmp_path: Path):
    exp = experiment_yaml(tmp_path, 'print("roc_auc=0.9 f1=0.5 average_precision=0.6")')
    env = {"MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(tmp_path / "state")}
    done = run_cli("tune", "--experiment", str(exp), env=env)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr and "\x1b[" not in done.stdout + done.stderr
    assert "trial 1/1 Succeeded roc_auc=0.9000" in done.stderr  # progress, one line per trial
    assert "best trial" in done.stdout
    data = json.loads(run_cli("tune", "--experiment", str(exp), "-o", "json", env=env).stdout)
    assert data["status"] == "Succeeded" and data["best"]["observation"]["roc_auc"] == 0.9


def test_ctrl_c_is_one_line_and_leaves_no_trial(data_repo: Path, tmp_path: Path):
    marker = tmp_path / "trial-pid"
    exp = experiment_yaml(
        tmp_path,
        f"""
        import os, time
        with open({str(marker)!r}, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(600)
        """,
    )
    env = {**os.environ, "MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        cli_argv("tune", "--experiment", str(exp)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180  # generous: a loaded machine starts Python slowly
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        trial = int(marker.read_text())
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 130
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    deadline = time.monotonic() + 60
    while Path(f"/proc/{trial}").exists() and time.monotonic() < deadline:
        if "zombie" in Path(f"/proc/{trial}/status").read_text().lower():
            break
        time.sleep(0.1)
    status = Path(f"/proc/{trial}/status")
    assert not status.exists() or "zombie" in status.read_text().lower()


def test_bash_completion_completes_commands_and_options(tmp_path: Path):
    done = run_cli("completion", "bash", env={"MLSTACK_SPLIT_SEED": "abc"})  # no settings read
    assert done.returncode == 0, done.stderr
    script = tmp_path / "mlstack.bash"
    script.write_text(done.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _mlstack; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert complete("mlstack", "pro") == ["promote"]
    assert complete("mlstack", "run", "submit", "--e") == ["--endpoint", "--experiment"]
    assert "--dry-run" in complete("mlstack", "promote", "--")
    assert complete("mlstack", "pipeline", "") == ["-h", "--help", "compile", "run", "check-data"]
