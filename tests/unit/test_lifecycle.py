"""Acting on a canary's verdict through git: `mlstack rollout promote|rollback` on a real git
repository holding a copy of the manifests and a real sqlite MLflow store (v1 the bootstrap
champion, v2 a challenger in a production canary). Kills are real SIGKILLs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlstack.deploy import lifecycle, promote
from mlstack.errors import StackError
from mlstack.settings import code_root
from mlstack.train.training import TrainingLineage
from tests.conftest import git
from tests.support.cli import run_cli
from tests.support.servers import two_releases

MODEL = "churn-lifecycle"
LINEAGE = TrainingLineage("md5-lc", "data/churn.csv", "d" * 40, "kfp-run-l", "churn-training-l")
PROD = "manifests/overlays/production/promotion.yaml"


@dataclass(frozen=True)
class Store:
    db: Path  # the sqlite file with v1 @champion, v2 @challenger (copied for each test)
    releases: dict[str, promote.Release]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Two versions registered by the pipeline's own train, evaluate and register, once."""
    root = tmp_path_factory.mktemp("lifecycle")
    # the same parameters: v2 ties v1, and a tie passes
    uri, releases = two_releases(root, model=MODEL, lineage=LINEAGE, experiment="lifecycle")
    return Store(Path(uri.removeprefix("sqlite:///")), releases)


@dataclass(frozen=True)
class World:
    uri: str
    manifests: Path
    repo: Path
    stable_sha: str  # v1 at 100 %
    canary_sha: str  # v2 at 10 %

    @property
    def overlay(self) -> Path:
        return self.repo / PROD

    def text_at(self, sha: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), "show", f"{sha}:{PROD}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    def alias(self, alias: str) -> str | None:
        try:
            return str(MlflowClient(self.uri).get_model_version_by_alias(MODEL, alias).version)
        except MlflowException:
            return None

    def tags(self, version: str) -> dict[str, str]:
        return dict(MlflowClient(self.uri).get_model_version(MODEL, version).tags)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"MLFLOW_TRACKING_URI": self.uri, "MLSTACK_MODEL_NAME": MODEL}
        return run_cli(*args, "--env", "production", "--manifests", str(self.manifests), env=env)


