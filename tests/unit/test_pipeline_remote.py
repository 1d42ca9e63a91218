"""`run submit` and `schedules sync` against kfp.Client's interface (no server pretended: every
call is bound to the real client's method signature, and answers are kfp_server_api models)."""

import inspect
from pathlib import Path

import kfp
import pytest
from kfp_server_api.models import (
    V2beta1Experiment,
    V2beta1ListPipelineVersionsResponse,
    V2beta1ListRecurringRunsResponse,
    V2beta1Pipeline,
    V2beta1PipelineVersion,
    V2beta1RecurringRun,
    V2beta1Run,
)

from mlstack.errors import StackError
from mlstack.pipeline import remote
from mlstack.settings import code_root, load_settings
from tests.conftest import free_port, git
from tests.support.cli import run_cli

SHA = "a" * 40


class KfpStandIn:
    """Records calls; each is first bound to kfp.Client's own signature (a wrong argument fails)."""

    def __init__(self, recurring=()):
        self.calls: list[tuple[str, dict]] = []
        self.recurring = list(recurring)

    def _record(self, name, *args, **kwargs):
        bound = inspect.signature(getattr(kfp.Client, name)).bind(self, *args, **kwargs)
        self.calls.append((name, dict(list(bound.arguments.items())[1:])))

    def get_experiment(self, experiment_id=None, experiment_name=None, namespace=None):
        self._record("get_experiment", experiment_name=experiment_name)
        return V2beta1Experiment(experiment_id="exp-1", display_name=experiment_name)

    def list_recurring_runs(
        self,
        page_token="",
        page_size=10,
        sort_by="",
        experiment_id=None,
        namespace=None,
        filter=None,
    ):
        self._record(
            "list_recurring_runs",
            page_token=page_token,
            page_size=page_size,
            experiment_id=experiment_id,
        )
        return V2beta1ListRecurringRunsResponse(recurring_runs=self.recurring, next_page_token="")

    def delete_recurring_run(self, recurring_run_id):
        self._record("delete_recurring_run", recurring_run_id)

    def create_recurring_run(self, **kwargs):
        self._record("create_recurring_run", **kwargs)

    def get_pipeline_id(self, name):
        self._record("get_pipeline_id", name)
        return None

    def upload_pipeline(
        self, pipeline_package_path, pipeline_name=None, description=None, namespace=None
    ):
        self._record("upload_pipeline", pipeline_package_path, pipeline_name=pipeline_name)
        assert "PIPELINE DEFINITION" in Path(pipeline_package_path).read_text()
        return V2beta1Pipeline(pipeline_id="p-1", display_name=pipeline_name)

    def list_pipeline_versions(
        self, pipeline_id, page_token="", page_size=10, sort_by="", filter=None
    ):
        self._record("list_pipeline_versions", pipeline_id, page_size=page_size)
        return V2beta1ListPipelineVersionsResponse(pipeline_versions=[])

    def upload_pipeline_version(
        self,
        pipeline_package_path,
        pipeline_version_name,
        pipeline_id=None,
        pipeline_name=None,
        description=None,
    ):
        self._record(
            "upload_pipeline_version",
            pipeline_package_path,
            pipeline_version_name=pipeline_version_name,
            pipeline_id=pipeline_id,
        )
        return V2beta1PipelineVersion(
            pipeline_id=pipeline_id, pipeline_version_id="v-1", display_name=pipeline_version_name
        )

    def create_run_from_pipeline_package(
        self, pipeline_file, arguments=None, run_name=None, experiment_name=None, **kw
    ):
        self._record(
            "create_run_from_pipeline_package",
            pipeline_file,
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment_name,
            **kw,
        )

        class Result:
            run_id = "run-42"

        return Result()

    def wait_for_run_completion(self, run_id, timeout, sleep_duration=5):
        self._record("wait_for_run_completion", run_id, timeout)
        return V2beta1Run(run_id=run_id, state="FAILED")

    def names(self):
        return [name for name, _ in self.calls]


def schedule(**changes) -> remote.Schedule:
    base = dict(name="weekly", pipeline="training.yaml", cron="0 17 3 * * 1", git_sha=SHA,
                parameters={"repo": "https://git.example/x.git", "data_rev": "main"})  # fmt: skip
    return remote.Schedule(**{**base, **changes})


def managed(s: remote.Schedule, run_id: str, description=None) -> V2beta1RecurringRun:
    return V2beta1RecurringRun(
        recurring_run_id=run_id,
        display_name=s.name,
        description=description or remote.MANAGED + s.fingerprint,
    )


