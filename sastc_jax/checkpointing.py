"""Orbax checkpoints of training stages and of frozen teachers.

Layout of one stage's run directory (``Checkpoints(directory)``)::

    directory/latest/<step>/{state,metadata}   last ``max_to_keep`` steps
    directory/best/<step>/{state,metadata,metrics}   the single best step by eval accuracy

and of a teacher directory (``save_teacher(directory, ...)``)::

    directory/<n>/{variables,record}   one checkpoint; a re-save writes n + 1, then drops n

``state`` is any pytree of ``jax.Array`` / ``np.ndarray`` (the train state: a
``flax.struct.dataclass`` holding params, batch stats and an optax state); ``metadata``
and ``record`` are JSON.

Every process of a multi-process (``jax.distributed``) run must make the same calls
in the same order: orbax coordinates the processes, writes each step to a temporary
directory and renames it once complete (uncommitted temporary directories are never
listed, and are removed when a ``Checkpoints`` is opened). Nothing here writes files by
hand. Restores go into the target's shapes, dtypes and shardings, so a checkpoint saved
on one device count restores on another (the state is replicated).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

PyTree = Any
STATE, METADATA = "state", "metadata"
VARIABLES, RECORD = "variables", "record"
BEST_METRIC = "accuracy"
TEACHER_RECORD_KEYS = ("model", "num_classes", "dataset", "accuracy")
_MAX_ERROR_CHARS = 600
_MAX_MISMATCH_LINES = 8


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, partial or does not fit the requested state."""


class TeacherMismatchError(ValueError):
    """A teacher checkpoint holds another model or class count than the config asks for."""


# --------------------------------------------------------------------------- helpers


