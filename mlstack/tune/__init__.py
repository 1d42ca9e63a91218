"""Tuning: a Katib Experiment read and checked (``spec``), run on this machine with optuna
(``local``: ``LocalTuner``) or created in a cluster through the Kubernetes API (``cluster``), the
entry the tune step and the CLI call (``run``: ``tune``, ``tune_local``), and the trial's own
training entry point (``python -m mlstack.tune.trial``) that both paths run."""
