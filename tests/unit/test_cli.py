from pathlib import Path

import pytest

from mlstack.cli import main
from mlstack.errors import StackError
from mlstack.pipeline.compile import parse_params
from mlstack.settings import load_settings
from tests.support.cli import run_cli

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
