"""Periodic, checksummed orbax checkpoints of one training stage.

Layout of one stage's run directory (``Checkpoints(directory)``)::

    directory/latest/<step>/{state,metadata,checksums.json}   last ``max_to_keep`` steps
    directory/best/<step>/{state,metadata,metrics,checksums.json}   the best step by accuracy
    directory/corrupt/<latest|best>-<step>   steps that failed verification, moved aside

``state`` is any pytree of ``jax.Array`` / ``np.ndarray`` (the train state: a
``flax.struct.dataclass`` holding params, batch stats and an optax state); ``metadata``
is JSON. Checksums are written once orbax has committed a step (in a background thread
for asynchronous saves); restores follow the protocol of
:func:`sastc_jax.checkpoints.restore.restore_verified`, and :meth:`Checkpoints.resume`
moves a step that fails it to ``corrupt/`` and falls back to the newest intact one.

Every process of a multi-process (``jax.distributed``) run must make the same calls in
the same order: orbax coordinates the processes, writes each step to a temporary
directory and renames it once complete (uncommitted temporary directories are never
listed, and are removed when a ``Checkpoints`` is opened); process 0 writes the checksums
and moves corrupt steps aside; every process verifies what it reads and all agree on the
outcome. Restores go into the target's shapes, dtypes and shardings, so a checkpoint
saved on one device count restores on another (the state is replicated).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from sastc_jax.checkpoints import integrity
from sastc_jax.checkpoints.errors import CheckpointError, CorruptCheckpointError
from sastc_jax.checkpoints.integrity import CORRUPT, INTERRUPTED_SAVE, describe, short
from sastc_jax.checkpoints.restore import open_manager, restore_verified, to_json

log = logging.getLogger(__name__)

PyTree = Any
STATE, METADATA = "state", "metadata"
BEST_METRIC = "accuracy"
STAGE_CHECKPOINTS = ("latest", "best")


def _accuracy(metrics: Mapping[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


def _metadata_problem(restored: Mapping[str, Any]) -> str:
    metadata = restored[METADATA]
    if isinstance(metadata, dict):
        return ""
    return f"its metadata is not a dict (found {type(metadata).__name__})"


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What :meth:`Checkpoints.resume` restored: the state, its metadata, step and path."""

    state: PyTree
    metadata: dict
    step: int
    path: epath.Path


