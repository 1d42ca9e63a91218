"""One source of truth for the images' names and tags (mlstack/settings.py), and everything that
names them agrees: the compiled IR, the Katib trial, the rendered manifests, cluster-up and the
image workflow. A reference that disagrees fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from mlstack.settings import DEFAULTS, code_root
from tests.support.kube import render

ROOT = code_root()
IMAGES = DEFAULTS.images
REPOSITORIES = {key: image.rsplit(":", 1)[0] for key, image in IMAGES.items()}
# every image reference this repository owns, wherever it is written
OURS = re.compile("(" + "|".join(re.escape(r) for r in REPOSITORIES.values()) + r")([:@][\w.:-]+)")


def containers(node: object) -> list[dict]:
    """Every container (and init container) anywhere in a rendered object."""
    found: list[dict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict) and "image" in c]
            found += containers(value)
    elif isinstance(node, list):
        for item in node:
            found += containers(item)
    return found


def agrees(reference: str, key: str) -> bool:
    """The settings' name, or its repository pinned by digest (what a promotion writes)."""
    return reference == IMAGES[key] or bool(
        re.fullmatch(re.escape(REPOSITORIES[key]) + r"@sha256:[0-9a-f]{64}", reference)
    )


def rendered(path: str) -> list[dict]:
    return render(ROOT / path)


def image_of(docs: list[dict], kind: str, name: str, container: str) -> str:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            for c in containers(doc):
                if c["name"] == container:
                    return c["image"]
    raise AssertionError(f"no container {container} in {kind}/{name}")


