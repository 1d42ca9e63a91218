"""Moved to ``tests.support.servers``; this name stays only until in-flight work imports that."""

from tests.support.servers import call, registered_model, start, stop

__all__ = ["call", "registered_model", "start", "stop"]
