"""Preemption: SIGTERM (or JAX's multi-process preemption notice) saves a checkpoint at
the next step and stops with :class:`Preempted`; rerunning the command resumes."""

from __future__ import annotations

import signal

import jax


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


class SigtermFlag:
    """Set by SIGTERM; the loop saves a checkpoint and stops at the next step.

    Multi-process runs leave SIGTERM to JAX's preemption notifier (installed by
    ``jax.distributed.initialize``) and ask ``stop_at(step)`` at every step: every process
    then stops at the same step, however far apart their signals arrive.
    """

    def __init__(self):
        self.raised = False
        self._previous = None

    def stop_at(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (call once per step, on every process)."""
        if jax.process_count() == 1:
            return self.raised
        from jax.experimental import multihost_utils

        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled
            return False

    def __enter__(self):
        if jax.process_count() > 1:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
