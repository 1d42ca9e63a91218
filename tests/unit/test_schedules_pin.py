"""pipelines/schedules.yaml pins each recurring run to the pipeline as committed at a git SHA
(`mlstack schedules sync` uploads the IR at that commit as the pipeline version). A pin whose IR
is not the checked-in one runs an older pipeline on the cluster (the one pinned before this check
read data without the ingest step's DVC Secret): this fails until the pin is bumped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from mlstack.pipeline import remote
from mlstack.settings import code_root

ROOT = code_root()
SCHEDULES = ROOT / "pipelines" / "schedules.yaml"


def stale_pins(repo: Path, schedules: Path) -> list[str]:
    """The schedules whose pinned commit's IR differs from the checked-in IR (or is missing)."""
    _, declared = remote.load_schedules(schedules)
    stale = []
    for s in declared:
        path = f"pipelines/{s.pipeline}"
        done = subprocess.run(
            ["git", "-C", str(repo), "show", f"{s.git_sha}:{path}"], capture_output=True
        )
        if done.returncode != 0 or done.stdout != (repo / path).read_bytes():
            newest = subprocess.run(
                ["git", "-C", str(repo), "log", "-1", "--format=%H", "--", path],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            stale.append(
                f"{s.name}: git_sha {s.git_sha[:12]} has another {path} than the checked-in one "
                f"(commit the IR, then pin the commit that last changed it, {newest or 'HEAD'})"
            )
    return stale


def test_every_schedule_pins_the_checked_in_pipeline():
    assert stale_pins(ROOT, SCHEDULES) == []


@pytest.mark.reliability("ct-stale-schedule-pin")
def test_a_pin_behind_the_pipeline_is_found(tmp_path):
    # the pin this check replaced: a commit whose IR read data without the ingest step's Secret
    doc = yaml.safe_load(SCHEDULES.read_text())
    doc["schedules"][0]["git_sha"] = "a4fb0b1d9fddc6d0e5373f7a8cef2f2784bc9ace"
    old = tmp_path / "schedules.yaml"
    old.write_text(yaml.safe_dump(doc))
    [problem] = stale_pins(ROOT, old)
    assert problem.startswith(
        "weekly-retrain: git_sha a4fb0b1d9fdd has another pipelines/training.yaml"
    )
    done = subprocess.run(
        ["git", "-C", str(ROOT), "show", "a4fb0b1d9fddc6d0e5373f7a8cef2f2784bc9ace:pipelines/training.yaml"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (
        "secretAsEnv" not in done.stdout
        and "secretAsEnv" in (ROOT / "pipelines/training.yaml").read_text()
    )
