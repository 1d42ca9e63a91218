"""The DVC round trip on a local-directory remote: add, push, commit, read back at a rev; and the
same under faults (a corrupted cache, a failed or killed add, a torn pointer, two adds at once)."""

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlstack.data import generate, versions
from mlstack.errors import StackError
from tests.conftest import git
from tests.support.cli import cli_argv, run_cli


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


# --- data lineage under faults: corrupted cache, failed or killed add, torn pointer, two adds ---

POINTER = "data/churn.csv.dvc"


def _state(repo: Path) -> dict[str, object]:
    """What an add changes: HEAD, the pointer, .gitignore, the data, their index entries, status."""
    files = {
        name: (repo / name).read_bytes() if (repo / name).exists() else None
        for name in (POINTER, "data/.gitignore", "data/churn.csv")
    }
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "index": git(repo, "ls-files", "-s", "--", POINTER, "data/.gitignore"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        **files,
    }


def _committed_md5(repo: Path, rev: str = "HEAD") -> str:
    return str(yaml.safe_load(git(repo, "show", f"{rev}:{POINTER}"))["outs"][0]["md5"])


@pytest.mark.reliability("corrupted-cache")
def test_a_corrupted_cache_object_is_refused_by_read_version_and_the_ingest_step(
    data_repo: Path, tmp_path: Path, capsys
):
    from kfp.dsl import Dataset

    from components.ingest import ingest

    md5 = versions.pointer_md5(data_repo / POINTER)
    obj = data_repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one byte
    obj.chmod(0o644)
    obj.write_bytes(bytes(raw))
    out = tmp_path / "out.csv"

    with pytest.raises(StackError) as err:
        versions.read_version(str(data_repo), "data/churn.csv", rev="HEAD", out=out)
    line = str(err.value)
    assert "\n" not in line
    assert f"the pointer names {md5}" in line and f"md5 {hashlib.md5(raw).hexdigest()}" in line
    assert "dvc fetch" in line
    assert not out.exists()

    dataset = Dataset(name="dataset", uri=str(tmp_path / "dataset.csv"))
    with pytest.raises(SystemExit) as exit_:
        ingest.python_func(
            repo=str(data_repo), data_path="data/churn.csv", data_rev="HEAD", dataset=dataset
        )
    assert exit_.value.code == 1
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith("error: data/churn.csv at ")
    assert f"the pointer names {md5}" in err_text
    assert not Path(dataset.path).exists()

    # the repair the line names: drop the cache object, fetch it again from the remote
    obj.unlink()
    subprocess.run([sys.executable, "-m", "dvc", "fetch", "-q"], cwd=data_repo, check=True)
    got = versions.read_version(str(data_repo), "data/churn.csv", rev="HEAD", out=out)
    assert got.md5 == md5 == hashlib.md5(out.read_bytes()).hexdigest()


@pytest.mark.reliability("failed-commit")
@pytest.mark.parametrize("cause", ["pre-commit hook", "no git identity"])
def test_a_failed_commit_after_the_push_restores_everything(
    data_repo: Path, tmp_path: Path, monkeypatch, cause: str
):
    before = _state(data_repo)
    if cause == "pre-commit hook":
        hook = data_repo / ".git/hooks/pre-commit"
        hook.write_text("#!/bin/sh\necho 'hook says no' >&2\nexit 1\n")
        hook.chmod(0o755)
        expect = "git commit failed: hook says no"
    else:
        for who in ("AUTHOR", "COMMITTER"):
            monkeypatch.delenv(f"GIT_{who}_NAME")
            monkeypatch.delenv(f"GIT_{who}_EMAIL")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        git(data_repo, "config", "user.useConfigOnly", "true")
        before = _state(data_repo)
        expect = "git commit failed: "
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(600, 11), new)

    with pytest.raises(StackError) as err:
        versions.add_version(data_repo, new, data_path="data/churn.csv", message="never")

    assert str(err.value).startswith(expect) and "\n" not in str(err.value)
    assert "nothing was committed and the previous data/churn.csv" in str(err.value)
    assert _state(data_repo) == before  # HEAD, files, index entries and status as they were
    assert not (data_repo / ".dvc/tmp/mlstack-add").exists()  # the journal is closed


@pytest.mark.reliability("torn-pointer")
@pytest.mark.parametrize(("content", "what"), [("", "is empty"), ("outs: [\n", "not a DVC")])
def test_a_torn_pointer_is_one_line_for_every_data_command(
    data_repo: Path, tmp_path: Path, content: str, what: str
):
    pointer = data_repo / POINTER
    pointer.write_text(content)
    with pytest.raises(StackError, match=what):
        versions.pointer_md5(pointer)
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(400, 12), new)
    env = {"MLSTACK_REPO_ROOT": str(data_repo)}
    for args in (("add", str(new)), ("status",), ("bootstrap",)):
        done = run_cli("data", *args, env=env)
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.count("\n") == 1 and what in done.stderr, (args, done.stderr)
        assert f"git checkout HEAD -- {pointer}" in done.stderr
    assert pointer.read_text() == content  # refused before any change
    git(data_repo, "checkout", "HEAD", "--", str(pointer))  # the repair the line names
    done = run_cli("data", "status", env=env)
    assert done.returncode == 0, done.stderr
    assert "workspace: matches" in done.stdout


