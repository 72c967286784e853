"""Errors raised by the input pipelines."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk where it was looked for; the message says how to get it."""


class UnreadableExampleError(ValueError):
    """One example of a split cannot be decoded; `path` names its file (None when the
    example is a record of a larger file) and `index` its position in the split."""

    def __init__(self, message: str, path: str | None, index: int | None = None):
        super().__init__(message)
        self.path = path
        self.index = index


class BatchLargerThanSplitError(ValueError):
    """A training split gives a host fewer examples than one batch (no step per epoch)."""