@pytest.fixture
def world(store: Store, tmp_path: Path) -> World:
    """A copy of the store, and a git repository whose production overlay went v1 at 100 % then
    v2 as a 10 % canary, each a commit."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(store.db, db)
    manifests = gitops_repo(tmp_path / "gitops")
    repo = manifests.parent
    promote.promote(manifests, "production", store.releases["1"], canary=100)
    git(repo, "commit", "-qam", "promote v1 to production")
    stable = git(repo, "rev-parse", "HEAD")
    promote.promote(manifests, "production", store.releases["2"], canary=10)
    git(repo, "commit", "-qam", "promote v2 to production: 10 % canary")
    return World(f"sqlite:///{db}", manifests, repo, stable, git(repo, "rev-parse", "HEAD"))


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.slow  # MLflow-backed: a trained store (once per module) and the command line
def test_promote_commits_the_overlay_at_100_then_moves_the_champion(world: World):
    assert (world.alias("champion"), world.alias("challenger")) == ("1", "2")
    assert world.tags("1")["champion.bootstrap"] == "true"  # the first version: no canary
    done = world.cli("rollout", "promote", "--allow-local-storage", "-o", "json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["committed"] and out["recorded"] and out["pending"] == ""
    head = world.head()
    assert out["commit"] == head and git(world.repo, "rev-parse", "HEAD~1") == world.canary_sha
    assert git(world.repo, "show", "--name-only", "--format=", "HEAD") == PROD  # that path only
    assert git(world.repo, "status", "--porcelain") == ""
    assert lifecycle.overlay_state(world.overlay.read_text(), world.overlay) == (
        lifecycle.OverlayState("2", 100)
    )
    # the only change against the canary: the share (the version's fields were already there)
    assert [
        line
        for line in git(world.repo, "diff", world.canary_sha, "HEAD").splitlines()
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ] == ["-  value: 10", "+  value: 100"]
    assert (world.alias("champion"), world.alias("previous")) == ("2", "1")
    tags = world.tags("2")
    assert tags["champion.commit"] == head and tags["champion.canary_commit"] == world.canary_sha
    assert "mlstack rollout" in tags["champion.by"] and tags["champion.at"].endswith("Z")
    assert world.tags("1")["retired.commit"] == head
    # again: nothing changes (no commit, no tag rewritten)
    again = promote_fn(world)
    assert not (again.overlay_changed or again.committed or again.recorded)
    assert world.head() == head and world.tags("2") == tags


def promote_fn(world: World, **kw: object) -> lifecycle.Outcome:
    return lifecycle.promote_canary(
        world.manifests, "production", model_name=MODEL, tracking_uri=world.uri, actor="test",
        allow_local_storage=True, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def rollback_fn(world: World, **kw: object) -> lifecycle.Outcome:
    return lifecycle.rollback_canary(
        world.manifests, "production", model_name=MODEL, tracking_uri=world.uri, actor="test",
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.reliability("rolled-back-promote")
def test_rollback_reverts_the_canary_keeps_the_champion_and_blocks_a_later_promote(world: World):
    done = rollback_fn(world, reason="p99 latency over its limit")
    assert (done.version, done.other_version, done.committed) == ("2", "1", True)
    head = world.head()
    assert world.overlay.read_text() == world.text_at(world.stable_sha)  # the revert
    assert git(world.repo, "show", "--name-only", "--format=", "HEAD") == PROD
    assert "Mlstack-Rolled-Back-Version: 2" in git(world.repo, "show", "-s", "--format=%B")
    assert world.alias("champion") == "1" and world.alias("previous") is None
    tags = world.tags("2")
    assert tags["rolled_back"] == "true" and tags["rolled_back.commit"] == head
    assert tags["rolled_back.reason"] == "p99 latency over its limit"
    again = rollback_fn(world)
    assert not (again.overlay_changed or again.committed or again.recorded)
    assert world.head() == head and world.tags("2") == tags
    # promoting it again is refused in one line (the command line), unless forced
    line = one_error(
        world.cli("promote", "--version", "2", "--canary", "10", "--allow-local-storage")
    )
    assert line.startswith(f"error: refusing to promote {MODEL} v2: it was rolled back (commit ")
    assert line.endswith("p99 latency over its limit); pass --force to promote it anyway")
    assert git(world.repo, "status", "--porcelain") == ""
    release = promote.resolve_release(
        MODEL, "2", tracking_uri=world.uri, allow_local_storage=True, force=True
    )
    promote.promote(world.manifests, "production", release, canary=10)
    git(world.repo, "commit", "-qam", "v2 again, forced")
    with pytest.raises(StackError, match="it was rolled back"):
        promote_fn(world)
    assert world.alias("champion") == "1"
    assert promote_fn(world, force=True).recorded
    assert world.alias("champion") == "2" and world.tags("2")["champion.forced"] == "true"


@pytest.mark.slow
def test_without_commit_the_champion_moves_only_once_the_overlay_is_committed(world: World):
    first = promote_fn(world, commit=False)
    assert first.overlay_changed and not first.committed and first.pending.startswith("commit ")
    assert world.head() == world.canary_sha and world.alias("champion") == "1"
    git(world.repo, "commit", "-qam", "merge the promotion pull request")
    second = promote_fn(world, commit=False)
    assert second.recorded and second.commit == world.head() and second.pending == ""
    assert (world.alias("champion"), world.alias("previous")) == ("2", "1")


@pytest.mark.slow
def test_a_rollback_written_but_not_committed_is_finished_by_the_next_run(world: World):
    first = rollback_fn(world, commit=False)  # as a run killed between its write and its commit
    assert first.overlay_changed and first.pending and world.head() == world.canary_sha
    assert world.overlay.read_text() == world.text_at(world.stable_sha)
    assert "rolled_back" not in world.tags("2")  # MLflow never ahead of git
    second = rollback_fn(world)
    assert (
        second.committed
        and second.recorded
        and (second.version, second.other_version)
        == (
            "2",
            "1",
        )
    )
    assert world.text_at("HEAD") == world.text_at(world.stable_sha)
    assert world.tags("2")["rolled_back.commit"] == world.head()
    assert git(world.repo, "status", "--porcelain") == ""


@pytest.mark.slow
@pytest.mark.reliability("champion-without-canary")
def test_a_version_put_at_100_without_a_canary_does_not_become_champion(world: World):
    git(world.repo, "update-ref", "HEAD", world.stable_sha)
    git(world.repo, "checkout", "-q", "HEAD", "--", ".")
    release = promote.resolve_release(MODEL, "2", tracking_uri=world.uri, allow_local_storage=True)
    promote.promote(world.manifests, "production", release, canary=100)
    git(world.repo, "commit", "-qam", "v2 straight to 100 %")
    with pytest.raises(StackError, match=f"refusing to make {MODEL} v2 the champion: it reached"):
        promote_fn(world)
    assert world.alias("champion") == "1" and "champion.commit" not in world.tags("2")


def gitops_repo(root: Path) -> Path:
    """A git repository holding a copy of the manifests, committed; its manifests directory."""
    shutil.copytree(code_root() / "manifests", root / "manifests")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", ".")
    git(root, "commit", "-qm", "manifests")
    return root / "manifests"


def test_commit_path_commits_that_path_only_and_nothing_when_unchanged(
    tmp_path: Path,
):
    manifests = gitops_repo(tmp_path / "gitops")
    repo = manifests.parent
    overlay = promote.overlay_file(manifests, "production")
    promote.edit(overlay, {promote.MODEL_VERSION: "7"})
    (repo / "README.md").write_text("staged, not ours\n")
    git(repo, "add", "README.md")
    before = git(repo, "rev-parse", "HEAD")
    sha = lifecycle.commit_path(repo, PROD, "rollout: test\n\nMlstack-Promoted-Version: 7\n")
    assert git(repo, "rev-parse", "HEAD") == sha and git(repo, "rev-parse", "HEAD~1") == before
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == PROD
    assert git(repo, "status", "--porcelain") == "A  README.md"  # still staged, not committed
    assert lifecycle.commit_path(repo, PROD, "again") == ""  # nothing to commit: no commit
    assert git(repo, "rev-parse", "HEAD") == sha


def test_a_run_killed_between_its_commit_and_the_index_leaves_an_index_the_next_run_repairs(
    tmp_path: Path,
):
    """commit_path moves the branch, then the repository's index; a kill in between leaves HEAD
    and the work tree at the new text and the index at the old one (`git status`: MM). The next
    promote or rollback run puts the entry back to HEAD's; a change someone staged is left."""
    manifests = gitops_repo(tmp_path / "gitops")
    repo = manifests.parent
    overlay = promote.overlay_file(manifests, "production")
    old = git(repo, "ls-files", "--stage", "--", PROD).split()
    promote.edit(overlay, {promote.MODEL_VERSION: "7"})
    lifecycle.commit_path(repo, PROD, "rollout: test\n")
    git(repo, "update-index", "--cacheinfo", f"{old[0]},{old[1]},{PROD}")  # the killed state
    assert git(repo, "status", "--porcelain") == f"MM {PROD}"
    assert lifecycle.repair_index(repo, PROD)
    assert git(repo, "status", "--porcelain") == ""
    assert not lifecycle.repair_index(repo, PROD)  # nothing left to repair
    # someone's own staged change of the file (not HEAD's parent's text) is theirs
    promote.edit(overlay, {promote.MODEL_VERSION: "8"})
    git(repo, "add", PROD)
    promote.edit(overlay, {promote.MODEL_VERSION: "7"})
    assert not lifecycle.repair_index(repo, PROD)
    assert git(repo, "status", "--porcelain") == f"MM {PROD}"


