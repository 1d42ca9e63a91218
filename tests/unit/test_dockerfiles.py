"""The images' Dockerfiles: hadolint clean, pinned base, non-root; and hadolint really checks."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    ROOT / "components" / "Dockerfile",
    ROOT / "serving" / "Dockerfile",
    ROOT / "manifests" / "platform" / "mlflow-image" / "Dockerfile",
]
STAND_IN = ROOT / "scripts" / "base" / "Dockerfile"
HADOLINT = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean_pinned_and_non_root(path: Path):
    done = subprocess.run([HADOLINT, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = path.read_text()
    # the base is a build argument (scripts/images.sh passes a stand-in where no registry is
    # reachable) whose default is the pinned upstream image
    assert set(re.findall(r"^FROM (\S+)", text, re.M)) == {"${BASE_IMAGE}"}
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")


def test_stand_in_base_is_hadolint_clean_and_pinned():
    done = subprocess.run([HADOLINT, str(STAND_IN)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # Debian's own Python, the minor version the upstream base pins
    upstream = {
        re.search(r"^ARG BASE_IMAGE=python:(\d+\.\d+)\.", p.read_text(), re.M).group(1)
        for p in DOCKERFILES
    }
    assert upstream == {"3.11"}
    assert "python3=3.11.*" in STAND_IN.read_text()


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y git\nRUN cd /app\n"
    )
    done = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3009", "DL3003"):
        assert rule in done.stdout