def _as_path(directory: str | os.PathLike) -> epath.Path:
    """Absolute local path, or a remote (``gs://...``) path as given."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _to_json(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (numpy/jax scalars and arrays, ConfigDicts converted)."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray | jax.Array):
            return np.asarray(obj).tolist()
        if hasattr(obj, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
            return obj.to_dict()
        raise TypeError(f"type {type(obj).__name__} ({obj!r:.80})")

    try:
        return json.loads(json.dumps(value, default=convert))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint {what} must be JSON-serializable: {err}") from err


def _short(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split()).rstrip(".")
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def _replicated_sharding() -> NamedSharding:
    """Full replication over all (global) devices."""
    return NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), PartitionSpec())


def _abstract_target(target: PyTree) -> PyTree:
    """Restore target for orbax: arrays become ShapeDtypeStructs carrying their sharding.

    ``jax.Array`` leaves keep their sharding; ``ShapeDtypeStruct`` leaves without one are
    replicated over all devices; ``np.ndarray`` and Python scalars restore as such.
    """
    replicated = None

    def leaf(x: Any) -> Any:
        nonlocal replicated
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            replicated = replicated or _replicated_sharding()
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
        return x

    return jax.tree.map(leaf, target)


def _abstract_from_stored(stored: PyTree) -> PyTree:
    """Replicated ShapeDtypeStructs for a stored metadata tree (restore without a target)."""
    sharding = _replicated_sharding()

    def leaf(meta: Any) -> Any:
        if hasattr(meta, "shape") and hasattr(meta, "dtype"):
            return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)
        return meta

    return jax.tree.map(leaf, stored)


def _stored_tree(manager: ocp.CheckpointManager, step: int, item: str) -> PyTree:
    metadata = manager.item_metadata(step)[item]
    return getattr(metadata, "tree", metadata)


def _describe_mismatch(manager: ocp.CheckpointManager, step: int, item: str, target: PyTree) -> str:
    """Leaves missing on either side or with other shapes; '' if none found or unreadable."""
    try:
        stored = ocp.tree.to_flat_dict(_stored_tree(manager, step, item), sep="/")
        wanted = ocp.tree.to_flat_dict(target, sep="/")
    except Exception:  # diagnostics only: the caller reports the original error
        return ""
    lines = [f"{key}: in the checkpoint, not in the target" for key in stored.keys() - wanted]
    lines += [f"{key}: in the target, not in the checkpoint" for key in wanted.keys() - stored]
    for key in sorted(stored.keys() & wanted.keys()):
        have, want = getattr(stored[key], "shape", None), np.shape(wanted[key])
        if have is not None and tuple(have) != tuple(want):
            lines.append(f"{key}: shape {tuple(have)} stored, {tuple(want)} in the target")
    if not lines:
        return ""
    more = len(lines) - _MAX_MISMATCH_LINES
    listed = "; ".join(sorted(lines)[:_MAX_MISMATCH_LINES])
    if more > 0:
        listed += f"; ... ({more} more)"
    return f"it does not match the requested state ({listed})"


def _open_manager(
    directory: epath.Path,
    *,
    items: tuple[str, str],
    preservation: ocp.checkpoint_managers.PreservationPolicy | None = None,
    best_fn: Any = None,
    async_save: bool = False,
    reading: bool = False,
    key_prefix: str,
) -> ocp.CheckpointManager:
    """CheckpointManager of ``items = (pytree item, json item)``.

    ``reading=True`` opens it only to read: it creates and cleans up nothing.
    """
    pytree_item, json_item = items
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args_type in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add(pytree_item, args_type)
    for args_type in (ocp.args.JsonSave, ocp.args.JsonRestore):
        registry.add(json_item, args_type)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=best_fn,
        best_mode="max",
        enable_async_checkpointing=async_save,
        create=not reading,
        cleanup_tmp_directories=not reading,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=key_prefix
        ),
    )
    try:
        return ocp.CheckpointManager(directory, options=options, handler_registry=registry)
    except Exception as err:
        raise CheckpointError(
            f"cannot open the checkpoint directory {directory}: {_short(err)}. "
            f"Fix: delete {directory} or use another --workdir."
        ) from err


def _restore_items(
    manager: ocp.CheckpointManager,
    step: int,
    args: dict[str, Any],
    *,
    target: PyTree,
    item: str,
    fix: str,
) -> ocp.args.Composite:
    """``manager.restore`` with every failure turned into a CheckpointError ending in ``fix``."""
    path = manager.directory / str(step)
    try:
        return manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as err:
        mismatch = _describe_mismatch(manager, step, item, target) if target is not None else ""
        cause = mismatch or "it is partial, corrupted or incompatible"
        raise CheckpointError(
            f"cannot restore the checkpoint at {path} (step {step}): {cause}. "
            f"Underlying error: {_short(err)}. Fix: {fix}"
        ) from err


def _accuracy(metrics: Mapping[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


# --------------------------------------------------------------------- stage checkpoints


class Checkpoints:
    """Periodic checkpoints of one training stage under ``directory`` with orbax.

    Two orbax CheckpointManagers: ``directory/latest`` keeps the last ``max_to_keep``
    steps; ``directory/best`` keeps only the single best step by eval ``accuracy``
    (higher is better). Saves are asynchronous (``async_save=True``): ``save`` returns
    once the arrays are copied off the devices, so the state's buffers may be donated
    right after; writing finishes in the background. ``restore``, ``wait_until_finished``,
    ``close``, leaving the ``with`` block and interpreter exit wait for pending saves.
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = _as_path(directory)
        self._latest = _open_manager(
            self.directory / "latest",
            items=(STATE, METADATA),
            preservation=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            async_save=async_save,
            key_prefix="sastc_latest",
        )
        try:
            self._best = _open_manager(
                self.directory / "best",
                items=(STATE, METADATA),
                preservation=ocp.checkpoint_managers.BestN(
                    get_metric_fn=_accuracy, n=1, keep_checkpoints_without_metrics=False
                ),
                best_fn=_accuracy,
                async_save=async_save,
                key_prefix="sastc_best",
            )
        except CheckpointError:
            self._latest.close()
            raise
        try:
            self._best_record = self._read_best()
        except CheckpointError:
            self._latest.close()
            self._best.close()
            raise
        self._closed = False
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    def _read_best(self) -> tuple[int, dict] | None:
        step = self._best.best_step()
        if step is None:
            return None
        try:
            metrics = self._best.metrics(step)
            return step, dict(metrics) | {BEST_METRIC: _accuracy(metrics)}
        except Exception as err:
            path = self._best.directory / str(step)
            raise CheckpointError(
                f"cannot read the metrics of the best checkpoint at {path} (step {step}): "
                f"{_short(err)}. Fix: delete {path} or use another --workdir."
            ) from err

    def latest_step(self) -> int | None:
        """Newest step under ``latest/`` (including one still being written), or None."""
        return self._latest.latest_step()

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
        metadata = _to_json(metadata, "metadata")
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), METADATA: ocp.args.JsonSave(metadata)}
        )
        wrote = self._write(self._latest, step, args, metrics=None, replace=force)
        if metrics is None:
            return wrote
        metrics = _to_json(metrics, "metrics")
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
                f"cannot save the checkpoint at {path} (step {step}): {_short(err)}"
            ) from err
        return True

    def restore(self, target: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """Restore ``step`` (default: the latest) into the structure of ``target``.

        ``target`` is a concrete pytree like the live state or a tree of
        ``jax.ShapeDtypeStruct`` (with ``.sharding``; without one, arrays are replicated
        over all devices). Values are cast to the target's dtypes and placed with its
        shardings. Returns ``(state, metadata)``. Raises CheckpointError if there is no
        such step or it cannot be read into ``target``.
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
        manager.wait_until_finished()
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
        args = {
            STATE: ocp.args.StandardRestore(_abstract_target(target)),
            METADATA: ocp.args.JsonRestore(),
        }
        path = manager.directory / str(step)
        older = [s for s in steps if s < step]
        fallback = f" (restoring the latest then picks step {max(older)})" if older else ""
        fix = f"delete {path}{fallback}, or use another --workdir (or the config that wrote it)."
        restored = _restore_items(manager, step, args, target=target, item=STATE, fix=fix)
        metadata = restored[METADATA]
        if not isinstance(metadata, dict):
            raise CheckpointError(
                f"the checkpoint at {path} (step {step}) has no metadata dict (found "
                f"{type(metadata).__name__}). Fix: delete {path} or use another --workdir."
            )
        return restored[STATE], metadata

    def wait_until_finished(self) -> None:
        """Block until all pending asynchronous saves are written (raises their errors)."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release orbax's resources; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        try:
            self._latest.close()
        finally:
            self._best.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_at_exit(ref: weakref.ref[Checkpoints]) -> None:
    """atexit hook: finish the pending saves of a Checkpoints that was not closed."""
    checkpoints = ref()
    if checkpoints is not None:
        checkpoints.close()


# ---------------------------------------------------------------------- teacher checkpoints


def _teacher_manager(directory: epath.Path, *, reading: bool) -> ocp.CheckpointManager:
    return _open_manager(
        directory,
        items=(VARIABLES, RECORD),
        preservation=ocp.checkpoint_managers.LatestN(n=1),
        reading=reading,
        key_prefix="sastc_teacher",
    )


def _missing_teacher(directory: epath.Path) -> CheckpointError:
    return CheckpointError(
        f"no teacher checkpoint at {directory}. Create it by running the `teacher` stage "
        "with this config (it saves there), or set config.teacher.checkpoint to the "
        "directory of an existing teacher."
    )


def teacher_exists(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete teacher checkpoint."""
    path = _as_path(directory)
    if not path.exists():
        return False
    with _teacher_manager(path, reading=True) as manager:
        return manager.latest_step() is not None


def save_teacher(
    directory: str | os.PathLike,
    variables: dict,
    *,
    model: str,
    num_classes: int,
    dataset: str,
    accuracy: float | None = None,
) -> None:
    """Save a trained teacher's ``variables`` (``{'params', 'batch_stats'}``) and its record.

    The record is ``{model, num_classes, dataset, accuracy}``. An existing teacher in
    ``directory`` is replaced only once the new one is completely written. Synchronous;
    every process must call it.
    """
    path = _as_path(directory)
    record = _to_json(
        {
            "model": str(model),
            "num_classes": int(num_classes),
            "dataset": str(dataset),
            "accuracy": None if accuracy is None else float(accuracy),
        },
        "teacher record",
    )
    args = ocp.args.Composite(
        **{VARIABLES: ocp.args.StandardSave(variables), RECORD: ocp.args.JsonSave(record)}
    )
    with _teacher_manager(path, reading=False) as manager:
        latest = manager.latest_step()
        step = 0 if latest is None else latest + 1
        try:
            manager.save(step, args=args, force=True)
        except Exception as err:
            raise CheckpointError(
                f"cannot save the teacher checkpoint at {path / str(step)}: {_short(err)}"
            ) from err


def load_teacher(
    directory: str | os.PathLike, *, model: str, num_classes: int, target: PyTree = None
) -> tuple[dict, dict]:
    """Load a teacher saved by ``save_teacher``: returns ``(variables, record)``.

    ``target`` (optional) gives the variables' structure, dtypes and shardings as in
    ``Checkpoints.restore``; without it the stored shapes and dtypes are used and arrays
    are replicated over all devices. Raises TeacherMismatchError if the stored model name
    or class count differs from ``model`` / ``num_classes``, CheckpointError if there is
    no (readable) teacher at ``directory``.
    """
    path = _as_path(directory)
    if not path.exists():
        raise _missing_teacher(path)
    with _teacher_manager(path, reading=True) as manager:
        step = manager.latest_step()
        if step is None:
            raise _missing_teacher(path)
        fix = f"delete {path} and re-run the `teacher` stage, or set config.teacher.checkpoint."
        args = {RECORD: ocp.args.JsonRestore()}
        record = _restore_items(manager, step, args, target=None, item=RECORD, fix=fix)[RECORD]
        if not isinstance(record, dict) or any(key not in record for key in TEACHER_RECORD_KEYS):
            raise CheckpointError(
                f"the teacher checkpoint at {path / str(step)} has an incomplete record "
                f"{record!r} (expected keys {TEACHER_RECORD_KEYS}). Fix: delete {path} and "
                "re-run the `teacher` stage."
            )
        if record["model"] != model or int(record["num_classes"]) != int(num_classes):
            raise TeacherMismatchError(
                f"teacher checkpoint at {path} holds {record['model']} with "
                f"{record['num_classes']} classes, but the config asks for {model} with "
                f"{num_classes} classes. Train a matching teacher (`teacher` stage) or set "
                "config.teacher.checkpoint to one."
            )
        if target is None:
            try:
                abstract = _abstract_from_stored(_stored_tree(manager, step, VARIABLES))
            except Exception as err:
                raise CheckpointError(
                    f"cannot read the teacher checkpoint at {path / str(step)}: {_short(err)}. "
                    f"Fix: delete {path} and re-run the `teacher` stage."
                ) from err
        else:
            abstract = _abstract_target(target)
        args = {VARIABLES: ocp.args.StandardRestore(abstract)}
        restored = _restore_items(manager, step, args, target=target, item=VARIABLES, fix=fix)
        variables = restored[VARIABLES]
    return variables, record


# ------------------------------------------------------------------- reading a stage's state

STAGE_CHECKPOINTS = ("latest", "best")


def load_stage_state(directory: str | os.PathLike, *, which: str = "latest") -> tuple[PyTree, dict]:
    """Read the state a training stage saved under ``directory/<which>``, without a target.

    ``which`` is ``'latest'`` (the newest step) or ``'best'`` (the best by accuracy). Nothing
    is created or cleaned up. Returns ``(state, metadata)``: the state as nested dicts of
    replicated arrays with the stored shapes and dtypes (a ``TrainState`` reads back as
    ``{'step', 'params', 'batch_stats', 'opt_state'}``). Raises CheckpointError if there is
    no such checkpoint or it cannot be read.
    """
    if which not in STAGE_CHECKPOINTS:
        raise ValueError(f"which must be one of {STAGE_CHECKPOINTS}; got {which!r}.")
    path = _as_path(directory) / which
    missing = CheckpointError(
        f"no {which} checkpoint in {path}: train this stage first (it saves there), or point "
        "at the run directory that holds it."
    )
    if not path.exists():
        raise missing
    with _open_manager(
        path, items=(STATE, METADATA), reading=True, key_prefix=f"sastc_read_{which}"
    ) as manager:
        step = manager.latest_step()
        if step is None:
            raise missing
        fix = f"delete {path / str(step)} or use another checkpoint."
        try:
            abstract = _abstract_from_stored(_stored_tree(manager, step, STATE))
        except Exception as err:
            raise CheckpointError(
                f"cannot read the checkpoint at {path / str(step)}: {_short(err)}. Fix: {fix}"
            ) from err
        args = {STATE: ocp.args.StandardRestore(abstract), METADATA: ocp.args.JsonRestore()}
        restored = _restore_items(manager, step, args, target=None, item=STATE, fix=fix)
    return restored[STATE], restored[METADATA]
