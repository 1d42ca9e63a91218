"""The checked-in IR is what the pipeline definitions compile to, byte for byte."""

from pathlib import Path

import pytest
import yaml

from mlstack.pipeline.compile import compile_all, compile_pipeline, read_ir, stale
from mlstack.settings import DEFAULTS, load_settings

IR = load_settings().ir_path
TUNING_IR = load_settings().tuning_ir_path


def test_checked_in_ir_is_fresh():
    assert stale() == [], "stale IR: run `mlstack pipeline compile`"


def test_compile_is_deterministic(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    compile_all(a)
    compile_all(b)
    for name in ("training.yaml", "tuning.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_stale_ir_is_detected(tmp_path: Path):
    compile_all(tmp_path)
    copy = tmp_path / "training.yaml"
    copy.write_text(copy.read_text().replace("min_roc_auc", "min_auc", 1))
    assert stale(tmp_path) == ["training.yaml"]


def test_training_ir_shape():
    spec, _ = read_ir(IR)
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


def test_evaluate_and_register_never_come_from_the_cache_and_validate_gets_the_split():
    for ir in (IR, TUNING_IR):
        spec, _ = read_ir(ir)
        root = spec["root"]["dag"]["tasks"]
        register = spec["components"]["comp-condition-1"]["dag"]["tasks"]["register"]
        assert not root["evaluate"]["cachingOptions"].get("enableCache")
        assert not register["cachingOptions"].get("enableCache")
        assert root["train"]["cachingOptions"]["enableCache"] is True
        validate = root["validate"]["inputs"]["parameters"]
        for name in ("test_size", "split_seed"):
            assert validate[name] == {"componentInputParameter": name}


def test_tuning_ir_feeds_the_best_parameters_to_train():
    spec, _ = read_ir(TUNING_IR)
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "validate", "tune", "train", "evaluate", "condition-1"}
    train_inputs = root["train"]["inputs"]["parameters"]
    for name in ("learning_rate", "max_iter", "max_depth", "l2_regularization", "class_weight"):
        assert train_inputs[name]["taskOutputParameter"] == {
            "outputParameterKey": name,
            "producerTask": "tune",
        }
    params = spec["root"]["inputDefinitions"]["parameters"]
    experiment = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    assert yaml.safe_load(params["experiment_yaml"]["defaultValue"]) == experiment
    assert params["tune_backend"]["defaultValue"] == "cluster"


def test_compile_one(tmp_path: Path):
    compile_pipeline("tuning.yaml", tmp_path / "tuning.yaml")
    assert (tmp_path / "tuning.yaml").read_bytes() == TUNING_IR.read_bytes()


def test_ingest_reads_the_clusters_dvc_and_git_secrets_as_optional_env():
    from pipelines.common import DVC_SECRET_KEYS, GIT_SECRET_KEYS

    for ir in (IR, TUNING_IR):
        _, platform = read_ir(ir)
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        [(name, spec)] = executors.items()
        assert name == "exec-ingest"
        secrets = {s["secretName"]: s for s in spec["secretAsEnv"]}
        assert set(secrets) == {DEFAULTS.dvc_secret, DEFAULTS.git_secret, DEFAULTS.feast_secret}
        for secret_name, keys in ((DEFAULTS.dvc_secret, DVC_SECRET_KEYS),
                                  (DEFAULTS.git_secret, GIT_SECRET_KEYS)):  # fmt: skip
            secret = secrets[secret_name]
            assert secret["optional"] is True
            assert {k["secretKey"]: k["envVar"] for k in secret["keyToEnv"]} == {k: k for k in keys}


@pytest.mark.parametrize("ir_name", ["training.yaml", "tuning.yaml", "materialize.yaml"])
def test_feature_store_steps_get_the_clusters_feast_config_secret_and_state_dir(ir_name: str):
    """On a cluster the ingest and materialize steps open the cluster's Feast stores: the
    feast-store Secret's keys (required), the ConfigMap's config path and state directory, an
    emptyDir there. All platform config, which kfp.local ignores: no container env in the IR, so
    the local runners keep the embedded default."""
    from mlstack.settings import code_root
    from pipelines.common import FEAST_SECRET_KEYS, STATE_DIR, STEPS_CONFIG_KEYS

    spec, platform = read_ir(code_root() / "pipelines" / ir_name)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    [name] = executors
    assert name == ("exec-materialize" if ir_name == "materialize.yaml" else "exec-ingest")
    step = executors[name]
    [feast] = [s for s in step["secretAsEnv"] if s["secretName"] == DEFAULTS.feast_secret]
    assert feast["optional"] is False
    assert {k["secretKey"]: k["envVar"] for k in feast["keyToEnv"]} == {
        k: k for k in FEAST_SECRET_KEYS
    }
    [config_map] = step["configMapAsEnv"]
    assert config_map["configMapName"] == DEFAULTS.steps_config_map
    assert {k["configMapKey"]: k["envVar"] for k in config_map["keyToEnv"]} == {
        k: k for k in STEPS_CONFIG_KEYS
    }
    assert step["emptyDirMounts"] == [{"mountPath": STATE_DIR, "volumeName": "mlstack-state"}]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]
