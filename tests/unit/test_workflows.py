"""The GitHub workflows read as data: what each job runs exists (make targets, scripts, repository
files, mlstack commands and options), actions are pinned, permissions are the ones the job needs.

actionlint and zizmor (tests/unit/test_manifests.py) check the syntax and the known injection
patterns; these check the workflows against this repository. Each check is a function returning
its findings, run on the real workflows (no findings) and on an edited copy (a finding)."""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from pathlib import Path

import yaml

from mlstack.cli import build_parser
from mlstack.settings import code_root

ROOT = code_root()
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
REPO_PATH = re.compile(r"^(?:\.ci|components|data|manifests|pipelines|scripts|serving)/[\w./-]+$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def commands(run: str) -> list[list[str]]:
    """A step's shell text as simple commands (continuations joined; split at ; && || | and
    redirections dropped), each a list of words with quotes removed."""
    text = run.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:  # a quote spanning a split point: not a command we check
                continue
            words = [w for w in words if not re.match(r"^\d?>", w) and w != "&"]
            if words:
                found.append(words)
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def subparser(
    parser: argparse.ArgumentParser, words: list[str]
) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub-)parser the leading words select, and the words left after them."""
    while words:
        choices = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not choices or words[0] not in choices[0].choices:
            break
        parser, words = choices[0].choices[words[0]], words[1:]
    return parser, words


def reference_errors(doc: dict) -> list[str]:
    """What a workflow runs that this repository does not have."""
    errors = []
    targets = make_targets()
    parser = build_parser()
    for step in steps(doc):
        for path in (step.get("with") or {}).values():
            if isinstance(path, str) and REPO_PATH.match(path) and not (ROOT / path).exists():
                errors.append(f"{step.get('name')}: no file {path}")
        for words in commands(step.get("run", "")):
            while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
                words = words[1:]
            if not words:
                continue
            head = words[0]
            if head == "make":
                errors += [f"no make target {t}" for t in words[1:] if t not in targets]
            if REPO_PATH.match(head) and not (ROOT / head).is_file():
                errors.append(f"no script {head}")
            installed = head == ".venv/bin/mlstack" or (ROOT / head).exists()
            if head.startswith(".venv/bin/") and not installed:
                errors.append(f"{head} is not installed by make setup")
            errors += [
                f"no file {w}" for w in words[1:] if REPO_PATH.match(w) and not (ROOT / w).exists()
            ]
            if head == ".venv/bin/mlstack":
                sub, rest = subparser(parser, words[1:])
                if sub is parser or any(
                    isinstance(a, argparse._SubParsersAction) for a in sub._actions
                ):
                    errors.append(f"not an mlstack command: {' '.join(words)}")
                    continue
                options = {o for a in sub._actions for o in a.option_strings}
                for word in rest:
                    option = word.split("=", 1)[0]
                    if option.startswith("-") and option not in options:
                        errors.append(f"{sub.prog}: no option {option}")
    return errors


def pin_errors(text: str) -> list[str]:
    """Actions not pinned by a full commit SHA with its version as a comment on the same line."""
    doc = yaml.safe_load(text)
    uses = [s["uses"] for s in steps(doc) if "uses" in s]
    uses += [job["uses"] for job in doc["jobs"].values() if "uses" in job]
    lines = [line for line in text.splitlines() if re.match(r"^\s*(- )?uses:", line)]
    errors = [] if len(lines) == len(uses) else ["a uses: line YAML does not read as a step"]
    for ref in uses:
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref):
            errors.append(f"{ref}: not pinned by a commit SHA")
    for line in lines:
        if not re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*\s*$", line):
            errors.append(f"{line.strip()}: no version comment")
    return errors


def permission_errors(doc: dict) -> list[str]:
    """Read-only by default; a job gets a write permission exactly when one of its steps uses it
    (git push or a pull request: contents; a pull request: pull-requests; an image push:
    packages); every checkout keeps no credentials."""
    errors = []
    if doc.get("permissions") != {"contents": "read"}:
        errors.append(f"workflow permissions {doc.get('permissions')}: want contents: read")
    if "concurrency" not in doc:
        errors.append("no concurrency group")
    for name, job in doc["jobs"].items():
        runs = "\n".join(s.get("run", "") for s in job.get("steps", []))
        uses = [str(s.get("uses", "")) for s in job.get("steps", [])]
        pull = any(u.startswith("peter-evans/create-pull-request@") for u in uses)
        image = any(
            u.startswith("docker/build-push-action@") and s.get("with", {}).get("push") is True
            for u, s in zip(uses, job.get("steps", []), strict=True)
        )
        needs = {
            "contents": "git push" in runs or pull,
            "pull-requests": pull,
            "packages": image,
        }
        granted = {k for k, v in (job.get("permissions") or {}).items() if v == "write"}
        for scope, needed in needs.items():
            if needed != (scope in granted):
                errors.append(f"{name}: {scope}: write {'missing' if needed else 'not needed'}")
        errors += [f"{name}: {s}: write not needed" for s in granted - set(needs)]
        for step in job.get("steps", []):
            checkout = str(step.get("uses", "")).startswith("actions/checkout@")
            if checkout and (step.get("with") or {}).get("persist-credentials") is not False:
                errors.append(f"{name}: checkout keeps its credentials")
    return errors


def test_the_workflows_the_stack_needs_are_there():
    assert {w.stem for w in WORKFLOWS} >= {"ci", "train", "promote", "build-images", "e2e-kind"}
    # ci runs the README's test command, which is the Makefile's
    [ci] = [s for s in steps(load(ROOT / ".github/workflows/ci.yml")) if "run" in s]
    assert commands(ci["run"]) == [["bash", ".ci/run"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_what_the_workflows_run_exists_in_the_repository():
    for workflow in WORKFLOWS:
        assert reference_errors(load(workflow)) == [], workflow.name
    # an edited copy: a renamed option, a missing target, script and file are each found
    doc = load(ROOT / ".github/workflows/promote.yml")
    [edit] = [s for s in doc["jobs"]["promote"]["steps"] if s.get("name") == "Edit the overlay"]
    edit["run"] = edit["run"].replace("--model-card", "--card")
    edit["run"] += "\nmake deploy\nbash scripts/nope.sh\n.venv/bin/mlstack nope\n"
    edit["run"] += "git add manifests/overlays/nowhere/promotion.yaml\n"
    errors = reference_errors(doc)
    assert len(errors) == 5, errors
    for part in ("--card", "make target deploy", "scripts/nope.sh", "mlstack nope", "nowhere"):
        assert any(part in e for e in errors), (part, errors)


def test_actions_are_pinned_by_sha_with_a_version_comment():
    for workflow in WORKFLOWS:
        assert pin_errors(workflow.read_text()) == [], workflow.name
    text = (ROOT / ".github/workflows/ci.yml").read_text()
    assert len(pin_errors(re.sub(r"@[0-9a-f]{40} # (v[\d.]+)", r"@\1", text, count=1))) == 2
    assert len(pin_errors(re.sub(r"(@[0-9a-f]{40}) # v[\d.]+", r"\1", text, count=1))) == 1


def test_permissions_are_what_each_job_needs():
    for workflow in WORKFLOWS:
        assert permission_errors(load(workflow)) == [], workflow.name
    doc = load(ROOT / ".github/workflows/build-images.yml")
    edited = copy.deepcopy(doc)
    del edited["jobs"]["build"]["permissions"]["packages"]
    edited["jobs"]["bump-staging"]["permissions"]["actions"] = "write"
    edited["jobs"]["bump-staging"]["steps"][0]["with"] = {}
    del edited["concurrency"]
    assert len(permission_errors(edited)) == 4, permission_errors(edited)
    edited = copy.deepcopy(doc)
    edited["permissions"] = "write-all"
    assert permission_errors(edited) == ["workflow permissions write-all: want contents: read"]


def e2e_stages(doc: dict) -> list[str]:
    """The e2e job's steps, in order, named by the stage of the loop they run."""
    stages = []
    for step in doc["jobs"]["e2e"]["steps"]:
        words = [w for c in commands(step.get("run", "")) for w in c]
        run = " ".join(words)
        if "make cluster-up" in run:
            stages.append("cluster")
        elif "mlstack run submit" in run and "--wait" in words:
            stages.append("train")
        elif "mlstack promote" in run and "git push" in run:
            stages.append("promote")
        elif "wait inferenceservice/churn-classifier" in run and ":predict" in run:
            stages.append("predict")
        elif "make cluster-down" in run and step.get("if") == "always()":
            stages.append("teardown")
    return stages


