"""Helpers the tests share; nothing here ships in an image."""
