"""The compiled pipelines on a real KFP endpoint: submit a run, and keep recurring runs in sync
with ``pipelines/schedules.yaml`` (declared in git, like everything else here).

Both take a ``kfp.Client`` (or anything with its methods), so the logic is tested against the
client's interface; ``connect`` gives a clear one-line error when no endpoint answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlstack.errors import StackError

MANAGED = "mlstack-sync:"  # description prefix of the recurring runs this module owns


def connect(endpoint: str) -> Any:
    """A ``kfp.Client`` for ``endpoint``; the client checks the endpoint's health when made, so
    an unreachable endpoint is a ``StackError`` (one line, the reason in a few words)."""
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return kfp.Client(host=endpoint)
    except Exception as exc:  # urllib3, kfp_server_api and config errors alike
        raise StackError(f"no KFP endpoint reachable at {endpoint}: {_reason(exc)}") from None


def _reason(exc: Exception, limit: int = 160) -> str:
    """The cause of a failed connection in a few words: the OS error when there is one (urllib3
    wraps it in a long repr), else the message's first line, cut at a word."""
    text = str(exc)
    if errno := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text):
        return errno.group(1).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " …"


@dataclass(frozen=True)
class Submitted:
    run_id: str
    url: str


def submit(
    client: Any,
    *,
    endpoint: str,
    ir_path: Path,
    arguments: dict[str, Any],
    experiment: str,
    git_sha: str,
    wait_seconds: int | None = None,
    service_account: str | None = None,
) -> Submitted:
    """Create a run of the compiled pipeline; the git SHA names the run (KFP v2 runs carry no
    labels) and is the ``data_rev`` argument unless one is given.

    Returns the run's id and UI address; with ``wait_seconds``, raises ``StackError`` when the
    run does not succeed in that time (KFP's client errors pass through)."""
    name = f"{ir_path.stem}-{git_sha[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = client.create_run_from_pipeline_package(
        str(ir_path),
        arguments={"data_rev": git_sha, **arguments},
        run_name=name,
        experiment_name=experiment,
        service_account=service_account,
    )
    submitted = Submitted(result.run_id, f"{endpoint.rstrip('/')}/#/runs/details/{result.run_id}")
    if wait_seconds:
        run = client.wait_for_run_completion(result.run_id, timeout=wait_seconds)
        state = str(getattr(run, "state", "")).upper()
        if state != "SUCCEEDED":
            raise StackError(
                f"run {result.run_id} ended {state or 'without a state'}: {submitted.url}"
            )
    return submitted


@dataclass(frozen=True)
class Schedule:
    name: str
    pipeline: str  # IR file name under pipelines/
    cron: str  # KFP's cron: six fields, seconds first
    git_sha: str  # the pipeline version: the IR as committed at this SHA
    parameters: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1
    enabled: bool = True

    @property
    def fingerprint(self) -> str:
        """A short hash of the whole declaration: a changed schedule is replaced."""
        spec = json.dumps(self.__dict__, sort_keys=True, default=str)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    @property
    def version_name(self) -> str:
        """The KFP pipeline version's name: the IR's name and the pinned SHA."""
        return f"{Path(self.pipeline).stem}-{self.git_sha[:12]}"


_SCHEDULE_KEYS = {"name", "pipeline", "cron", "git_sha", "parameters", "max_concurrency", "enabled"}


def load_schedules(path: Path) -> tuple[str, list[Schedule]]:
    """The experiment and the schedules a ``schedules.yaml`` declares; errors (``StackError``)
    name the entry."""
    doc = yaml.safe_load(path.read_text()) or {}
    experiment = doc.get("experiment")
    if not experiment:
        raise StackError(f"{path}: 'experiment' is missing")
    out = []
    for i, raw in enumerate(doc.get("schedules") or []):
        where = f"{path}: schedules[{i}]"
        unknown = sorted(set(raw) - _SCHEDULE_KEYS)
        if unknown:
            raise StackError(f"{where}: unknown key(s) {unknown}")
        missing = sorted({"name", "pipeline", "cron", "git_sha"} - set(raw))
        if missing:
            raise StackError(f"{where}: missing {missing}")
        if len(str(raw["cron"]).split()) != 6:
            raise StackError(f"{where}: cron {raw['cron']!r} needs six fields (seconds first)")
        if len(str(raw["git_sha"])) != 40:
            raise StackError(f"{where}: git_sha must be a full 40-character commit SHA")
        out.append(Schedule(**raw))
    names = [s.name for s in out]
    if len(names) != len(set(names)):
        raise StackError(f"{path}: schedule names must be unique")
    return experiment, out


