"""Register a model version that passed the gates, with lineage tags and an alias.

All or nothing, and safe against concurrent registrations of the same model:

- one registration at a time per model: a lock, the registered model ``<model>.registration-lock``
  (creating a registered model is the one create-if-absent MLflow's stores do atomically, by a
  unique name); a lock older than ``LOCK_STALE_SECONDS`` (a killed registration) is broken;
- under the lock the champion is read again and must be the one evaluate compared against
  (``Decision.champion_version``), else nothing is registered and the step fails in one line;
- the version is created tagged ``registration=pending`` and only marked ``complete`` once its
  alias is set and read back as its own; a version of this run left ``pending`` by an earlier
  failed attempt (its rollback failed too) is deleted and the registration done again;
- if tagging or aliasing fails, the new version is deleted again (which also drops an alias
  MLflow attached to it) and the alias given back to the version that held it.

Limits (MLflow has no compare-and-set): a writer that ignores the lock (the UI, a script) can
still move an alias between the read-back and the ``complete`` tag; a lock broken because its
holder took longer than ``LOCK_STALE_SECONDS`` lets two registrations overlap, and then the
read-back after the alias write is the only guard (docs/architecture.md, "Registry integrity").
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlstack.errors import StackError
from mlstack.train import tracking
from mlstack.train.evaluation import CHALLENGER, CHAMPION, Decision, champion_version

LOCK_SUFFIX = ".registration-lock"
LOCK_STALE_SECONDS = 120.0  # a registration takes seconds; older than this, its holder died
LOCK_WAIT_SECONDS = 180.0  # longer than LOCK_STALE_SECONDS: a dead holder's lock gets broken
PENDING, COMPLETE = "pending", "complete"
BOOTSTRAP_TAG = "champion.bootstrap"  # on the first version only: @champion without a canary


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    alias: str  # "" only for an earlier registration whose alias a later one has taken since
    created: bool


def _alias_target(client: Any, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def version_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """What a version copies from its run: the lineage tags, every gate's result
    (``gate.*``) and threshold (``gate_threshold.*``), and the model's digest."""
    return {
        key: value
        for key, value in run_tags.items()
        if key in tracking.LINEAGE_TAGS
        or key == tracking.TAG_MODEL_DIGEST
        or key.startswith((tracking.TAG_GATE_PREFIX, tracking.TAG_THRESHOLD_PREFIX))
    }