def _add_process(repo: Path, source: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_argv("data", "add", str(source), "-m", f"data: {source.stem}"),
        env={**os.environ, "MLSTACK_REPO_ROOT": str(repo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _status_following_its_advice(repo: Path, outcomes: dict[str, int]) -> versions.DataStatus:
    """``status`` (which rolls back an unfinished add); a lock file left by a killed git command
    is removed as its one line says."""
    try:
        return versions.status(repo, "data/churn.csv")
    except StackError as exc:
        assert "index.lock exists" in str(exc) and "\n" not in str(exc), exc
        (repo / ".git/index.lock").unlink()
        outcomes["index.lock"] += 1
        return versions.status(repo, "data/churn.csv")


@pytest.mark.slow
@pytest.mark.reliability("killed-add")
def test_data_add_killed_at_random_moments_leaves_the_old_or_the_new_version(
    data_repo: Path, tmp_path: Path
):
    rng = random.Random(17)
    # an add run to its end gives the time span the kills are spread over
    first = tmp_path / "v0.csv"
    generate.write_csv(generate.generate(300, 100), first)
    started = time.monotonic()
    done = _add_process(data_repo, first)
    out, err = done.communicate(timeout=300)
    span = time.monotonic() - started
    assert done.returncode == 0, err
    outcomes = {"old": 0, "new": 0, "rolled back": 0, "kept": 0, "index.lock": 0, "rwlock": 0}
    for i in range(1, 26):
        source = tmp_path / f"v{i}.csv"
        generate.write_csv(generate.generate(300, 100 + i), source)
        want = versions._md5(source)
        before = _committed_md5(data_repo)
        proc = _add_process(data_repo, source)
        time.sleep(rng.uniform(0.2, span * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)

        got = _status_following_its_advice(data_repo, outcomes)
        # exactly the old version or exactly the new one: pointer, data and index agree with HEAD
        assert got.md5 in (before, want), i
        assert got.workspace == "matches", (i, got)
        assert git(data_repo, "status", "--porcelain", "--untracked-files=all") == "", i
        assert got.git_sha == git(data_repo, "rev-parse", "HEAD")
        outcomes["new" if got.md5 == want else "old"] += 1
        recovered = got.recovered or ""
        outcomes["rwlock"] += "rwlock" in recovered
        outcomes["rolled back"] += "nothing was committed" in recovered
        outcomes["kept"] += "kept" in recovered
        # every committed version's data is on the remote (committed only after the push)
        assert (tmp_path / "remote/files/md5" / got.md5[:2] / got.md5[2:]).is_file(), i
    print(f"25 kills: {outcomes}")
    assert outcomes["rolled back"] > 0  # some kills landed inside an add, not only around it

    final = tmp_path / "final.csv"
    generate.write_csv(generate.generate(300, 999), final)
    proc = _add_process(data_repo, final)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    head = git(data_repo, "rev-parse", "HEAD")
    assert out.strip().endswith(f"committed as {head[:12]}")
    assert _committed_md5(data_repo) == versions._md5(final)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    back = versions.read_version(str(clone), "data/churn.csv", rev="HEAD", out=tmp_path / "b.csv")
    assert back.md5 == versions._md5(final) and back.git_sha == head


@pytest.mark.reliability("concurrent-adds")
def test_two_concurrent_adds_are_serialized_and_a_loser_that_cannot_wait_gets_one_line(
    data_repo: Path, tmp_path: Path
):
    start = git(data_repo, "rev-parse", "HEAD")
    sources = []
    for seed in (31, 32):
        sources.append(tmp_path / f"c{seed}.csv")
        generate.write_csv(generate.generate(500, seed), sources[-1])
    procs = [_add_process(data_repo, source) for source in sources]
    results = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results

    # two commits, one after the other, each holding the md5 its add printed
    assert git(data_repo, "rev-parse", "HEAD~2") == start
    printed = {out.split()[3]: out.split()[-1] for out, _ in results}
    assert set(printed) == {versions._md5(source) for source in sources}
    for md5, sha in printed.items():
        assert _committed_md5(data_repo, sha) == md5
    assert {git(data_repo, "rev-parse", "--short=12", r) for r in ("HEAD", "HEAD~1")} == set(
        printed.values()
    )
    assert git(data_repo, "status", "--porcelain", "--untracked-files=all") == ""

    before = _state(data_repo)
    third = tmp_path / "c33.csv"
    generate.write_csv(generate.generate(500, 33), third)
    with (data_repo / ".dvc/tmp/mlstack-add.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StackError) as err:
            versions.add_version(
                data_repo, third, data_path="data/churn.csv", message="never", lock_timeout=1
            )
    assert "another 'mlstack data' command is changing" in str(err.value)
    assert "\n" not in str(err.value)
    assert _state(data_repo) == before


@pytest.mark.reliability("killed-in-commit")
@pytest.mark.parametrize(("hook_exit", "kept"), [(1, False), (0, True)])
def test_data_add_killed_inside_git_commit_is_finished_or_undone_by_the_next_command(
    data_repo: Path, tmp_path: Path, hook_exit: int, kept: bool
):
    """A pre-commit hook SIGKILLs the ``mlstack data add`` that runs git: the commit then fails
    (hook exit 1) or lands after its add died (hook exit 0), with the journal still open."""
    before = _state(data_repo)
    hook = data_repo / ".git/hooks/pre-commit"
    hook.write_text(
        "#!/bin/sh\n"
        "# this hook's parent is git; git's parent is the mlstack process\n"
        "kill -9 \"$(awk '{print $4}' /proc/$PPID/stat)\"\n"
        "sleep 1\n"
        f"exit {hook_exit}\n"
    )
    hook.chmod(0o755)
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(400, 41), new)
    proc = _add_process(data_repo, new)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -9 and out == ""
    hook.unlink()
    while (data_repo / ".git/index.lock").exists():  # the orphaned git commit finishing
        time.sleep(0.2)
    assert (data_repo / ".dvc/tmp/mlstack-add/journal.json").exists()
    # what a kill inside DVC's link test or copy leaves beside the data, named by DVC itself
    from dvc_objects.fs.utils import tmp_fname

    (data_repo / "data" / tmp_fname()).write_bytes(b"partial")

    done = run_cli("data", "status", env={"MLSTACK_REPO_ROOT": str(data_repo)})

    assert done.returncode == 0, done.stderr
    assert git(data_repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (data_repo / ".dvc/tmp/mlstack-add").exists()
    if kept:
        assert git(data_repo, "rev-parse", "HEAD~1") == before["head"]
        assert _committed_md5(data_repo) == versions._md5(new)
        assert "was committed as" in done.stdout and "kept" in done.stdout
        assert (data_repo / "data/churn.csv").read_bytes() == new.read_bytes()
    else:
        assert _state(data_repo) == before
        assert "nothing was committed" in done.stdout
    assert "workspace: matches" in done.stdout


@pytest.mark.reliability("stale-index-lock")
def test_a_git_index_lock_left_by_a_killed_git_is_one_line_and_nothing_changes(
    data_repo: Path, tmp_path: Path
):
    before = _state(data_repo)
    lock = data_repo / ".git/index.lock"
    lock.write_text("")
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(400, 51), new)
    env = {"MLSTACK_REPO_ROOT": str(data_repo)}

    done = run_cli("data", "add", str(new), env=env)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: git add")
    assert f"{lock} exists" in done.stderr and "remove that file and run again" in done.stderr
    lock.unlink()
    assert _state(data_repo) == before
    done = run_cli("data", "add", str(new), env=env)  # after the repair it names
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(git(data_repo, "rev-parse", "--short=12", "HEAD"))


@pytest.mark.reliability("torn-dvc-rwlock")
@pytest.mark.parametrize("content", ["", '{"write": {"data/churn.csv": {"pid": 1'])
def test_a_dvc_rwlock_torn_by_a_killed_dvc_is_reset_by_the_next_command(
    data_repo: Path, tmp_path: Path, content: str
):
    rwlock = data_repo / ".dvc/tmp/rwlock"
    rwlock.write_text(content)
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(400, 52), new)
    done = run_cli("data", "add", str(new), env={"MLSTACK_REPO_ROOT": str(data_repo)})
    assert done.returncode == 0, done.stderr
    assert "rwlock was left unreadable by a killed DVC command" in done.stderr
    assert done.stdout.strip().endswith(git(data_repo, "rev-parse", "--short=12", "HEAD"))
    held = json.loads(rwlock.read_text())  # DVC's own after the add: readable, no holder left
    assert not any(held.get(mode) for mode in ("read", "write")), held
    assert versions.status(data_repo, "data/churn.csv").md5 == versions._md5(new)


@pytest.mark.reliability("uncommitted-pointer-sha")
def test_an_add_of_data_whose_pointer_is_not_committed_commits_it_and_reports_the_new_sha(
    data_repo: Path, tmp_path: Path
):
    """The pointer in the workspace already names the new data (an add that died before its
    commit, without a journal; or a bare ``dvc add``): the add must still commit and push it, and
    report the new commit, never the one that last changed the pointer."""
    before = git(data_repo, "rev-parse", "HEAD")
    new = tmp_path / "new.csv"
    generate.write_csv(generate.generate(400, 61), new)
    (data_repo / "data/churn.csv").write_bytes(new.read_bytes())
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data/churn.csv"], cwd=data_repo)
    assert versions.pointer_md5(data_repo / POINTER) == versions._md5(new)

    version = versions.add_version(data_repo, new, data_path="data/churn.csv", message="v2")

    head = git(data_repo, "rev-parse", "HEAD")
    assert version.git_sha == head != before
    assert version.md5 == _committed_md5(data_repo) == versions._md5(new)
    assert (tmp_path / "remote/files/md5" / version.md5[:2] / version.md5[2:]).is_file()
    assert git(data_repo, "status", "--porcelain", "--untracked-files=all") == ""
