"""The DVC round trip on a local-directory remote: add, push, commit, read back at a rev."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlstack.data import generate, versions
from mlstack.errors import StackError
from tests.conftest import git


def test_add_version_pushes_then_commits_and_reads_back_from_a_fresh_clone(
    data_repo: Path, tmp_path: Path
):
    first_sha = git(data_repo, "rev-parse", "HEAD")
    first_md5 = versions.pointer_md5(data_repo / "data/churn.csv.dvc")
    new = tmp_path / "drifted.csv"
    generate.write_csv(generate.generate(900, 8, drift=True), new)

    version = versions.add_version(
        data_repo, new, data_path="data/churn.csv", message="data: drifted batch"
    )

    assert version.git_sha == git(data_repo, "rev-parse", "HEAD") != first_sha
    assert version.md5 != first_md5
    assert git(data_repo, "status", "--porcelain") == ""
    assert git(data_repo, "log", "-1", "--format=%s") == "data: drifted batch"
    # a clone has no DVC cache: both versions must come from the remote
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    old = versions.read_version(
        str(clone), "data/churn.csv", rev=first_sha, out=tmp_path / "old.csv"
    )
    cur = versions.read_version(str(clone), "data/churn.csv", rev="HEAD", out=tmp_path / "cur.csv")
    assert (old.md5, cur.md5) == (first_md5, version.md5)
    assert old.git_sha == first_sha
    assert (tmp_path / "cur.csv").read_bytes() == new.read_bytes()


def test_failed_push_restores_pointer_and_data_and_commits_nothing(data_repo: Path, tmp_path: Path):
    head = git(data_repo, "rev-parse", "HEAD")
    pointer = (data_repo / "data/churn.csv.dvc").read_text()
    data = (data_repo / "data/churn.csv").read_bytes()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the remote directory should be")
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "broken", str(blocker / "remote")],
        cwd=data_repo,
        check=True,
    )
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(700, 9), new)

    with pytest.raises(StackError, match="dvc push to remote 'broken' failed"):
        versions.add_version(
            data_repo, new, data_path="data/churn.csv", message="never", remote="broken"
        )

    assert git(data_repo, "rev-parse", "HEAD") == head
    assert (data_repo / "data/churn.csv.dvc").read_text() == pointer
    assert (data_repo / "data/churn.csv").read_bytes() == data


def test_read_of_untracked_path_or_bad_rev_is_one_line_error(data_repo: Path, tmp_path: Path):
    with pytest.raises(StackError, match="cannot read data/nope.csv"):
        versions.read_version(str(data_repo), "data/nope.csv", rev="HEAD", out=tmp_path / "x.csv")
    with pytest.raises(StackError, match="rev-parse"):
        versions.read_version(
            str(data_repo), "data/churn.csv", rev="no-such-rev", out=tmp_path / "x.csv"
        )


def test_missing_remote_data_is_a_clear_error(data_repo: Path, tmp_path: Path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    for obj in (tmp_path / "remote").rglob("*"):
        if obj.is_file():
            obj.unlink()
    with pytest.raises(StackError, match="cannot read data/churn.csv"):
        versions.read_version(str(clone), "data/churn.csv", rev="HEAD", out=tmp_path / "x.csv")


def test_bootstrap_rebuilds_the_seeded_version_on_a_fresh_clone(tmp_path: Path):
    from tests.conftest import make_data_repo

    repo = make_data_repo(tmp_path / "repo", tmp_path / "remote", rows=500, seed=5)

    def fresh_clone(name: str) -> Path:
        """A clone whose default remote is a new, empty directory (as on a new machine)."""
        clone = tmp_path / name
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "add", "-f", "-d", "local", f"../{name}-r"],
            cwd=clone,
            check=True,
        )
        return clone

    clone = fresh_clone("a")
    md5 = versions.bootstrap(clone, "data/churn.csv", rows=500, seed=5)
    assert md5 == versions.pointer_md5(clone / "data/churn.csv.dvc")
    assert any(p.is_file() for p in (tmp_path / "a-r").rglob("*"))  # pushed to the new remote

    other = fresh_clone("b")
    with pytest.raises(StackError, match="seeded generator gives md5"):
        versions.bootstrap(other, "data/churn.csv", rows=500, seed=6)
    assert not (other / "data/churn.csv").exists()


def test_failed_first_add_on_a_fresh_clone_leaves_nothing(data_repo: Path, tmp_path: Path):
    clone = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "remote",
            "add",
            "-f",
            "-d",
            "local",
            str(tmp_path / "x" / "y"),
        ],
        cwd=clone,
        check=True,
    )
    (tmp_path / "x").write_text("a file where a directory is needed")
    git(clone, "commit", "-qam", "broken remote")
    status = git(clone, "status", "--porcelain")
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(500, 3), new)
    with pytest.raises(StackError, match="dvc push"):
        versions.add_version(clone, new, data_path="data/churn.csv", message="never")
    assert not (clone / "data/churn.csv").exists()  # it was not there before
    assert git(clone, "status", "--porcelain") == status


def test_adding_the_same_data_again_changes_nothing(data_repo: Path):
    head = git(data_repo, "rev-parse", "HEAD")
    same = versions.add_version(
        data_repo, data_repo / "data/churn.csv", data_path="data/churn.csv", message="again"
    )
    assert same.git_sha == head == git(data_repo, "rev-parse", "HEAD")


def test_bootstrap_leaves_a_modified_data_file_alone(data_repo: Path):
    target = data_repo / "data/churn.csv"
    target.write_text(target.read_text() + "1,2,3,4,5,one-year,card,dsl,0\n")
    edited = target.read_bytes()
    with pytest.raises(StackError, match="differs from the committed version"):
        versions.bootstrap(data_repo, "data/churn.csv", rows=1200, seed=7)
    assert target.read_bytes() == edited


def test_resolve_rev_over_a_url_matches_names_exactly(data_repo: Path, tmp_path: Path):
    main = git(data_repo, "rev-parse", "HEAD")
    git(data_repo, "checkout", "-q", "-b", "feature/main")
    git(data_repo, "commit", "-q", "--allow-empty", "-m", "feature")
    feature = git(data_repo, "rev-parse", "HEAD")
    git(data_repo, "tag", "-a", "v1", "-m", "release", main)
    url = data_repo.as_uri()
    assert versions.resolve_rev(url, "main") == main
    assert versions.resolve_rev(url, "feature/main") == feature
    assert versions.resolve_rev(url, "v1") == main  # the commit, not the tag object
    with pytest.raises(StackError, match="no branch or tag named 'nope'"):
        versions.resolve_rev(url, "nope")
