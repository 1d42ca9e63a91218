"""``mlstack tune``: run the Katib Experiment locally (optuna)."""

from __future__ import annotations

import argparse
import sys

from mlstack.cli.output import add_output_option, emit
from mlstack.settings import Settings


def _tune(args: argparse.Namespace, settings: Settings) -> None:
    from mlstack.data.versions import resolve_rev
    from mlstack.tune.local import trial_line
    from mlstack.tune.run import tune_local
    from mlstack.tune.spec import load

    exp = load(args.experiment or settings.katib_experiment)
    live = sys.stderr.isatty()  # a live bar for a terminal; else one line per trial (no \r)
    repo = str(settings.repo_root)
    sha = resolve_rev(repo, args.rev)
    result = tune_local(
        exp,
        tracking_uri=settings.mlflow_tracking_uri,
        experiment_name=settings.experiment_name,
        repo=repo,
        data_rev=sha,
        parallel=args.parallel,
        max_trials=args.max_trials,
        progress=live,
        on_trial=None if live else lambda t: print(trial_line(exp, t), file=sys.stderr, flush=True),
    )
    emit(args, result.render(), result.to_dict())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the tune command(s) to the ``mlstack`` parser's sub-commands."""
    tune = sub.add_parser("tune", help="run the Katib Experiment locally (optuna)")
    tune.add_argument("--experiment", help="Experiment YAML (default katib/experiment.yaml)")
    tune.add_argument("--rev", default="HEAD", help="git rev of the data version")
    tune.add_argument("--parallel", type=int, help="override parallelTrialCount")
    tune.add_argument("--max-trials", type=int, help="lower maxTrialCount")
    add_output_option(tune)
    tune.set_defaults(func=_tune)