def test_e2e_workflow_trains_promotes_syncs_and_asserts_a_prediction():
    doc = load(ROOT / ".github/workflows/e2e-kind.yml")
    order = ["cluster", "train", "promote", "predict", "teardown"]
    assert e2e_stages(doc) == order
    assert doc["jobs"]["e2e"]["steps"][-1]["if"] == "always()"
    # moved or unguarded steps are seen
    steps_ = doc["jobs"]["e2e"]["steps"]
    steps_[-1].pop("if")
    assert e2e_stages(doc) == order[:-1]
    promote = next(s for s in steps_ if s.get("name", "").startswith("Promote"))
    steps_.insert(3, steps_.pop(steps_.index(promote)))
    assert e2e_stages(doc) != order[:-1]


def rollout_stages(doc: dict) -> list[str]:
    """The rollout job's steps, in order, named by what they do in the canary's lifecycle."""
    stages = []
    for step in doc["jobs"]["rollout"]["steps"]:
        words = [w for c in commands(step.get("run", "")) for w in c]
        run = " ".join(words)
        when = str(step.get("if", ""))
        if "mlstack rollout status" in run:
            stages.append("state")
        elif "applications.argoproj.io churn-production" in run and "Synced/Healthy" in run:
            stages.append("argocd" if "phase == 'canary'" in when else "argocd-unguarded")
        elif "mlstack rollout analyze" in run:
            # repeated on exit 10 (wait) until a deadline; 0 and 20 are the verdicts; a forced
            # verdict skips it
            loop = all(f"{code})" in step["run"] for code in ("0", "10", "20"))
            forced = '"$VERDICT" != analyze' in step["run"] and "deadline" in step["run"]
            stages.append("analyze" if loop and forced else "analyze-incomplete")
        elif "mlstack rollout rollback" in run and "git push" in run:
            stages.append("rollback" if "'rollback'" in when else "rollback-unguarded")
        elif "mlstack rollout promote" in run and "--no-commit" in words:
            stages.append("promote" if "'promote'" in when else "promote-unguarded")
        elif "mlstack rollout promote" in run:
            stages.append("record" if "'stable'" in when else "record-unguarded")
        elif str(step.get("uses", "")).startswith("peter-evans/create-pull-request@"):
            stages.append("pull-request" if "'promote'" in when else "pull-request-unguarded")
    return stages


