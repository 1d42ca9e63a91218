"""The images `make images` builds (scripts/images.sh) start and work as their non-root users."""

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from mlstack.settings import DEFAULTS
from tests.support.images import ROOT, Images, ensure_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images() -> Images:
    return ensure_images()


def inspect(images: Images, image: str, field: str) -> str:
    return subprocess.run(
        [images.engine, "image", "inspect", "--format", "{{" + field + "}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_names_are_the_settings_names(images):
    assert {key: getattr(images, key) for key in DEFAULTS.images} == DEFAULTS.images


@pytest.mark.parametrize("key", ["training", "predictor", "mlflow"])
def test_image_runs_as_its_non_root_user(images, key):
    image = getattr(images, key)
    assert inspect(images, image, ".Config.User") == "10001"
    done = images.run(
        image,
        "-c",
        "import os, pathlib; print(os.getuid(), pathlib.Path.home())",
        options=["--entrypoint", "python"],
    )
    assert done.returncode == 0, done.stderr
    uid, home = done.stdout.split()
    assert uid == "10001" and home.startswith("/home/")


def test_training_image_has_the_pipeline_stack_and_git(images):
    done = images.run(
        images.training,
        "python",
        "-c",
        "import mlstack, components, pipelines, kfp, dvc, mlflow, sklearn, kubernetes, optuna;"
        "print(kfp.__version__, dvc.__version__, mlflow.__version__)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.17.0", "3.67.1", "3.17.2"]
    git = images.run(images.training, "git", "--version")
    assert git.returncode == 0 and git.stdout.startswith("git version 2."), git.stderr


def test_predictor_image_starts_its_server_entrypoint(images):
    done = images.run(images.predictor, "--help")
    assert done.returncode == 0, done.stderr
    assert "--model_dir" in done.stdout and "--model_name" in done.stdout
    # the serving image is runtime only: no pipeline stack in it
    absent = images.run(
        images.predictor,
        "-c",
        "import kserve, mlstack, serving; import kfp",
        options=["--entrypoint", "python"],
    )
    assert absent.returncode != 0 and "No module named 'kfp'" in absent.stderr


# what the predictor never imports (issue 15): the platform's client and server stack
NOT_IN_PREDICTOR = ["mlflow", "pyarrow", "matplotlib", "sqlalchemy", "databricks", "alembic",
                    "flask", "ruamel", "PIL", "aiohttp", "grpc_tools"]  # fmt: skip
FOUND = """
import importlib.util, json, sys
print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]))
"""


def test_predictor_image_holds_only_what_serving_imports(images):
    done = images.run(
        images.predictor, "-c", FOUND, *NOT_IN_PREDICTOR, options=["--entrypoint", "python"]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # and what it does import is there: the server, the model loader, the engine
    present = images.run(
        images.predictor,
        "-c",
        FOUND,
        *["kserve", "skops", "sklearn", "onnxruntime", "yaml", "serving.surface"],
        options=["--entrypoint", "python"],
    )
    assert json.loads(present.stdout) == ["kserve", "skops", "sklearn", "onnxruntime", "yaml",
                                          "serving.surface"]  # fmt: skip


# an ONNX graph made here (Add of two float inputs), run by the image's onnxruntime: what is left
# of the package (its C-API library and offline tools removed, serving/Dockerfile) infers
ONNX_ADD = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.stdin.buffer.read(), providers=["CPUExecutionProvider"])
a = np.array([[1.0, 2.0]], dtype=np.float32)
print(session.run(None, {"a": a, "b": a})[0].tolist())
"""


def test_predictor_image_onnxruntime_runs_a_model(images):
    import onnx
    from onnx import TensorProto, helper

    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "ab"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", x, [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    done = subprocess.run(
        [images.engine, "run", "--rm", "-i", "--network", "none", "--entrypoint", "python",
         images.predictor, "-c", ONNX_ADD],
        input=model.SerializeToString(), capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == [[2.0, 4.0]]


def test_predictor_image_pip_check_misses_only_the_removed_requirements(images):
    scripts = ROOT / "scripts"
    done = images.run(
        images.predictor,
        "/opt/scripts/pip_check.py",
        "/opt/locks/predictor-overrides.txt",
        options=["--entrypoint", "python", "-v", f"{scripts}:/opt/scripts:ro",
                 "-v", f"{ROOT / 'locks'}:/opt/locks:ro"],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    accepted = sorted(re.findall(r"requires (\S+), which is not installed", done.stdout))
    assert accepted == ["aiohttp", "grpcio-tools", "pillow"]


def test_predictor_image_model_uri_without_mlflow_is_one_error_line(images):
    done = images.run(images.predictor, "--model_uri", "models:/churn-classifier@champion")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --model_uri needs MLflow's client, which the predictor image does not hold: "
        "give the downloaded model with --model_dir (KServe's storage initializer does), or run "
        "`mlstack serve` where the platform extra is installed"
    )


def test_mlflow_image_is_the_pinned_mlflow_with_its_drivers(images):
    done = images.run(images.mlflow, "--version")
    assert done.returncode == 0, done.stderr
    assert DEFAULTS.mlflow_image.rsplit(":", 1)[1] in done.stdout
    drivers = images.run(
        images.mlflow, "-c", "import psycopg2, boto3", options=["--entrypoint", "python"]
    )
    assert drivers.returncode == 0, drivers.stderr


# MLflow's sklearn loader on a model directory whose MLmodel names the pickle format: what an
# artifact that runs code at load looks like (the payload here is a harmless dict)
PICKLED_MODEL = """
import pathlib, pickle, tempfile
import mlflow.sklearn
from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION as allow
d = pathlib.Path(tempfile.mkdtemp())
(d / "model.pkl").write_bytes(pickle.dumps({"ran": True}))
(d / "MLmodel").write_text(
    "flavors:\\n  sklearn:\\n    pickled_model: model.pkl\\n"
    "    serialization_format: pickle\\n    sklearn_version: 1.9.1\\n"
)
print(allow.get())
try:
    print("loaded", mlflow.sklearn.load_model(str(d)))
except Exception as e:
    print("refused", type(e).__name__, str(e).splitlines()[0])
"""


# the predictor's one loader (no MLflow in that image) on the same kind of directory
PICKLED_MODEL_PROJECT_LOADER = """
import pathlib, pickle, tempfile
from mlstack.errors import StackError
from mlstack.train.artifacts import load_model
d = pathlib.Path(tempfile.mkdtemp())
(d / "model.pkl").write_bytes(pickle.dumps({"ran": True}))
(d / "MLmodel").write_text(
    "flavors:\\n  sklearn:\\n    pickled_model: model.pkl\\n"
    "    serialization_format: pickle\\n    sklearn_version: 1.9.1\\n"
)
try:
    print("loaded", load_model(d, None))
except StackError as e:
    print("refused", e)
"""


@pytest.mark.reliability("image-pickle-refused")
@pytest.mark.parametrize("key", ["training", "predictor", "mlflow"])
def test_image_refuses_to_unpickle_a_model(images, key):
    image = getattr(images, key)
    env = inspect(images, image, ".Config.Env")
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in env
    if key == "predictor":  # no MLflow to unpickle with; the project's loader refuses
        done = images.run(
            image, "-c", PICKLED_MODEL_PROJECT_LOADER, options=["--entrypoint", "python"]
        )
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout.strip()
            .splitlines()[-1]
            .endswith("serialization format 'pickle': only 'skops' is loaded, never pickle")
        )
        return
    done = images.run(image, "-c", PICKLED_MODEL, options=["--entrypoint", "python"])
    assert done.returncode == 0, done.stderr
    allowed, outcome = done.stdout.strip().splitlines()[-2:]
    assert allowed == "False"
    assert outcome.startswith("refused MlflowException Deserializing this model is disallowed")


def installed(images: Images, image: str) -> tuple[list[dict], set[tuple[str, str]]]:
    """``pip list --format=json`` in the image, and every distribution its interpreter's path
    holds (a shadowed base copy included), as (normalized name, version)."""
    listed = images.run(
        image, "-m", "pip", "list", "--format=json", options=["--entrypoint", "python"]
    )
    assert listed.returncode == 0, listed.stderr
    every = images.run(
        image,
        "-c",
        "import importlib.metadata as m, json;"
        "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()]))",
        options=["--entrypoint", "python"],
    )
    assert every.returncode == 0, every.stderr
    return json.loads(listed.stdout), {(norm(n), v) for n, v in json.loads(every.stdout)}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def workflow_sbom_path(key: str) -> Path:
    """The file the image workflow's Trivy step scans for image ``key``."""
    workflow = yaml.safe_load((ROOT / ".github/workflows/build-images.yml").read_text())
    job = workflow["jobs"]["scan"]
    assert key in job["strategy"]["matrix"]["image"]
    [trivy] = [s for s in job["steps"] if s.get("with", {}).get("scan-type") == "sbom"]
    return ROOT / trivy["with"]["scan-ref"].replace("${{ matrix.image }}", key)


def cyclonedx_errors(document: dict) -> list[str]:
    """The document checked against CycloneDX 1.6's JSON schema, as the SBOM tool scripts/images.sh
    installed (locks/sbom.txt) ships it: offline, every $ref resolved from those files."""
    schemas = {
        path.name: json.loads(path.read_text())
        for path in (ROOT / ".mlstack/sbom-tool/lib/cyclonedx/schema/_res").glob("*.schema.json")
    }
    registry = Registry().with_resources(
        (f"http://cyclonedx.org/schema/{name}", Resource.from_contents(s, DRAFT7))
        for name, s in schemas.items()
    )
    validator = jsonschema.Draft7Validator(
        schemas["bom-1.6.SNAPSHOT.schema.json"], registry=registry
    )
    return [error.message for error in validator.iter_errors(document)]


@pytest.mark.reliability("sbom-lists-installed")
@pytest.mark.parametrize("key", ["training", "predictor", "mlflow"])
def test_sbom_lists_exactly_what_the_image_has_installed(images, key):
    image = getattr(images, key)
    # what scripts/images.sh wrote with the build, where the workflow's Trivy step reads it
    path = workflow_sbom_path(key)
    sbom = json.loads(path.read_text())
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.6")
    assert cyclonedx_errors(sbom) == []
    broken = json.loads(json.dumps(sbom))
    broken["components"][0]["version"] = 1
    assert len(cyclonedx_errors(broken)) == 1
    components = {(norm(c["name"]), c["version"]) for c in sbom["components"]}
    # each with the PyPI package URL a scanner looks up (the project's own package, installed from
    # its source, is not on PyPI and has none)
    for c in sbom["components"]:
        purl = re.fullmatch(r"pkg:pypi/(.+)@(.+)", c.get("purl", ""))
        if purl is None:
            assert c["name"] == "mlstack", c
        else:
            assert (norm(purl[1]), purl[2]) == (norm(c["name"]), c["version"]), c
    listed, every = installed(images, image)
    # every package pip reports is in the SBOM at its version, and the SBOM names nothing the
    # image does not hold (the SBOM tool itself is not in it)
    assert {(norm(p["name"]), p["version"]) for p in listed} <= components
    assert components <= every
    assert not {n for n, _ in components} & {"cyclonedx-bom", "cyclonedx-python-lib"}
    # the locked closure is what is installed (and, in the project's images, the project)
    lock = (ROOT / "locks" / f"{key}.txt").read_text()
    pinned = {(norm(n), v) for n, v in re.findall(r"(?m)^([A-Za-z0-9][\w.-]*)==(\S+) \\$", lock)}
    assert pinned <= components
    if key != "mlflow":
        assert ("mlstack", "0.1.0") in components
    # a package installed after the SBOM was made is seen as missing from it
    stale = components - {next(iter(sorted(pinned)))}
    assert not {(norm(p["name"]), p["version"]) for p in listed} <= stale
