"""The errors of checkpoint reading and writing."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, partial or does not fit the requested state."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint failed verification: a file is missing, truncated or altered, its
    checksums are missing (an interrupted save), orbax cannot read it, or a restored
    value is not finite. ``reason`` says which, without the advice of the message."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class TeacherMismatchError(ValueError):
    """A teacher checkpoint holds another model or class count than the config asks for."""
