"""Deployment: write a registered model version (or a predictor image) into an environment's
overlay for Argo CD to sync (``promote``), and the Argo CD root application retargeted to a fork or
branch (``argocd``)."""
