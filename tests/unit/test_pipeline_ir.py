"""The checked-in IR is what the pipeline definition compiles to, byte for byte."""

from pathlib import Path

import yaml

from mlstack.compile import compile_training, is_stale
from mlstack.settings import DEFAULTS, load_settings

IR = load_settings().ir_path


def test_checked_in_ir_is_fresh():
    assert not is_stale(IR), "pipelines/training.yaml is stale: run `mlstack pipeline compile`"


def test_compile_is_deterministic(tmp_path: Path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    compile_training(a)
    compile_training(b)
    assert a.read_bytes() == b.read_bytes()


def test_stale_ir_is_detected(tmp_path: Path):
    copy = tmp_path / "training.yaml"
    copy.write_text(IR.read_text().replace("min_roc_auc", "min_auc", 1))
    assert is_stale(copy)


def test_ir_shape():
    spec = yaml.safe_load(IR.read_text())
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "validate", "train", "evaluate", "condition-1"}
    condition = root["condition-1"]["triggerPolicy"]["condition"]
    assert "evaluate-Output" in condition
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"register"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["min_roc_auc"]["defaultValue"] == DEFAULTS.gates.min_roc_auc
    assert not params["repo"].get("isOptional") and not params["data_rev"].get("isOptional")
    executors = spec["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {DEFAULTS.training_image}
    # the training image already has kfp: no pip install at step start
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors)
    text = IR.read_text()
    assert "/work/" not in text and "/tmp/" not in text
