"""Data: the churn dataset as DVC versions (``versions``: read a version at a git commit, add and
push a new one), a seeded generator for it and for drifted batches (``generate``), the checks a
version must pass before training (``validate``), and the per-feature histograms that the
predictor's drift metrics compare live traffic against (``profile``)."""
