"""Acting on a canary's verdict through git, with the MLflow aliases following git.

``promote_canary`` takes the canary in an environment's overlay to 100 % and, once that overlay
is committed, moves ``@champion`` to its version (the old champion becomes ``@previous``);
``rollback_canary`` puts the overlay back as it was before the canary's version came in (the
revert of the canary change) and tags the version rolled back, which later promotions refuse
unless forced. The states and who moves them: docs/lifecycle.md.

Order of writes (each step is idempotent, and a rerun finishes a step a kill interrupted):

1. the overlay file (``mlstack.files.write_atomic``: the old or the new text, never a torn one);
2. the commit of that one path (a temporary index, then ``git update-ref HEAD new old``: the
   branch moves in one compare-and-swap, or not at all; the repository's own index is not
   locked until then);
3. only once the overlay at ``HEAD`` is the new one: the version tags recording the move (who,
   when, the commit), then ``@previous``, and ``@champion`` last.

Git is the truth: until the commit exists nothing is recorded in MLflow, and a rerun reads what
to finish from the overlay and its history (``git log --first-parent`` of the overlay path).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlstack.deploy import promote
from mlstack.errors import StackError
from mlstack.files import write_atomic
from mlstack.train import tracking
from mlstack.train.evaluation import CHAMPION

PREVIOUS = "previous"
# the environment whose 100 % promotion moves @champion
CHAMPION_ENV = "production"
# version tags (every value a string; docs/lifecycle.md)
TAG_ROLLED_BACK = "rolled_back"
ROLLED_BACK = ("rolled_back.commit", "rolled_back.by", "rolled_back.at", "rolled_back.reason")
CHAMPION_TAGS = ("champion.commit", "champion.canary_commit", "champion.by", "champion.at")
TAG_CHAMPION_FORCED = "champion.forced"
RETIRED = ("retired.commit", "retired.by", "retired.at")
# trailers of the commits made here: what a rerun reads back from git
TRAILER_PROMOTED = "Mlstack-Promoted-Version"
TRAILER_ROLLED_BACK = "Mlstack-Rolled-Back-Version"
HISTORY_LIMIT = 500  # overlay commits read back when looking for the canary's start


@dataclass(frozen=True)
class OverlayState:
    """What an overlay text says: the model version and the canary share (100: no canary)."""

    version: str
    canary: int


@dataclass(frozen=True)
class Outcome:
    action: str  # promote | rollback
    env: str
    version: str  # the canary's version acted on
    other_version: str  # promote: the champion it replaced; rollback: the version back in place
    overlay_changed: bool  # this run wrote the overlay
    commit: str  # the overlay commit now recorded ("" while the overlay is not committed)
    committed: bool  # this run made that commit
    recorded: bool  # this run wrote MLflow tags or aliases
    pending: str  # "" when done; else what is left to do

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _git(
    repo: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "", raw: bool = False
) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        first = (done.stderr.strip() or done.stdout.strip() or "failed").splitlines()[0]
        raise StackError(f"git {args[0]} in {repo} failed: {first}")
    return done.stdout if raw else done.stdout.strip()


def overlay_state(text: str, path: Path) -> OverlayState:
    """The model version and canary share an overlay's ``promotion.yaml`` text holds;
    ``StackError`` when it has no canary operation (an environment without canaries)."""
    ops = promote._yaml().load(text) or []
    values = {op.get("path"): op.get("value") for op in ops if isinstance(op, dict)}
    if promote.CANARY not in values:
        raise StackError(
            f"{path} has no canary share ({promote.CANARY}): this environment has no canaries "
            "(its promotion is the commit; roll back with git revert)"
        )
    try:
        canary = int(str(values[promote.CANARY]))
    except (TypeError, ValueError):
        raise StackError(
            f"{path}: canary share {values[promote.CANARY]!r} is not a number"
        ) from None
    return OverlayState(str(values.get(promote.MODEL_VERSION, "")), canary)


def _repo_of(path: Path) -> tuple[Path, str]:
    """The git work tree holding ``path``, and ``path`` relative to it."""
    try:
        top = Path(_git(path.parent, "rev-parse", "--show-toplevel"))
    except StackError:
        raise StackError(
            f"{path} is not in a git repository: the overlay's history is the rollout's record"
        ) from None
    return top, path.resolve().relative_to(top.resolve()).as_posix()


def _history(repo: Path, rel: str) -> list[tuple[str, str]]:
    """(commit, overlay text) for each first-parent commit that changed the overlay, newest
    first."""
    shas = _git(
        repo, "log", "--first-parent", f"-n{HISTORY_LIMIT}", "--format=%H", "--", rel
    ).split()
    return [(sha, _git(repo, "show", f"{sha}:{rel}", raw=True)) for sha in shas]


def _head_text(repo: Path, rel: str) -> str | None:
    try:
        return _git(repo, "show", f"HEAD:{rel}", raw=True)
    except StackError:
        return None


def _same(a: str | None, b: str) -> bool:
    return a is not None and a == b


def commit_path(repo: Path, rel: str, message: str) -> str:
    """Commit the work tree's ``rel`` (and nothing else) on the current branch; returns the new
    commit, or "" when ``rel`` is already as committed. The branch moves by one
    compare-and-swap (``update-ref HEAD new old``): a kill before it leaves the branch as it was,
    and a commit by someone else meanwhile makes this one fail rather than lose theirs."""
    head = _git(repo, "rev-parse", "HEAD")
    blob = _git(repo, "hash-object", "-w", "--", rel)
    mode = (_git(repo, "ls-tree", "HEAD", "--", rel).split() or ["100644"])[0]
    with tempfile.TemporaryDirectory(prefix="mlstack-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", "HEAD", env=env)
        _git(repo, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{rel}", env=env)
        tree = _git(repo, "write-tree", env=env)
    if tree == _git(repo, "rev-parse", "HEAD^{tree}"):
        return ""
    new = _git(repo, "commit-tree", tree, "-p", head, "-F", "-", stdin=message)
    _git(repo, "update-ref", "-m", f"mlstack: {message.splitlines()[0]}", "HEAD", new, head)
    # the repository's own index follows (else `git status` shows the change reverted); a
    # concurrent git command holding the index leaves it to `git status` to notice
    with contextlib.suppress(StackError):
        _git(repo, "update-index", "--cacheinfo", f"{mode},{blob},{rel}")
    return new


def repair_index(repo: Path, rel: str) -> bool:
    """The repository's index entry of ``rel`` put back to HEAD's when a run was killed between
    moving the branch and updating the index (``commit_path``): the work tree and HEAD agree and
    the index still holds the blob of HEAD's parent, which ``git status`` shows as a change
    staged and reverted. Nothing is done otherwise (a change someone staged is theirs). True if
    repaired."""
    head = _git(repo, "ls-tree", "HEAD", "--", rel).split()
    staged = _git(repo, "ls-files", "--stage", "--", rel).split()
    if len(head) < 3 or len(staged) < 2 or staged[1] == head[2]:
        return False
    try:
        parent = _git(repo, "ls-tree", "HEAD^", "--", rel).split()
    except StackError:  # HEAD has no parent
        return False
    if len(parent) < 3 or staged[1] != parent[2]:
        return False
    if _git(repo, "hash-object", "--", rel) != head[2]:
        return False
    with contextlib.suppress(StackError):  # a concurrent git command holding the index
        _git(repo, "update-index", "--cacheinfo", f"{head[0]},{head[2]},{rel}")
        return True
    return False


def _last_commit(repo: Path, rel: str) -> str:
    return _git(repo, "log", "--first-parent", "-n1", "--format=%H", "--", rel)


def _trailer(repo: Path, sha: str, key: str) -> str:
    body = _git(repo, "show", "-s", "--format=%B", sha)
    for line in body.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    return ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    tracking.bound_http_retries()
    tracking.check_reachable(tracking_uri)
    return MlflowClient(tracking_uri)


def _alias(client: Any, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _tags(client: Any, model_name: str, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version(model_name, version).tags or {})
    except MlflowException as exc:
        raise StackError(f"no version {version} of model '{model_name}': {exc.message}") from None


def refuse_rolled_back(tags: dict[str, str], model_name: str, version: str) -> None:
    """``StackError`` when the version's tags say it was rolled back (``--force`` skips this)."""
    if tags.get(TAG_ROLLED_BACK) == "true":
        raise StackError(
            f"refusing to promote {model_name} v{version}: it was rolled back "
            f"(commit {tags.get(ROLLED_BACK[0], '?')[:12]}, {tags.get(ROLLED_BACK[2], '?')}: "
            f"{tags.get(ROLLED_BACK[3], 'no reason given')}); pass --force to promote it anyway"
        )