def test_refusals_before_anything_is_written(tmp_path: Path):
    manifests = gitops_repo(tmp_path / "gitops")
    uri = "sqlite:///nowhere/mlflow.db"  # never reached: each refusal comes first
    kw = {"model_name": MODEL, "tracking_uri": uri, "actor": "test"}
    with pytest.raises(StackError, match="has no canary share"):
        lifecycle.promote_canary(manifests, "staging", **kw)  # type: ignore[arg-type]
    with pytest.raises(StackError, match="holds no registered model version"):
        lifecycle.promote_canary(manifests, "production", **kw)  # type: ignore[arg-type]
    with pytest.raises(StackError, match="nothing to roll back: .* holds no canary"):
        lifecycle.rollback_canary(manifests, "production", **kw)  # type: ignore[arg-type]
    # a canary of the very first production version: nothing before it to go back to
    overlay = promote.overlay_file(manifests, "production")
    promote.edit(overlay, {promote.MODEL_VERSION: "2", promote.CANARY: 10})
    with pytest.raises(StackError, match="held no registered model version before v2"):
        lifecycle.rollback_canary(manifests, "production", **kw)  # type: ignore[arg-type]
    loose = tmp_path / "loose"
    shutil.copytree(code_root() / "manifests", loose)
    with pytest.raises(StackError, match="not in a git repository"):
        lifecycle.rollback_canary(loose, "production", **kw)  # type: ignore[arg-type]
    assert git(manifests.parent, "status", "--porcelain") == "M " + PROD  # only the test's edit


# --- SIGKILL at random moments ------------------------------------------------------------------

_RUN = """
import sys
from pathlib import Path
import mlflow.artifacts  # the imports first: the kill is to land in the call
from mlflow import MlflowClient
from mlstack.deploy import lifecycle, policy
manifests, uri, action = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print("started", flush=True)
if action == "promote":
    lifecycle.promote_canary(manifests, "production", model_name=sys.argv[4], tracking_uri=uri,
                             actor="killed", allow_local_storage=True)
else:
    lifecycle.rollback_canary(manifests, "production", model_name=sys.argv[4], tracking_uri=uri,
                              actor="killed")
print("done", flush=True)
"""