def test_rollout_workflow_waits_for_argocd_analyzes_then_acts_through_git():
    doc = load(ROOT / ".github/workflows/rollout.yml")
    order = ["state", "record", "argocd", "analyze", "rollback", "promote", "pull-request"]
    assert rollout_stages(doc) == order
    triggers = doc[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["paths"] == ["manifests/overlays/production/promotion.yaml"]
    verdicts = triggers["workflow_dispatch"]["inputs"]["verdict"]
    assert verdicts["options"] == ["analyze", "promote", "rollback"]
    assert doc["concurrency"]["cancel-in-progress"] is False  # never two rollouts at once
    # moved, unguarded or incomplete steps are seen
    steps_ = doc["jobs"]["rollout"]["steps"]
    analyze = next(s for s in steps_ if s.get("id") == "verdict")
    analyze["run"] = analyze["run"].replace("10) ;;", "")
    rollback = next(s for s in steps_ if "rollout rollback" in s.get("run", ""))
    rollback.pop("if")
    assert rollout_stages(doc) == [
        "state", "record", "argocd", "analyze-incomplete", "rollback-unguarded", "promote",
        "pull-request",
    ]  # fmt: skip


def dvc_remote_errors(doc: dict) -> list[str]:
    """DVC transfers that do not name their remote: DVC reads the remote from its own config (the
    repository's default, `local`), never from MLSTACK_DVC_REMOTE, so a runner would pull from a
    directory it does not have. Data goes through `mlstack`, which reads the setting, or `dvc -r`."""
    errors = []
    for step in steps(doc):
        for words in commands(step.get("run", "")):
            transfer = words[0].endswith("dvc") and words[1:2] in (["pull"], ["push"], ["fetch"])
            named = {"-r", "--remote"} & set(words) or any(w.startswith("--remote=") for w in words)
            if transfer and not named:
                errors.append(f"{step.get('name')}: {' '.join(words)} names no remote")
    return errors


def test_continuous_training_reads_data_through_the_remote_setting_and_has_no_cron():
    for workflow in WORKFLOWS:
        assert dvc_remote_errors(load(workflow)) == [], workflow.name
    doc = load(ROOT / ".github/workflows/train.yml")
    [data] = [s for s in steps(doc) if s.get("id") == "data"]
    assert [".venv/bin/mlstack", "pipeline", "check-data", "--rev", "$DATA_REV"] in commands(
        data["run"]
    )
    assert doc["jobs"]["train"]["env"]["MLSTACK_DVC_REMOTE"] == "s3"
    # the recurring schedule is KFP's (pipelines/schedules.yaml): one schedule, not two
    assert "schedule" not in doc[True]  # YAML 1.1 reads the key `on` as True
    # the step this replaced is found
    data["run"] = ".venv/bin/dvc pull data/churn.csv.dvc\n.venv/bin/dvc pull -r s3 x.dvc\n"
    assert dvc_remote_errors(doc) == [
        "Read the data version: .venv/bin/dvc pull data/churn.csv.dvc names no remote"
    ]
