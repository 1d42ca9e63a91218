"""The images this repository builds, for tests that run them.

``ensure_images()`` runs ``scripts/images.sh`` (what ``make images`` runs): the first call on a
machine builds them (the Debian stand-in base too when no registry is reachable: minutes), later
calls reuse the engine's layer cache (seconds) and so always test the working tree's code. Without
a container engine it fails with what to do; it never skips: CI must run the container tests.

    from tests.support.images import Images, ensure_images

    @pytest.fixture(scope="module")
    def images() -> Images:
        return ensure_images()          # or ensure_images("predictor")

    def test_x(images):
        subprocess.run([images.engine, "run", "--rm", images.predictor, "--help"], check=True)
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlstack.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "images.sh"
KEYS = tuple(DEFAULTS.images)  # training, predictor, transformer, mlflow, redis
# a cold build (stand-in base and three images) takes minutes; a loaded CI machine more
BUILD_TIMEOUT = 3600


@dataclass(frozen=True)
class Images:
    """The engine that built the images ("podman" or "docker") and their names (settings)."""

    engine: str
    training: str
    predictor: str
    transformer: str
    mlflow: str
    redis: str

    def run(
        self, image: str, *args: str, options: Sequence[str] = (), timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``<engine> run --rm <options> <image> <args>``, output captured as text."""
        return subprocess.run(
            [self.engine, "run", "--rm", *options, image, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def engine() -> str:
    """The engine scripts/images.sh uses here; fails the test when there is none."""
    if not (shutil.which("podman") or shutil.which("docker")):
        pytest.fail(
            "no container engine (podman or docker) on this machine: the container tests need "
            "one; `make tools` (as root) installs podman",
            pytrace=False,
        )
    done = subprocess.run([str(SCRIPT), "engine"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"scripts/images.sh engine: {done.stderr.strip()}", pytrace=False)
    return done.stdout.strip()


def _build(keys: tuple[str, ...]) -> None:
    """``scripts/images.sh build`` of ``keys``, one test process at a time (parallel workers share
    the engine's images, their SBOMs and this log): a second process finds the layers cached."""
    log = ROOT / ".mlstack" / "images-build.log"
    log.parent.mkdir(exist_ok=True)
    with (log.parent / "images-build.lock").open("w") as lock, log.open("a") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out.truncate(0)
        done = subprocess.run(
            [str(SCRIPT), "build", *keys],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
        )
        out.flush()
        tail = "\n".join(log.read_text().splitlines()[-30:])
    if done.returncode != 0:
        pytest.fail(
            f"scripts/images.sh build {' '.join(keys)} failed ({log}):\n{tail}", pytrace=False
        )


def ensure_images(*keys: str) -> Images:
    """Build the named images (all of them by default) once per test session and return the names.

    Each key is one of ``training``, ``predictor``, ``transformer``, ``mlflow``, ``redis``.
    """
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown image keys {sorted(unknown)}: use {list(KEYS)}")
    name = engine()
    wanted = tuple(k for k in KEYS if k in keys) if keys else KEYS
    # keys already built in this test session are not built again
    missing = tuple(k for k in wanted if k not in _session_built)
    if missing:
        _build(missing)
        _session_built.update(missing)
    return Images(engine=name, **DEFAULTS.images)


_session_built: set[str] = set()


@pytest.fixture(scope="session")
def images() -> Images:
    """All the images, built or reused: a fixture for modules that import it."""
    return ensure_images()