def test_tags_follow_the_project_and_mlflow_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    mlflow = re.search(r"^mlflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert IMAGES["training"].endswith(f":{project}")
    assert IMAGES["predictor"].endswith(f":{project}")
    assert IMAGES["transformer"].endswith(f":{project}")
    assert IMAGES["mlflow"].endswith(f":{mlflow}")


def test_images_script_prints_the_settings_names():
    out = subprocess.run(
        ["scripts/images.sh", "names", "0123abc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = dict(line.split("=", 1) for line in out.splitlines())
    for key, image in IMAGES.items():
        assert printed[key] == image
        assert printed[f"{key}_sha"] == f"{REPOSITORIES[key]}:0123abc"


@pytest.mark.parametrize("ir", ["pipelines/training.yaml", "pipelines/tuning.yaml"])
def test_compiled_ir_runs_every_step_in_the_training_image(ir):
    spec = next(d for d in yaml.safe_load_all((ROOT / ir).read_text()) if "deploymentSpec" in d)
    executors = spec["deploymentSpec"]["executors"].values()
    images = {e["container"]["image"] for e in executors}
    assert images == {IMAGES["training"]}


def test_katib_trial_runs_the_training_image():
    experiment = yaml.safe_load((ROOT / "katib/experiment.yaml").read_text())
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]
    assert [c["image"] for c in containers(trial)] == [IMAGES["training"]]


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_inferenceservice_runs_the_predictor_image(overlay):
    docs = rendered(f"manifests/overlays/{overlay}")
    image = image_of(docs, "InferenceService", DEFAULTS.model_name, "kserve-container")
    assert agrees(image, "predictor"), image
    base = rendered("manifests/base")
    assert (
        image_of(base, "InferenceService", DEFAULTS.model_name, "kserve-container")
        == (IMAGES["predictor"])
    )
    transformer = isvc_transformer(docs)
    assert transformer == IMAGES["transformer"], transformer


def isvc_transformer(docs: list[dict]) -> str:
    """The image of the InferenceService's transformer container."""
    [isvc] = [d for d in docs if d["kind"] == "InferenceService"]
    [container] = isvc["spec"]["transformer"]["containers"]
    return str(container["image"])


def test_platform_and_monitoring_workloads_run_our_images():
    monitoring = rendered("manifests/monitoring")
    assert image_of(monitoring, "Deployment", "retrain-relay", "relay") == IMAGES["training"]
    platform = rendered("manifests/platform/base")
    assert image_of(platform, "Deployment", "mlflow", "mlflow") == IMAGES["mlflow"]
    dev = rendered("manifests/platform/dev")
    jobs = [d for d in dev if d["kind"] == "Job"]
    assert [c["image"] for c in containers(jobs)] == [IMAGES["training"]]
    assert image_of(dev, "StatefulSet", "feast-redis", "redis") == IMAGES["redis"]


def test_every_rendered_reference_to_our_images_agrees():
    paths = [
        "manifests/base",
        "manifests/overlays/staging",
        "manifests/overlays/production",
        "manifests/monitoring",
        "manifests/platform/base",
        "manifests/platform/dev",
    ]
    seen = set()
    for path in paths:
        for c in containers(rendered(path)):
            match = OURS.fullmatch(c["image"])
            if c["image"].startswith("ghcr.io/mlstack/"):
                assert match, f"{path}: {c['image']} is none of {sorted(IMAGES.values())}"
            if match:
                key = next(k for k, r in REPOSITORIES.items() if r == match.group(1))
                assert agrees(c["image"], key), f"{path}: {c['image']} != {IMAGES[key]}"
                seen.add(key)
    assert seen == set(IMAGES)


def test_no_file_names_another_tag_of_our_images():
    """Every tracked file outside tests/ that writes one of our repositories writes its tag."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    wrong = []
    for name in files:
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in OURS.finditer(text):
            reference = match.group(0)
            key = next(k for k, r in REPOSITORIES.items() if r == match.group(1))
            if not agrees(reference, key):
                wrong.append(f"{name}: {reference}")
    assert not wrong, wrong


def test_cluster_up_builds_and_loads_the_images_from_the_script():
    script = (ROOT / "scripts/cluster-up.sh").read_text()
    assert "scripts/images.sh" in script
    # no name of its own: the script's names, loaded into the kind node
    assert not re.search(r"ghcr\.io/", script)
    assert re.search(r"kind\S*\"? load docker-image", script, re.I)


def test_workflow_publishes_the_referenced_tag_and_the_sha_of_every_image():
    workflow = yaml.safe_load((ROOT / ".github/workflows/build-images.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    names = [s for s in steps if s.get("id") == "names"]
    assert names and "scripts/images.sh names" in names[0]["run"]
    builds = {
        s["with"]["file"]: s["with"]
        for s in steps
        if str(s.get("uses", "")).startswith("docker/build-push-action@")
    }
    dockerfiles = {
        "training": "components/Dockerfile",
        "predictor": "serving/Dockerfile",
        "transformer": "serving/transformer.Dockerfile",
        "mlflow": "manifests/platform/mlflow-image/Dockerfile",
        "redis": "manifests/platform/redis-image/Dockerfile",
    }
    assert set(dockerfiles) == set(IMAGES)
    assert set(builds) == set(dockerfiles.values())
    for key, dockerfile in dockerfiles.items():
        tags = {t.strip() for t in builds[dockerfile]["tags"].splitlines() if t.strip()}
        assert tags == {
            f"${{{{ steps.names.outputs.{key} }}}}",
            f"${{{{ steps.names.outputs.{key}_sha }}}}",
        }, (dockerfile, tags)
        assert builds[dockerfile]["push"] is True
    script = (ROOT / "scripts/images.sh").read_text()
    for key, dockerfile in dockerfiles.items():
        assert f"[{key}]={dockerfile}" in script
    # the bump job pins the predictor's digest in the same repository
    bump = workflow["jobs"]["bump-staging"]["env"]["IMAGE"]
    assert "needs.build.outputs.predictor_repository" in bump


def test_images_script_without_an_engine_says_what_to_do(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "python3"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        [str(bin_dir / "bash"), "scripts/images.sh", "engine"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
    )
    assert done.returncode != 0
    assert "no container engine" in done.stderr and "make tools" in done.stderr
