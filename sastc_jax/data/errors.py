"""Errors raised by the input pipelines."""

from __future__ import annotations

import contextlib
import gzip
import pickle
import zlib
from collections.abc import Iterator

# What reading a damaged or unreadable data file raises: a gzip cut short (EOFError), a
# failed CRC or bad header (gzip.BadGzipFile, an OSError), a corrupt deflate stream
# (zlib.error), a broken pickle, a permission or I/O error.
READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, pickle.UnpicklingError)


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


class DataFileError(ValueError):
    """A data file exists but cannot be read or decoded; ``path`` names it. The message
    says what was found and what to do."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


@contextlib.contextmanager
def reading(path: str, remedy: str) -> Iterator[None]:
    """Turn :data:`READ_ERRORS` raised while reading ``path`` into a :class:`DataFileError`
    naming the file, the error and ``remedy`` (what to do, e.g. how to get it again)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except READ_ERRORS as error:
        reason = str(error) or "no further detail"
        raise DataFileError(
            f"cannot read {path}: {type(error).__name__}: {reason}. The file is damaged "
            f"(truncated or altered) or unreadable; {remedy}",
            path,
        ) from error