def _before(states: list[tuple[str, str]], version: str, path: Path) -> str | None:
    """In ``states`` ((commit or "" for the work tree, text), newest first): the text of the
    newest state whose version is not ``version`` (the overlay before ``version`` came in), or
    None when there is none."""
    for _, text in states:
        if overlay_state(text, path).version != version:
            return text
    return None


def promote_canary(
    manifests: Path,
    env: str,
    *,
    model_name: str,
    tracking_uri: str,
    actor: str,
    artifacts_destination: str = "",
    allow_local_storage: bool = False,
    commit: bool = True,
    force: bool = False,
) -> Outcome:
    """The canary in ``env``'s overlay to 100 %, committed, then (production) ``@champion``.

    With a canary share below 100 the version is checked again by the promotion policy
    (``promote.resolve_release``) and written at 100 % with its verified fields; with ``commit``
    the overlay path alone is committed. Once ``HEAD`` holds the overlay at 100 % on the version,
    and its history shows the version came in as a canary, the version is tagged
    ``champion.*`` (who, when, the commit, the canary's commit), the old champion
    ``retired.*`` and ``@previous``, and ``@champion`` moves last. Returns what was done and what
    is left (``pending``: an uncommitted overlay, e.g. before a pull request is merged). Raises
    ``StackError`` for an environment without canaries, a version rolled back before (unless
    ``force``), a policy refusal, a version that reached 100 % without a canary (unless
    ``force``), or a git or MLflow failure."""
    path = promote.overlay_file(manifests, env)
    repo, rel = _repo_of(path)
    repair_index(repo, rel)  # what a run killed after its commit left
    state = overlay_state(path.read_text(), path)
    version = state.version
    if not version.isdigit() or version == "0":
        raise StackError(f"{path} holds no registered model version (MODEL_VERSION {version!r})")
    client = _client(tracking_uri)
    tags = _tags(client, model_name, version)
    champion = _alias(client, model_name, CHAMPION) if env == CHAMPION_ENV else None
    if not force and champion != version:
        refuse_rolled_back(tags, model_name, version)
    changed = False
    if state.canary < 100:
        release = promote.resolve_release(
            model_name,
            version,
            tracking_uri=tracking_uri,
            artifacts_destination=artifacts_destination,
            allow_local_storage=allow_local_storage,
            force=force,
        )
        changed = bool(promote.promote(manifests, env, release, canary=100))
    text = path.read_text()
    committed = False
    if commit and not _same(_head_text(repo, rel), text):
        message = (
            f"rollout: promote {model_name} v{version} to 100 % in {env}\n\n"
            f"{TRAILER_PROMOTED}: {version}\n"
        )
        committed = bool(commit_path(repo, rel, message))
    if env != CHAMPION_ENV:
        return Outcome("promote", env, version, "", changed, "", committed, False, "")
    old = champion or ""
    if not _same(_head_text(repo, rel), text):
        return Outcome(
            "promote", env, version, old, changed, "", committed, False,
            f"commit {rel} (or merge its pull request), then run this again to move @champion",
        )  # fmt: skip
    sha = _last_commit(repo, rel)
    if champion == version:
        return Outcome("promote", env, version, old, changed, sha, committed, False, "")
    canary_commit = ""  # the oldest canary state of the run of `version` just before HEAD
    for sha_, text_ in _history(repo, rel):
        past = overlay_state(text_, path)
        if past.version != version:
            break
        if past.canary < 100:
            canary_commit = sha_
    if not canary_commit and not force:
        raise StackError(
            f"refusing to make {model_name} v{version} the champion: it reached 100 % in {env} "
            f"(commit {sha[:12]}) without a canary; promote it with --canary first, or pass "
            "--force"
        )
    record = {
        CHAMPION_TAGS[0]: sha,
        CHAMPION_TAGS[1]: canary_commit,
        CHAMPION_TAGS[2]: actor,
        CHAMPION_TAGS[3]: _now(),
    }
    if force:
        record[TAG_CHAMPION_FORCED] = "true"
    for key, value in record.items():
        client.set_model_version_tag(model_name, version, key, value)
    if champion is not None:
        retired = dict(zip(RETIRED, (sha, actor, record[CHAMPION_TAGS[3]]), strict=True))
        for key, value in retired.items():
            client.set_model_version_tag(model_name, champion, key, value)
        client.set_registered_model_alias(model_name, PREVIOUS, champion)
    client.set_registered_model_alias(model_name, CHAMPION, version)  # the last write
    return Outcome("promote", env, version, old, changed, sha, committed, True, "")