def _timed_run(world: World, action: str) -> tuple[float, float]:
    """Seconds one uninterrupted run of the call takes here (imports excluded), and when in it
    the branch moved (the commit): the kills are timed on both sides of it."""
    ref = world.repo / ".git" / "refs" / "heads" / "main"
    before = ref.read_text()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(world.manifests), world.uri, action, MODEL],
        stdout=subprocess.PIPE, text=True, cwd=code_root(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    start, committed_at = time.monotonic(), None
    while proc.poll() is None:
        if committed_at is None and ref.read_text() != before:
            committed_at = time.monotonic() - start
        time.sleep(0.01)
    took = time.monotonic() - start
    assert proc.stdout.read() == "done\n" and proc.returncode == 0
    proc.stdout.close()
    assert committed_at is not None
    return took, committed_at


def _kill_at_random(world: World, action: str, delay: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(world.manifests), world.uri, action, MODEL],
        stdout=subprocess.PIPE, text=True, cwd=code_root(), start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)  # the Python process only, as a kill -9 would
        proc.wait(timeout=60)
        proc.stdout.close()
    deadline = time.monotonic() + 60  # a git child it started finishes its one step
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def _reset(world: World) -> None:
    """Back to the canary, committed; v1 @champion; no @previous; no tags of a move."""
    git(world.repo, "update-ref", "HEAD", world.canary_sha)
    git(world.repo, "checkout", "-q", "HEAD", "--", ".")
    world.overlay.write_text(world.text_at(world.canary_sha))
    git(world.repo, "update-index", "--refresh")
    client = MlflowClient(world.uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    with contextlib.suppress(MlflowException):
        client.delete_registered_model_alias(MODEL, "previous")
    for version in ("1", "2"):
        for key in world.tags(version):
            if key.startswith(("champion.commit", "champion.canary", "champion.by", "retired.")):
                client.delete_model_version_tag(MODEL, version, key)
            if key.startswith("rolled_back"):
                client.delete_model_version_tag(MODEL, version, key)


@pytest.mark.slow
@pytest.mark.reliability("killed-rollout")
@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_a_killed_rollout_leaves_old_or_new_and_a_rerun_finishes_it(world: World, action: str):
    stable, canary = world.text_at(world.stable_sha), world.text_at(world.canary_sha)
    assert canary.count("  value: 10\n") == 1
    promoted = canary.replace("  value: 10\n", "  value: 100\n")
    rng = random.Random(23 if action == "promote" else 29)
    seen = set()
    took, committed_at = _timed_run(world, action)  # as long as it takes on this machine now
    for i in range(8):
        _reset(world)
        # every other kill before the commit (the overlay's write, the policy checks), the others
        # after it (the tags and aliases) or just after the end
        delay = rng.uniform(0, committed_at) if i % 2 else rng.uniform(committed_at, took * 1.1)
        _kill_at_random(world, action, delay)
        head_text = world.text_at("HEAD")
        work = world.overlay.read_text()
        champion = world.alias("champion")
        if action == "promote":
            assert head_text in {canary, promoted} and work in {canary, promoted}
            assert champion in {"1", "2"}
            if champion == "2":  # the alias never runs ahead of git
                assert world.head() != world.canary_sha
                assert lifecycle.overlay_state(head_text, world.overlay).canary == 100
            seen.add((world.head() != world.canary_sha, champion))
        else:
            assert head_text in {canary, stable} and work in {canary, stable}
            assert champion == "1"
            if world.tags("2").get("rolled_back") == "true":  # never ahead of git
                assert head_text == stable
            seen.add((head_text == stable, world.tags("2").get("rolled_back")))
        # the rerun finishes it: one commit after the canary, MLflow recorded
        if action == "promote":
            lifecycle.promote_canary(
                world.manifests, "production", model_name=MODEL, tracking_uri=world.uri,
                actor="rerun", allow_local_storage=True,
            )  # fmt: skip
            assert (world.alias("champion"), world.alias("previous")) == ("2", "1")
            assert world.tags("2")["champion.commit"] == world.head()
        else:
            lifecycle.rollback_canary(
                world.manifests, "production", model_name=MODEL, tracking_uri=world.uri,
                actor="rerun",
            )  # fmt: skip
            assert world.text_at("HEAD") == stable and world.alias("champion") == "1"
            assert world.tags("2")["rolled_back.commit"] == world.head()
        assert git(world.repo, "rev-list", "--count", f"{world.canary_sha}..HEAD") == "1"
        assert git(world.repo, "status", "--porcelain") == ""
        assert not list(world.overlay.parent.glob(".promotion.yaml.*"))
    assert len(seen) >= 2, seen  # the kills landed at different steps