@contextlib.contextmanager
def registration_lock(
    client: Any,
    model_name: str,
    *,
    wait: float = LOCK_WAIT_SECONDS,
    stale: float = LOCK_STALE_SECONDS,
) -> Iterator[None]:
    """Hold the model's registration lock for the duration of the context.

    Raises ``StackError`` when another registration holds it for longer than ``wait`` seconds;
    breaks a lock older than ``stale`` seconds (its holder was killed)."""
    from mlflow.exceptions import MlflowException

    name = model_name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        try:
            client.create_registered_model(
                name,
                tags={"holder": token},
                description=f"held while a version of '{model_name}' is registered",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with contextlib.suppress(MlflowException):  # released meanwhile: try again
            held = client.get_registered_model(name)
            if time.time() - held.creation_timestamp / 1000 > stale:
                client.delete_registered_model(name)
                continue
        if time.monotonic() > deadline:
            raise StackError(
                f"another registration of model '{model_name}' has held '{name}' for over "
                f"{wait:.0f}s; retry later (a lock older than {stale:.0f}s is broken)"
            )
        time.sleep(0.1 + random.random() * 0.2)  # noqa: S311 (jitter, not security)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(name).tags.get("holder") == token:
                client.delete_registered_model(name)


def register(
    run_id: str,
    model_uri: str,
    *,
    model_name: str,
    decision: Decision,
    tracking_uri: str,
    experiment_name: str,
) -> Registration:
    """Create (or find, for this run) the model version; alias it ``champion`` when the registry
    has none (the bootstrap champion, tagged ``champion.bootstrap``: docs/lifecycle.md), else
    ``challenger``: the module's docstring says how, and what it guards against. It never moves
    an existing ``@champion``: only ``mlstack rollout promote`` in production does.

    Returns the registration (version, alias, and whether it is new: a rerun of the same run
    finds its version again). Raises ``StackError`` for a model whose gates did not pass, when
    the champion is no longer the one evaluate compared against, when another version holds the
    alias just set, or when the tracking server is unreachable or fails."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not decision.passed:
        failed = ", ".join(g.name for g in decision.gates if not g.passed)
        raise StackError(f"refusing to register run {run_id}: gates failed ({failed})")
    tracking.connect(tracking_uri, experiment_name)
    client = MlflowClient()
    try:
        with contextlib.suppress(MlflowException):  # exists already, or created concurrently
            client.create_registered_model(model_name)
        with registration_lock(client, model_name):
            return _register_locked(client, run_id, model_uri, model_name, decision)
    except MlflowException as exc:
        first = str(exc.message).splitlines()[0] if exc.message else exc.error_code
        raise StackError(
            f"registering run {run_id} as '{model_name}' failed: {first} (rerun the pipeline: "
            "a version this attempt left unfinished is removed then)"
        ) from None


def _register_locked(
    client: Any, run_id: str, model_uri: str, model_name: str, decision: Decision
) -> Registration:
    import mlflow

    for mv in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        full = client.get_model_version(model_name, mv.version)
        aliases = sorted(full.aliases)
        if full.tags.get(tracking.TAG_REGISTRATION) == COMPLETE or aliases:
            return Registration(model_name, str(full.version), ", ".join(aliases), False)
        # an earlier attempt died between creating the version and completing it: start again
        client.delete_model_version(model_name, full.version)

    current = champion_version(model_name)
    if current != decision.champion_version:
        compared = f"v{decision.champion_version}" if decision.champion_version else "none"
        raise StackError(
            f"not registering run {run_id}: the champion is now "
            f"{'v' + current if current else 'none'}, but evaluate compared against {compared} "
            "(another registration moved it); rerun the pipeline to compare against it"
        )
    alias = CHAMPION if current is None else CHALLENGER
    previous = _alias_target(client, model_name, alias)
    tags = version_tags(client.get_run(run_id).data.tags)
    tags.update(
        {
            "mlflow_run_id": run_id,
            tracking.TAG_GATES_PASSED: "true",
            tracking.TAG_REGISTRATION: PENDING,
            **{key: f"{decision.challenger[key]:.6f}" for key in ("roc_auc", "f1")},
        }
    )
    if alias == CHAMPION:
        # the bootstrap champion (docs/lifecycle.md): the model's first version, never canaried;
        # every later @champion is moved by `mlstack rollout promote` in production only
        tags.update(
            {
                BOOTSTRAP_TAG: "true",
                "champion.by": f"registration of run {run_id} (first version: no champion yet)",
                "champion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    version = str(mv.version)
    try:
        client.set_tag(run_id, "registered_version", version)
        # the alias moves last: until then the registry's aliases are as they were
        client.set_registered_model_alias(model_name, alias, version)
        holder = _alias_target(client, model_name, alias)
        if holder != version:
            raise StackError(
                f"alias @{alias} of '{model_name}' moved to v{holder} while v{version} was "
                f"being registered (a writer outside the registration lock); v{version} removed"
            )
        client.set_model_version_tag(model_name, version, tracking.TAG_REGISTRATION, COMPLETE)
    except BaseException:
        _roll_back(client, model_name, version, alias, previous)
        raise
    return Registration(model_name, version, alias, created=True)


def _roll_back(
    client: Any, model_name: str, version: str, alias: str, previous: str | None
) -> None:
    """Best effort: delete the new version and give the alias back. What stays behind when this
    fails too is tagged ``registration=pending``, and the next registration of the run removes
    it."""
    with contextlib.suppress(Exception):
        client.delete_model_version(model_name, version)  # drops an alias that did move
        if previous is not None and _alias_target(client, model_name, alias) is None:
            client.set_registered_model_alias(model_name, alias, previous)


def find_version(model_name: str, ref: str, tracking_uri: str) -> str:
    """The registry version behind ``ref`` (a version number or an alias).

    Returns the version number; raises ``StackError`` in one line when the tracking server is
    unreachable or fails (within ``tracking.HTTP_LIMITS``), or no such version exists (for
    instance before the first pipeline run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    what = f"version {ref}" if ref.isdigit() else f"version with alias '{ref}'"
    missing = StackError(
        f"model '{model_name}' has no {what} in {tracking_uri}: "
        "register one first ('make run' or 'mlstack pipeline run')"
    )
    store = tracking_uri.removeprefix("sqlite:///")
    if store != tracking_uri and not Path(store).exists():
        raise missing  # a store never written: nothing registered (and nothing to create here)
    tracking.bound_http_retries()
    tracking.check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        if ref.isdigit():
            return str(client.get_model_version(model_name, ref).version)
        return str(client.get_model_version_by_alias(model_name, ref).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise missing from None
        text = str(exc.message).strip()
        raise StackError(
            f"MLflow at {tracking_uri} failed to look up {what} of model '{model_name}': "
            f"{text.splitlines()[0] if text else exc.error_code}"
        ) from None
