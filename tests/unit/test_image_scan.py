"""The image workflow's vulnerability scan: every image's SBOM, at the path scripts/images.sh writes,
scanned by a pinned Trivy that fails on fixable HIGH and CRITICAL findings, before staging moves.

Trivy cannot run here (its database comes from the network): actionlint and zizmor lint the step
(tests/unit/test_manifests.py), this checks what it is given, and tests/integration/test_images.py
checks that the file it names is the SBOM of the built image."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from mlstack.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "build-images.yml"
SCRIPT = ROOT / "scripts" / "images.sh"
TRIVY = re.compile(r"^aquasecurity/trivy-action@[0-9a-f]{40}$")


def sbom_path_of_script(key: str) -> str:
    """Where scripts/images.sh writes image ``key``'s SBOM, read from its variables."""
    text = SCRIPT.read_text()
    state = re.search(r'^STATE="([^"]+)"', text, re.M).group(1)
    directory = re.search(r'^SBOM_DIR="([^"]+)"', text, re.M).group(1).replace("$STATE", state)
    pattern = re.search(r'local out="\$SBOM_DIR/(\$1[^"]*)"', text).group(1)
    return f"{directory}/{pattern.replace('$1', key)}"


def scan_errors(doc: dict) -> list[str]:
    """What keeps the workflow's scan from covering every image, failing on what it must, or
    gating staging."""
    errors = []
    job = doc["jobs"].get("scan")
    if job is None:
        return ["no scan job"]
    keys = job.get("strategy", {}).get("matrix", {}).get("image", [])
    if sorted(keys) != sorted(DEFAULTS.images):
        errors.append(f"scan matrix {keys}: want every image {sorted(DEFAULTS.images)}")
    if job.get("permissions") != {"contents": "read", "packages": "read"}:
        errors.append(f"scan permissions {job.get('permissions')}: want contents, packages: read")
    runs = " ".join(s.get("run", "") for s in job["steps"])
    if 'scripts/images.sh sbom "$KEY=$image"' not in runs:
        errors.append("no step makes the SBOM with scripts/images.sh sbom")
    trivy = [s for s in job["steps"] if TRIVY.match(str(s.get("uses", "")))]
    by_type = {s["with"].get("scan-type"): s["with"] for s in trivy}
    if set(by_type) != {"sbom", "image"}:
        errors.append(f"Trivy scan types {sorted(map(str, by_type))}: want sbom and image")
    for kind, settings in by_type.items():
        if set(str(settings.get("severity", "")).split(",")) != {"HIGH", "CRITICAL"}:
            errors.append(f"{kind}: severity {settings.get('severity')}")
        if str(settings.get("exit-code")) != "1" or settings.get("ignore-unfixed") is not True:
            errors.append(f"{kind}: must fail (exit-code 1) on fixable findings only")
    for key in keys:
        ref = str(by_type.get("sbom", {}).get("scan-ref", "")).replace("${{ matrix.image }}", key)
        if ref != sbom_path_of_script(key):
            errors.append(
                f"{key}: Trivy scans {ref}, scripts/images.sh writes {sbom_path_of_script(key)}"
            )
    needs = doc["jobs"]["bump-staging"].get("needs", [])
    if "scan" not in ([needs] if isinstance(needs, str) else needs):
        errors.append("bump-staging does not wait for the scan")
    return errors


def test_every_image_is_scanned_from_its_sbom_before_staging_moves():
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert scan_errors(doc) == []
    assert sbom_path_of_script("predictor") == ".mlstack/sbom/predictor.cdx.json"
    # edited copies: each weakening is found
    edits = {
        "matrix": lambda d: d["jobs"]["scan"]["strategy"]["matrix"]["image"].remove("mlflow"),
        "path": lambda d: next(
            s for s in d["jobs"]["scan"]["steps"] if s.get("with", {}).get("scan-type") == "sbom"
        )["with"].update({"scan-ref": "sbom/${{ matrix.image }}.json"}),
        "exit": lambda d: next(
            s for s in d["jobs"]["scan"]["steps"] if s.get("with", {}).get("scan-type") == "image"
        )["with"].pop("exit-code"),
        "gate": lambda d: d["jobs"]["bump-staging"].update({"needs": "build"}),
        "perms": lambda d: d["jobs"]["scan"]["permissions"].update({"packages": "write"}),
    }
    for name, edit in edits.items():
        edited = copy.deepcopy(doc)
        edit(edited)
        found = scan_errors(edited)
        # a wrong path is wrong for each of the images
        assert len(found) == (len(DEFAULTS.images) if name == "path" else 1), (name, found)
