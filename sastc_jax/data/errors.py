"""Errors raised by the input pipelines."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk where it was looked for; the message says how to get it."""