class Checkpoints:
    """Periodic, checksummed checkpoints of one training stage under ``directory``.

    Two orbax CheckpointManagers: ``directory/latest`` keeps the last ``max_to_keep``
    steps; ``directory/best`` keeps only the single best step by eval ``accuracy``
    (higher is better). Saves are asynchronous (``async_save=True``): ``save`` returns
    once the arrays are copied off the devices, so the state's buffers may be donated
    right after; writing, then recording the checksums of the written files, finishes in
    the background. A save waits for the previous one of the same kind (``latest/`` or
    ``best/``) to finish, and raises its error. ``restore``, ``resume``,
    ``wait_until_finished``, ``close``, leaving the ``with`` block and interpreter exit
    wait for pending saves.
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = integrity.as_path(directory)
        self._latest = open_manager(
            self.directory / "latest",
            items=(STATE, METADATA),
            preservation=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            async_save=async_save,
            key_prefix="sastc_latest",
        )
        open_best = functools.partial(
            open_manager,
            self.directory / "best",
            items=(STATE, METADATA),
            preservation=ocp.checkpoint_managers.BestN(
                get_metric_fn=_accuracy, n=1, keep_checkpoints_without_metrics=False
            ),
            best_fn=_accuracy,
            async_save=async_save,
            key_prefix="sastc_best",
        )
        try:
            try:
                self._best = open_best()
            except CheckpointError:
                # orbax reads the metrics of every best/ step on opening: a corrupt one
                # fails it. Move failing steps aside, then open again.
                if not integrity.quarantine_corrupt_steps(self.directory / "best"):
                    raise
                self._best = open_best()
        except CheckpointError:
            self._latest.close()
            raise
        self._best_record = self._read_best()
        # Background checksumming of committed saves: (step, future) per manager directory.
        self._checksummer = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="checkpoint-checksums"
        )
        self._pending: dict[epath.Path, tuple[int, concurrent.futures.Future]] = {}
        self._verified_lock = threading.Lock()
        self._verified: int | None = None
        self._failed = False  # a save failed (reported once; orbax repeats it on close)
        self._closed = False
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    def _read_best(self) -> tuple[int, dict] | None:
        """The best step and its metrics; None if there is none or it cannot be read
        (``resume`` then verifies that step and moves it aside)."""
        try:
            step = self._best.best_step()
            if step is None:
                return None
            metrics = self._best.metrics(step)
            return step, dict(metrics) | {BEST_METRIC: _accuracy(metrics)}
        except Exception as err:
            log.warning(
                "cannot read the metrics of the best checkpoint in %s: %s",
                self._best.directory,
                short(err),
            )
            return None

    def latest_step(self) -> int | None:
        """Newest step under ``latest/`` (including one still being written), or None."""
        return self._latest.latest_step()

    def verified_step(self) -> int | None:
        """Newest step known intact in this session: restored after verification, or
        saved and checksummed from its committed files. None if there is none yet."""
        with self._verified_lock:
            return self._verified

    def _mark_verified(self, step: int) -> None:
        with self._verified_lock:
            self._verified = step if self._verified is None else max(self._verified, step)

    def best(self) -> tuple[int, dict] | None:
        """``(step, metrics)`` of the best checkpoint, or None if none was saved."""
        if self._best_record is None:
            return None
        step, metrics = self._best_record
        return step, dict(metrics)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        metadata: dict,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Save ``state`` and JSON ``metadata`` at ``step`` under ``latest/``.

        If ``metrics['accuracy']`` beats the best accuracy so far (finite, strictly
        higher), the same step is also saved under ``best/`` with ``metrics``.
        A step already present under ``latest/`` is skipped (the stored one is kept)
        unless ``force=True``, which replaces it. Every process must call this with
        the same arguments. Returns whether anything was written.
        """
        step = int(step)
        metadata = to_json(metadata, "metadata")
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), METADATA: ocp.args.JsonSave(metadata)}
        )
        wrote = self._write(self._latest, step, args, metrics=None, replace=force)
        if metrics is None:
            return wrote
        metrics = to_json(metrics, "metrics")
        accuracy = metrics.get(BEST_METRIC)
        if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
            log.warning("metrics at step %d have no finite %r: best/ unchanged", step, BEST_METRIC)
            return wrote
        if self._best_record is not None and accuracy <= self._best_record[1][BEST_METRIC]:
            return wrote
        self._write(self._best, step, args, metrics=metrics, replace=True)
        self._best_record = (step, metrics)
        return True

    def _write(
        self,
        manager: ocp.CheckpointManager,
        step: int,
        args: ocp.args.Composite,
        *,
        metrics: dict | None,
        replace: bool,
    ) -> bool:
        path = manager.directory / str(step)
        self._finish(manager)
        try:
            if step in manager.all_steps():
                if not replace:
                    log.info("checkpoint %s exists: not saved again", path)
                    return False
                manager.wait_until_finished()
                manager.delete(step)
            manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as err:
            raise CheckpointError(
                f"cannot save the checkpoint at {path} (step {step}): {short(err)}. {self._kept()}"
            ) from err
        future = self._checksummer.submit(self._record_checksums, manager, step)
        self._pending[manager.directory] = (step, future)
        return True

    def _record_checksums(self, manager: ocp.CheckpointManager, step: int) -> None:
        """Background: wait until orbax committed ``step``, then checksum its files."""
        manager.wait_until_finished()  # raises the error of the asynchronous write
        if jax.process_index() == 0:
            integrity.write_checksums(manager.directory / str(step))
        if manager is self._latest:
            self._mark_verified(step)

    def _finish(self, manager: ocp.CheckpointManager) -> None:
        """Wait for ``manager``'s pending save and its checksums; raise its error."""
        pending = self._pending.pop(manager.directory, None)
        if pending is None:
            return
        step, future = pending
        try:
            future.result()
        except Exception as err:
            self._failed = True
            path = manager.directory / str(step)
            raise CheckpointError(
                f"cannot save the checkpoint at {path} (step {step}): {short(err)}. {self._kept()}"
            ) from err

    def _kept(self) -> str:
        verified = self.verified_step()
        if verified is None:
            return "No checkpoint of this run was verified before it."
        return (
            f"The earlier checkpoints are kept (the last verified one is step {verified}); "
            "fix the cause (e.g. free disk space) and rerun the same command to resume."
        )

    def restore(self, target: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """Verify, then restore ``step`` (default: the latest) into the structure of ``target``.

        ``target`` is a concrete pytree like the live state or a tree of
        ``jax.ShapeDtypeStruct`` (with ``.sharding``; without one, arrays are replicated
        over all devices). Values are cast to the target's dtypes and placed with its
        shardings. Returns ``(state, metadata)``. Raises CorruptCheckpointError if the
        step fails verification (nothing is moved; ``resume`` falls back instead), and
        CheckpointError if there is no such step or it does not fit ``target``.
        """
        return self._restore(self._latest, target, step)

    def restore_best(self, target: PyTree) -> tuple[PyTree, dict]:
        """Restore the best checkpoint (see ``restore``); CheckpointError if there is none."""
        if self._best_record is None:
            raise CheckpointError(
                f"no best checkpoint in {self._best.directory}: it is written by "
                "save(..., metrics={'accuracy': ...}). Train (or evaluate) this stage first."
            )
        return self._restore(self._best, target, self._best_record[0])

    def _restore(
        self, manager: ocp.CheckpointManager, target: PyTree, step: int | None
    ) -> tuple[PyTree, dict]:
        self.wait_until_finished()
        manager.reload()  # see steps deleted or added since this object was opened
        steps = manager.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"no checkpoint in {manager.directory}: nothing to restore. Start the "
                    "stage from scratch, or point --workdir at the run that holds its "
                    "checkpoints."
                )
            step = max(steps)
        elif (step := int(step)) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {manager.directory} (steps there: "
                f"{sorted(steps) or 'none'}). Restore one of those, or use another --workdir."
            )
        path = manager.directory / str(step)
        older = [s for s in steps if s < step]
        fallback = f"; resuming the run then falls back to step {max(older)}" if older else ""
        fix = (
            f"move or delete {path}{fallback}, or use another --workdir (or the config "
            "that wrote it)."
        )
        return self._load(manager, target, step, fix)

    def _load(
        self, manager: ocp.CheckpointManager, target: PyTree, step: int, fix: str
    ) -> tuple[PyTree, dict]:
        """``step`` restored by the restore protocol into ``target``."""
        path = manager.directory / str(step)
        restored = restore_verified(
            manager,
            step,
            item=STATE,
            json_items=(METADATA,),
            target=target,
            where=f"the checkpoint at {path} (step {step})",
            fix=fix,
            validate=_metadata_problem,
        )
        self._mark_verified(step)
        return restored[STATE], restored[METADATA]

    def resume(self, target: PyTree) -> Resumed | None:
        """Restore the newest intact checkpoint of this stage into ``target``.

        Candidates, newest first: the steps under ``latest/``, then the ``best/`` step
        where it is newer than every intact ``latest/`` step. A step that fails the
        restore protocol (its checksums, orbax's restore, finite values) is logged with
        its path and reason, moved to ``directory/corrupt/`` and skipped. The ``best/``
        step is verified even when not restored, so ``best()`` only reports an intact one.
        Returns None when the stage has no checkpoint, or only saves that never finished
        (no ``checksums.json``: moved aside, the stage starts from scratch); raises
        CorruptCheckpointError when it had finished ones but none is intact (all are then
        moved aside: a rerun starts the stage from scratch), CheckpointError when the
        newest intact one does not fit ``target`` (another config).
        """
        self.wait_until_finished()
        rejected, interrupted = [], []

        def reject(manager: ocp.CheckpointManager, step: int, reason: str) -> None:
            path = manager.directory / str(step)
            integrity.quarantine(path, reason)
            manager.reload()
            (interrupted if reason == INTERRUPTED_SAVE else rejected).append(f"{path}: {reason}")

        for manager in (self._latest, self._best):
            manager.reload()
        for step in self._best.all_steps():
            if problems := integrity.verify_step(self._best.directory / str(step)):
                reject(self._best, step, describe(problems))
        self._best_record = self._read_best()

        candidates = [(step, 1, self._latest) for step in self._latest.all_steps()]
        candidates += [(step, 0, self._best) for step in self._best.all_steps()]
        for step, _, manager in sorted(candidates, key=lambda c: c[:2], reverse=True):
            path = manager.directory / str(step)
            try:
                fix = f"use the config that wrote {path}, or another --workdir."
                state, metadata = self._load(manager, target, step, fix)
            except CorruptCheckpointError as err:
                reject(manager, step, err.reason)
                if manager is self._best:
                    self._best_record = self._read_best()
                continue
            return Resumed(state=state, metadata=metadata, step=step, path=path)
        # Collective, so that every process raises or starts from scratch alike.
        if not integrity.all_processes_agree(not rejected):
            raise CorruptCheckpointError(
                f"no intact checkpoint in {self.directory}: "
                + "; ".join(rejected + interrupted or [integrity.FAILED_ELSEWHERE])
                + f". They were moved to {self.directory / CORRUPT}; rerun to start this "
                "stage from scratch, or put intact copies back."
            )
        if interrupted:
            # Only saves that never finished (e.g. the process was killed while writing
            # the first checkpoint): nothing was lost, so the stage starts from scratch.
            log.warning(
                "%s holds no finished checkpoint (only interrupted saves, moved to %s): "
                "starting this stage from scratch",
                self.directory,
                self.directory / CORRUPT,
            )
        return None

    def wait_until_finished(self) -> None:
        """Block until all pending asynchronous saves are written and checksummed
        (raises their errors as CheckpointError)."""
        try:
            self._finish(self._latest)
        finally:
            self._finish(self._best)

    def close(self) -> None:
        """Finish pending saves and release orbax's resources; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        try:
            self.wait_until_finished()
        finally:
            self._checksummer.shutdown()
            for manager in (self._latest, self._best):
                try:
                    manager.close()
                except Exception as err:
                    if not self._failed:  # else orbax re-raises the failure _finish reported
                        raise CheckpointError(
                            f"cannot close {manager.directory}: {short(err)}"
                        ) from err

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_at_exit(ref: weakref.ref[Checkpoints]) -> None:
    """atexit hook: finish the pending saves of a Checkpoints that was not closed."""
    checkpoints = ref()
    if checkpoints is not None:
        checkpoints.close()


def load_stage_state(directory: str | os.PathLike, *, which: str = "latest") -> tuple[PyTree, dict]:
    """Read the state a training stage saved under ``directory/<which>``, without a target.

    ``which`` is ``'latest'`` (the newest step) or ``'best'`` (the best by accuracy). Nothing
    is created or cleaned up. Returns ``(state, metadata)``: the state as nested dicts of
    replicated arrays with the stored shapes and dtypes (a ``TrainState`` reads back as
    ``{'step', 'params', 'batch_stats', 'opt_state'}``). Raises CheckpointError if there is
    no such checkpoint or it cannot be read, CorruptCheckpointError if it fails the
    restore protocol (checksums, orbax's restore, finite values).
    """
    if which not in STAGE_CHECKPOINTS:
        raise ValueError(f"which must be one of {STAGE_CHECKPOINTS}; got {which!r}.")
    path = integrity.as_path(directory) / which
    missing = CheckpointError(
        f"no {which} checkpoint in {path}: train this stage first (it saves there), or point "
        "at the run directory that holds it."
    )
    if not path.exists():
        raise missing
    with open_manager(
        path, items=(STATE, METADATA), reading=True, key_prefix=f"sastc_read_{which}"
    ) as manager:
        step = manager.latest_step()
        if step is None:
            raise missing
        restored = restore_verified(
            manager,
            step,
            item=STATE,
            json_items=(METADATA,),
            where=f"the checkpoint at {path / str(step)}",
            fix=f"delete {path / str(step)} or use another checkpoint.",
        )
    return restored[STATE], restored[METADATA]