def test_no_endpoint_is_one_clear_line():
    with pytest.raises(
        StackError, match=r"no KFP endpoint reachable at http://127.0.0.1:\d+"
    ) as err:
        remote.connect(f"http://127.0.0.1:{free_port()}")
    assert "\n" not in str(err.value)
    done = run_cli("run", "submit", "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and done.stderr.startswith("error: no KFP endpoint reachable")
    assert done.stderr.endswith(": Connection refused\n")  # the cause, in whole words
    assert done.stderr.count("\n") == 1


def test_submit_names_the_run_by_sha_and_reports_a_failed_wait():
    client = KfpStandIn()
    ir = load_settings().ir_path
    done = remote.submit(
        client,
        endpoint="http://kfp.example",
        ir_path=ir,
        arguments={"repo": "r"},
        experiment="churn",
        git_sha=SHA,
        service_account="runner",
    )
    assert done.url == "http://kfp.example/#/runs/details/run-42"
    _, call = client.calls[0]
    assert call["arguments"] == {"data_rev": SHA, "repo": "r"}
    assert call["service_account"] == "runner"
    assert call["run_name"].startswith(f"training-{SHA[:12]}-")
    with pytest.raises(StackError, match="run run-42 ended FAILED"):
        remote.submit(
            client,
            endpoint="http://kfp.example",
            ir_path=ir,
            arguments={},
            experiment="churn",
            git_sha=SHA,
            wait_seconds=60,
        )


def test_plan_creates_replaces_deletes_and_leaves_unmanaged_runs_alone():
    keep, change, gone = schedule(name="keep"), schedule(name="change"), schedule(name="gone")
    actual = [
        managed(keep, "r-keep"),
        managed(change, "r-change"),
        managed(gone, "r-gone"),
        V2beta1RecurringRun(
            recurring_run_id="r-hand", display_name="by-hand", description="someone's"
        ),
    ]
    desired = [keep, schedule(name="change", cron="0 0 4 * * 2"), schedule(name="new")]
    plan = remote.plan(desired, actual)
    assert [s.name for s in plan.create] == ["new"]
    assert [(s.name, i) for s, i in plan.replace] == [("change", "r-change")]
    assert plan.delete == [("gone", "r-gone")]
    assert plan.keep == ["keep"]
    assert "+ create  new" in plan.render() and "- delete  gone" in plan.render()
    assert remote.plan([keep], [managed(keep, "r-keep")]).empty


def test_sync_applies_the_plan_with_the_version_pinned_to_the_sha(data_repo: Path):
    (data_repo / "pipelines").mkdir()
    (data_repo / "pipelines" / "training.yaml").write_text(load_settings().ir_path.read_text())
    git(data_repo, "add", "pipelines")
    git(data_repo, "commit", "-qm", "ir")
    sha = git(data_repo, "rev-parse", "HEAD")
    desired = [schedule(git_sha=sha)]
    client = KfpStandIn(recurring=[managed(schedule(name="old"), "r-old")])
    dry = remote.sync(client, data_repo, experiment="churn", desired=desired, dry_run=True)
    assert [s.name for s in dry.create] == [
        "weekly"
    ] and "create_recurring_run" not in client.names()
    remote.sync(
        client,
        data_repo,
        experiment="churn",
        desired=desired,
        dry_run=False,
        service_account="runner",
    )
    assert ("delete_recurring_run", {"recurring_run_id": "r-old"}) in client.calls
    [created] = [c for n, c in client.calls if n == "create_recurring_run"]
    assert created["job_name"] == "weekly" and created["version_id"] == "v-1"
    assert created["cron_expression"] == "0 17 3 * * 1" and created["enable_caching"] is False
    assert created["description"] == remote.MANAGED + desired[0].fingerprint
    assert created["service_account"] == "runner"
    [uploaded] = [c for n, c in client.calls if n == "upload_pipeline_version"]
    assert uploaded["pipeline_version_name"] == f"training-{sha[:12]}"
    # applied again against what now exists: nothing to do
    again = KfpStandIn(recurring=[managed(desired[0], "r-new")])
    assert remote.sync(again, data_repo, experiment="churn", desired=desired, dry_run=False).empty
    assert "create_recurring_run" not in again.names()


def test_schedules_file_is_valid_and_errors_name_the_entry(tmp_path: Path):
    experiment, schedules = remote.load_schedules(code_root() / "pipelines" / "schedules.yaml")
    assert experiment and schedules and all(len(s.git_sha) == 40 for s in schedules)
    bad = tmp_path / "s.yaml"
    bad.write_text(
        "experiment: e\nschedules:\n  - {name: a, pipeline: training.yaml, cron: '0 3 * * 1', git_sha: x}\n"
    )
    with pytest.raises(StackError, match=r"schedules\[0\]: cron '0 3 \* \* 1' needs six fields"):
        remote.load_schedules(bad)
    bad.write_text("experiment: e\nschedules:\n  - {name: a, pipelin: training.yaml}\n")
    with pytest.raises(StackError, match=r"unknown key\(s\) \['pipelin'\]"):
        remote.load_schedules(bad)
