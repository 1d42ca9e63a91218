"""Moved to ``tests.support.kube``; this name stays only until in-flight work imports that."""

from tests.support.kube import KustomizeLoader, render

__all__ = ["KustomizeLoader", "render"]