@dataclass(frozen=True)
class Plan:
    create: list[Schedule]
    replace: list[tuple[Schedule, str]]  # (desired, id of the recurring run it replaces)
    delete: list[tuple[str, str]]  # (name, id)
    keep: list[str]

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not (self.create or self.replace or self.delete)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (``mlstack schedules sync -o json``)."""
        return {
            "create": [s.name for s in self.create],
            "replace": [s.name for s, _ in self.replace],
            "delete": [name for name, _ in self.delete],
            "keep": list(self.keep),
        }

    def render(self) -> str:
        """The plan as the lines ``mlstack schedules sync`` prints."""
        lines = [f"+ create  {s.name} ({s.cron}, {s.version_name})" for s in self.create]
        lines += [f"~ replace {s.name} ({s.cron}, {s.version_name})" for s, _ in self.replace]
        lines += [f"- delete  {name}" for name, _ in self.delete]
        lines += [f"= keep    {name}" for name in self.keep]
        return "\n".join(lines) or "nothing declared, nothing managed"


def plan(desired: list[Schedule], actual: list[Any]) -> Plan:
    """Compare the declared schedules with the recurring runs this module manages (the ones whose
    description starts with ``mlstack-sync:``); others are never touched."""
    managed = {
        r.display_name: r
        for r in actual
        if str(getattr(r, "description", "") or "").startswith(MANAGED)
    }
    create, replace, keep = [], [], []
    for schedule in desired:
        current = managed.pop(schedule.name, None)
        if current is None:
            create.append(schedule)
        elif current.description != MANAGED + schedule.fingerprint:
            replace.append((schedule, current.recurring_run_id))
        else:
            keep.append(schedule.name)
    delete = [(name, r.recurring_run_id) for name, r in sorted(managed.items())]
    return Plan(create, replace, delete, keep)


def list_recurring_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every recurring run of the experiment, all pages."""
    runs: list[Any] = []
    token = ""
    while True:
        page = client.list_recurring_runs(
            page_token=token, page_size=100, experiment_id=experiment_id
        )
        runs += page.recurring_runs or []
        token = page.next_page_token or ""
        if not token:
            return runs


def ir_at(repo: Path, sha: str, *, pipeline: str, out: Path) -> Path:
    """The compiled pipeline as committed at ``sha`` (the pinned pipeline version), written to
    ``out``; returns ``out``. ``StackError`` when git has no such file at ``sha``."""
    done = subprocess.run(
        ["git", "-C", str(repo), "show", f"{sha}:pipelines/{pipeline}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"pipelines/{pipeline} at {sha[:12]}: {done.stderr.strip()}")
    out.write_text(done.stdout)
    return out


def sync(
    client: Any,
    repo: Path,
    *,
    experiment: str,
    desired: list[Schedule],
    dry_run: bool,
    service_account: str | None = None,
) -> Plan:
    """Make KFP's recurring runs match ``desired``; with ``dry_run`` only return the plan.

    Returns the plan (made or to make). Raises ``StackError`` when a pinned IR is not in git at
    its SHA; KFP's client errors pass through."""
    try:
        experiment_id = client.get_experiment(experiment_name=experiment).experiment_id
    except Exception:
        if dry_run:
            return plan(desired, [])
        experiment_id = client.create_experiment(experiment).experiment_id
    the_plan = plan(desired, list_recurring_runs(client, experiment_id))
    if dry_run or the_plan.empty:
        return the_plan
    for _name, run_id in [*the_plan.delete, *((s.name, i) for s, i in the_plan.replace)]:
        client.delete_recurring_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        for schedule in [*the_plan.create, *(s for s, _ in the_plan.replace)]:
            version = _pipeline_version(client, repo, schedule, Path(tmp))
            client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=schedule.name,
                description=MANAGED + schedule.fingerprint,
                cron_expression=schedule.cron,
                max_concurrency=schedule.max_concurrency,
                no_catchup=True,
                params=schedule.parameters,
                pipeline_id=version[0],
                version_id=version[1],
                enabled=schedule.enabled,
                enable_caching=False,  # a schedule's data_rev is usually a branch: never reuse
                service_account=service_account,
            )
    return the_plan


def _pipeline_version(client: Any, repo: Path, schedule: Schedule, tmp: Path) -> tuple[str, str]:
    """(pipeline id, version id) of the IR at the schedule's SHA, uploaded once per SHA."""
    package = ir_at(repo, schedule.git_sha, pipeline=schedule.pipeline, out=tmp / schedule.pipeline)
    pipeline_name = Path(schedule.pipeline).stem
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name)
        pipeline_id = pipeline.pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    for version in versions:
        if version.display_name == schedule.version_name:
            return pipeline_id, version.pipeline_version_id
    created = client.upload_pipeline_version(
        str(package), pipeline_version_name=schedule.version_name, pipeline_id=pipeline_id
    )
    return pipeline_id, created.pipeline_version_id
