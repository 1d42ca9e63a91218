"""Run the checked-in pipeline IR on this machine with ``kfp.local`` and summarise the run.

The IR (``pipelines/training.yaml``) is the same file a cluster runs; only the runner differs:
``SubprocessRunner(use_venv=False)`` (this environment, outputs under ``.mlstack/kfp``) or, with
``runner="docker"``, ``DockerRunner`` (each step in its image, ``mlstack.pipeline.containers``,
outputs under ``.mlstack/kfp-containers``); caching on, except for evaluate and register (the IR
turns it off: their result depends on the registry as it is now). A cached step whose result
names an MLflow run the store no longer has (a lost or reset store) is not trusted: its cache
entry is dropped before the run, and the step runs again.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlstack.data import versions
from mlstack.environ import environ
from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.train import tracking
from mlstack.train.evaluation import Decision

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_PIPELINE_DONE = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")
RUNNERS = ("subprocess", "docker")
PROGRESS = "progress: "  # a step's line that the run shows live (the tune step's trials)


class _Progress(io.TextIOBase):
    """Reads kfp.local's output line by line: keeps step events and ``error:`` lines, shows a
    one-line progress per step (or everything with ``verbose``)."""

    def __init__(self, out: TextIO, verbose: bool):
        self.out = out
        self.verbose = verbose
        self.executed: list[str] = []
        self.step_errors: list[str] = []
        self._buf = ""
        self._last = ""
        self._started: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        if self.verbose:  # kfp.local's colours only for a terminal
            self.out.write((raw if _is_tty(self.out) else line) + "\n")
        if m := _EXECUTING.search(line):
            self.executed.append(m.group(1))
            self._started[m.group(1)] = time.monotonic()
            if not self.verbose:
                self.out.write(f"  ▶ {m.group(1)} …\n")
        elif m := _FINISHED.search(line):
            if m.group(2) != "SUCCESS" and not any(
                e.startswith("error: ") for e in self.step_errors
            ):
                # an unexpected exception: its last traceback line is the one that says what
                self.step_errors.append(f"error: {self._last}")
            took = time.monotonic() - self._started.get(m.group(1), time.monotonic())
            if not self.verbose:
                self.out.write(
                    f"  {'✓' if m.group(2) == 'SUCCESS' else '✗'} {m.group(1)} "
                    f"{m.group(2).lower()} in {took:.1f}s\n"
                )
        elif PROGRESS in line and not self.verbose:  # a long step's own progress (tuning)
            self.out.write(f"    {line[line.index(PROGRESS) + len(PROGRESS) :].strip()}\n")
        elif "error: " in line and not self.verbose:
            message = line[line.index("error: ") :].strip()
            self.step_errors.append(message)
            self.out.write(f"    {message}\n")
        elif "error: " in line:
            self.step_errors.append(line[line.index("error: ") :].strip())
        elif line.strip() and " - INFO - " not in line and not line.startswith("-----"):
            self._last = line.strip()
        self.out.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class RunSummary:
    kfp_run_name: str
    run_dir: Path
    mlflow_run_id: str
    data_md5: str
    git_sha: str
    decision: Decision
    model_version: str | None
    alias: str | None
    tracking_uri: str
    seconds: float
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    registered_now: bool = False  # the version was created by this run (not an earlier one)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data (``mlstack pipeline run -o json``)."""
        d = self.decision
        return {
            "kfp_run_name": self.kfp_run_name,
            "run_dir": str(self.run_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "data_md5": self.data_md5,
            "git_sha": self.git_sha,
            "tracking_uri": self.tracking_uri,
            "seconds": round(self.seconds, 3),
            "executed": self.executed,
            "cached": self.cached,
            "metrics": d.challenger,
            "champion": {"version": d.champion_version, "metrics": d.champion},
            "gates": [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in d.gates],
            "passed": d.passed,
            "model_version": self.model_version,
            "alias": self.alias,
            "registered_now": self.registered_now,
        }

    def render(self) -> str:
        """The summary as the lines ``mlstack pipeline run`` prints."""
        d = self.decision
        lines = [
            f"KFP run        {self.kfp_run_name}  ({self.run_dir})",
            f"wall time      {self.seconds:.1f}s; executed: {', '.join(self.executed) or 'none'}; "
            f"from cache: {', '.join(self.cached) or 'none'}",
            f"data           md5 {self.data_md5} at git {self.git_sha[:12]}",
            f"MLflow run     {self.mlflow_run_id}  ({self.tracking_uri})",
            "metrics        "
            + ", ".join(f"{k} {d.challenger[k]:.4f}" for k in ("roc_auc", "f1", "accuracy")),
        ]
        if d.champion is not None:
            lines.append(
                f"champion v{d.champion_version}    "
                + ", ".join(f"{k} {d.champion[k]:.4f}" for k in ("roc_auc", "f1", "accuracy"))
            )
        for gate in d.gates:
            lines.append(f"gate {gate.name:<13} {'PASS' if gate.passed else 'FAIL'}  {gate.detail}")
        # an earlier registration's alias may have moved on to a later version since
        alias = f"alias @{self.alias}" if self.alias else "no alias now (a later version has it)"
        if self.model_version and not self.registered_now:
            lines.append(f"registered     earlier: version {self.model_version}, {alias}")
        elif self.model_version:
            lines.append(f"registered     version {self.model_version}, {alias}")
        else:
            lines.append("registered     nothing (gates failed)")
        return "\n".join(lines)


def _step_names(ir_path: Path) -> list[str]:
    from mlstack.pipeline.compile import read_ir

    spec, _ = read_ir(ir_path)
    names: list[str] = []
    for comp in [spec["root"], *spec["components"].values()]:
        for task in comp.get("dag", {}).get("tasks", {}).values():
            if "executorLabel" in spec["components"].get(task["componentRef"]["name"], {}):
                names.append(task["taskInfo"]["name"])
    return sorted(set(names))


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return bool(client.get_run(run_id).info.lifecycle_stage != "deleted")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return False
        raise StackError(f"cannot read MLflow run {run_id}: {exc.message}") from None


def drop_stale_cache_entries(cache_root: Path, tracking_uri: str) -> list[str]:
    """Remove the local cache's entries whose outputs name an MLflow run (``mlflow_run_id``) that
    the store at ``tracking_uri`` does not have (or has deleted): such a step runs again instead
    of handing on a run that does not exist.

    Returns the run ids whose entries were dropped. Raises ``StackError`` when the store cannot
    be read."""
    from mlflow import MlflowClient

    named: dict[Path, str] = {}
    for entry in sorted(cache_root.glob("*.json")) if cache_root.is_dir() else []:
        try:
            outputs = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue  # kfp.local treats it as a miss itself
        run_id = outputs.get("mlflow_run_id") if isinstance(outputs, dict) else None
        if isinstance(run_id, str) and run_id:
            named[entry] = run_id
    if not named:
        return []
    store = tracking_uri.removeprefix("sqlite:///")
    gone = store != tracking_uri and not Path(store).exists()  # no store file: no run at all
    client = None if gone else MlflowClient(tracking_uri=tracking_uri)
    dropped: list[str] = []
    for entry, run_id in named.items():
        if client is None or not _run_exists(client, run_id):
            entry.unlink(missing_ok=True)
            dropped.append(run_id)
    return dropped


@contextlib.contextmanager
def _capture_run_name() -> Iterator[list[str]]:
    """kfp.local names each run ``<pipeline>-<timestamp>`` (its ``{{$.pipeline_job_name}}``) but
    does not return the name; record it as it is made, also when every step is a cache hit."""
    from kfp.local import executor_input_utils

    made: list[str] = []
    original = executor_input_utils.get_local_pipeline_resource_name

    def recording(pipeline_name: str) -> str:
        made.append(original(pipeline_name))
        return made[-1]

    executor_input_utils.get_local_pipeline_resource_name = recording
    try:
        yield made
    finally:
        executor_input_utils.get_local_pipeline_resource_name = original


def run_pipeline(
    settings: Settings,
    *,
    rev: str = "HEAD",
    arguments: dict[str, Any] | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
    ir_path: Path | None = None,
    runner: str = "subprocess",
) -> RunSummary:
    """Run a compiled pipeline (the training one by default) locally on the data at ``rev``, its
    steps in this environment or (``runner="docker"``) each in its image.

    Returns the run's summary (steps executed and cached, metrics, the gates' decision, the
    registered version). Raises ``StackError`` for an unknown runner, bad settings or a failed
    step (its error line)."""
    from kfp import components, local

    out = out or sys.stdout
    if runner not in RUNNERS:
        raise StackError(f"runner '{runner}': one of {', '.join(RUNNERS)}")
    repo = str(settings.repo_root)
    sha = versions.resolve_rev(repo, rev)
    tracking_uri = settings.mlflow_tracking_uri
    tracking.check_reachable(tracking_uri)
    ir_path = ir_path or settings.ir_path
    if not ir_path.exists():
        raise StackError(f"no compiled pipeline at {ir_path}: run 'mlstack pipeline compile'")
    if runner == "docker":
        from mlstack.pipeline import containers

        root = settings.containers_pipeline_root
        kfp_runner, cache_root = containers.setup(
            root, Path(repo), ir_path=ir_path, tracking_uri=tracking_uri
        )
        running: contextlib.AbstractContextManager[object] = containers.exit_status_kept()
    else:
        root = settings.pipeline_root
        root.mkdir(parents=True, exist_ok=True)
        kfp_runner, cache_root = local.SubprocessRunner(use_venv=False), None
        running = contextlib.nullcontext()
    cache_dir = Path(cache_root) if cache_root else root / ".kfp_cache"  # kfp.local's default
    for run_id in drop_stale_cache_entries(cache_dir, tracking_uri):
        out.write(
            f"cache: a cached step names MLflow run {run_id}, which {tracking_uri} does not "
            "have: that step runs again\n"
        )
    local.init(
        runner=kfp_runner,
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=True,
        cache_root=str(cache_root) if cache_root else None,
    )
    pipeline = components.load_component_from_file(str(ir_path))
    args = {
        "repo": repo,
        "data_rev": sha,
        "data_path": settings.data_path,
        "tracking_uri": tracking_uri,
        "experiment_name": settings.experiment_name,
        "model_name": settings.model_name,
        **(arguments or {}),
    }
    progress = _Progress(out, verbose)
    where = "in containers" if runner == "docker" else "locally"
    out.write(f"Running {ir_path.name} {where} on {settings.data_path}@{sha[:12]}\n")
    started, started_ms = time.monotonic(), int(time.time() * 1000)
    try:
        with (
            contextlib.redirect_stdout(progress),
            warnings.catch_warnings(),
            _capture_run_name() as run_name,
            running,
            _feature_store_environment(settings),
        ):
            # the local runner uses this environment, not the training image: that is the point
            warnings.filterwarnings(
                "ignore", message=".*non-Python base image", category=RuntimeWarning
            )
            task = pipeline(**args)
    except RuntimeError as exc:
        failed = re.search(r"Inner task failed: '([^']+)'", _ANSI.sub("", str(exc)))
        step = failed.group(1) if failed else "?"
        detail = progress.step_errors[-1] if progress.step_errors else _ANSI.sub("", str(exc))
        raise StackError(
            f"pipeline failed at step '{step}': {detail.removeprefix('error: ')}"
        ) from None
    seconds = time.monotonic() - started
    run_dir = root / run_name[0]

    decision = Decision.from_json(task.outputs["decision"])
    mlflow_run_id = task.outputs["mlflow_run_id"]
    version, alias, created_ms = _registration(tracking_uri, settings.model_name, mlflow_run_id)
    if decision.passed and version is None:
        raise StackError(
            f"the gates passed but '{settings.model_name}' has no version of MLflow run "
            f"{mlflow_run_id} in {tracking_uri}: rerun 'mlstack pipeline run'"
        )
    steps = _step_names(ir_path)
    executed = [s for s in steps if s in progress.executed]
    cached = [s for s in steps if s not in progress.executed and (s != "register" or version)]
    return RunSummary(
        kfp_run_name=run_dir.name,
        run_dir=run_dir,
        mlflow_run_id=mlflow_run_id,
        data_md5=task.outputs["data_md5"],
        git_sha=task.outputs["git_sha"],
        decision=decision,
        model_version=version,
        alias=alias,
        tracking_uri=tracking_uri,
        seconds=seconds,
        executed=executed,
        cached=cached,
        registered_now=version is not None and created_ms >= started_ms,
    )


def _feature_store_environment(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """The steps' feature store is this run's: ``MLSTACK_STATE_DIR`` (the embedded store's files
    under ``<state>/feast``) and, when set, ``MLSTACK_FEAST_CONFIG``/``MLSTACK_FEAST_SOURCE`` in
    the environment the local runner's step processes inherit, restored afterwards."""
    wanted = {
        "MLSTACK_STATE_DIR": str(settings.state),
        "MLSTACK_FEAST_CONFIG": settings.feast_config,
        "MLSTACK_FEAST_SOURCE": settings.feast_source,
    }
    return environ({name: value for name, value in wanted.items() if value})


def _registration(
    tracking_uri: str, model_name: str, run_id: str
) -> tuple[str | None, str | None, int]:
    """The run's version, its aliases and when it was created (ms); raises ``StackError`` when
    the run itself is not in the store (a step's result that names a run that does not exist)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if not _run_exists(client, run_id):
        raise StackError(
            f"the pipeline's result names MLflow run {run_id}, which {tracking_uri} does not "
            "have (a lost or reset store?): rerun 'mlstack pipeline run'"
        )
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if not found:
        return None, None, 0
    mv = client.get_model_version(model_name, found[0].version)
    return str(mv.version), ", ".join(sorted(mv.aliases)) or None, int(mv.creation_timestamp)