def rollback_canary(
    manifests: Path,
    env: str,
    *,
    model_name: str,
    tracking_uri: str,
    actor: str,
    reason: str = "",
    commit: bool = True,
) -> Outcome:
    """The overlay of ``env`` back to the text it had before the canary's version came in (the
    revert of the canary change), committed, then the version tagged ``rolled_back=true`` with
    who, when, why and the commit. ``@champion`` is not touched. A second run finds no canary and
    the last overlay commit already recorded: it changes nothing. Returns what was done; raises
    ``StackError`` when the overlay holds no canary and no rollback to finish, when its history
    holds no earlier registered version to go back to, or on a git or MLflow failure."""
    path = promote.overlay_file(manifests, env)
    repo, rel = _repo_of(path)
    repair_index(repo, rel)  # what a run killed after its commit left
    text = path.read_text()
    state = overlay_state(text, path)
    head = _head_text(repo, rel)
    changed = committed = False
    version, back_to = state.version, ""
    head_state = overlay_state(head, path) if head is not None else None
    states: list[tuple[str, str]] | None = None
    if state.canary < 100:
        states = ([] if _same(head, text) else [("", text)]) + _history(repo, rel)
    elif head_state is not None and head_state.canary < 100 and not _same(head, text):
        # the canary is committed but the work tree is not: a rollback killed before its commit
        version = head_state.version
        states = _history(repo, rel)
    if states is not None:
        found = _before(states, version, path)
        stable = overlay_state(found, path) if found is not None else None
        if found is None or stable is None or not stable.version.isdigit() or stable.version == "0":
            raise StackError(
                f"nothing to roll back to: {path} held no registered model version before "
                f"v{version} (give it a version by hand, or set the canary share to 0)"
            )
        back_to = stable.version
        stable_text = found
        if state.canary == 100 and not _same(text, stable_text):
            raise StackError(
                f"{path} has changes that are not committed and are not a rollback of "
                f"v{version}: commit or discard them, then run this again"
            )
        if not _same(text, stable_text):
            write_atomic(path, stable_text)
            changed = True
        if commit and not _same(head, stable_text):
            message = (
                f"rollout: roll back {model_name} v{version} in {env}, back to v{back_to}\n\n"
                f"{reason or 'canary analysis: rollback'}\n\n"
                f"{TRAILER_ROLLED_BACK}: {version}\n"
            )
            committed = bool(commit_path(repo, rel, message))
        text = path.read_text()
    elif head is not None and _same(head, text):
        last = _last_commit(repo, rel)
        version = _trailer(repo, last, TRAILER_ROLLED_BACK) if last else ""
        if not version:
            raise StackError(
                f"nothing to roll back: {path} holds no canary (v{state.version} at 100 %)"
            )
        back_to = state.version
    else:
        raise StackError(
            f"nothing to roll back: {path} holds no canary (v{state.version} at 100 %)"
        )
    if not _same(_head_text(repo, rel), text):
        return Outcome(
            "rollback", env, version, back_to, changed, "", committed, False,
            f"commit {rel}, then run this again to tag v{version} rolled back",
        )  # fmt: skip
    sha = _last_commit(repo, rel)
    client = _client(tracking_uri)
    tags = _tags(client, model_name, version)
    if tags.get(TAG_ROLLED_BACK) == "true" and tags.get(ROLLED_BACK[0]) == sha:
        return Outcome("rollback", env, version, back_to, changed, sha, committed, False, "")
    record = dict(
        zip(ROLLED_BACK, (sha, actor, _now(), reason or "canary analysis: rollback"), strict=True)
    )
    for key, value in record.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, TAG_ROLLED_BACK, "true")  # the last write
    return Outcome("rollback", env, version, back_to, changed, sha, committed, True, "")
