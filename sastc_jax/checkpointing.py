"""Orbax checkpoints of training stages and of frozen teachers, with checksums.

Layout of one stage's run directory (``Checkpoints(directory)``)::

    directory/latest/<step>/{state,metadata,checksums.json}   last ``max_to_keep`` steps
    directory/best/<step>/{state,metadata,metrics,checksums.json}   the best step by accuracy
    directory/corrupt/<latest|best>-<step>   steps that failed verification, moved aside

and of a teacher directory (``save_teacher(directory, ...)``)::

    directory/<n>/{variables,record,checksums.json}   one checkpoint; a re-save writes n + 1,
                                                      then drops n

``state`` is any pytree of ``jax.Array`` / ``np.ndarray`` (the train state: a
``flax.struct.dataclass`` holding params, batch stats and an optax state); ``metadata``
and ``record`` are JSON.

Integrity: orbax/TensorStore checksum only their own index structures (OCDBT manifests
and b-tree nodes, the zarr3 shard index), not the array chunks nor the JSON items, and
offer no option to add the zarr ``crc32c`` codec, so a flipped byte in an array file
restores silently. Hence, once orbax has committed a step, ``checksums.json`` records the
size and SHA-256 of every file in it, read back from disk (in a background thread for
asynchronous saves). A step is *intact* when every recorded file has its recorded size
and digest; a step without ``checksums.json`` (its save was interrupted) is not.
Restores verify first; :meth:`Checkpoints.resume` skips a step that fails (moving it to
``corrupt/``) and falls back to the newest intact one. ``python -m
sastc_jax.checkpointing verify --workdir=DIR`` checks every checkpoint under ``DIR``.

Every process of a multi-process (``jax.distributed``) run must make the same calls
in the same order: orbax coordinates the processes, writes each step to a temporary
directory and renames it once complete (uncommitted temporary directories are never
listed, and are removed when a ``Checkpoints`` is opened); process 0 writes the
checksums, verifies and moves corrupt steps aside, and the processes agree on the
outcome. Restores go into the target's shapes, dtypes and shardings, so a checkpoint
saved on one device count restores on another (the state is replicated).
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
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
CHECKSUMS = "checksums.json"
INTERRUPTED_SAVE = (
    f"{CHECKSUMS} is missing: its save never finished (interrupted), or it was written "
    "without checksums"
)
CORRUPT = "corrupt"
_UNCOMMITTED = ".orbax-checkpoint-tmp"  # orbax's temporary step directories
_CHUNK_BYTES = 8 << 20
_MAX_ERROR_CHARS = 600
_MAX_MISMATCH_LINES = 8
_MAX_PROBLEMS = 4


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
        if mismatch:
            raise CheckpointError(
                f"cannot restore the checkpoint at {path} (step {step}): {mismatch}. "
                f"Underlying error: {_short(err)}. Fix: {fix}"
            ) from err
        reason = f"orbax cannot read it ({_short(err)})"
        raise CorruptCheckpointError(
            f"the checkpoint at {path} (step {step}) is corrupt: {reason}. Fix: {fix}",
            reason=reason,
        ) from err


def _accuracy(metrics: Mapping[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


# ---------------------------------------------------------------------------- integrity


def _file_digest(path: epath.Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _walk_files(directory: epath.Path):
    """Every file below ``directory`` (epath has no recursive glob for remote paths)."""
    for child in directory.iterdir():
        if child.is_dir():
            yield from _walk_files(child)
        else:
            yield child


def _listing_digest(files: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_checksums(step_dir: str | os.PathLike) -> None:
    """Record the size and SHA-256 of every file of a committed step in ``checksums.json``.

    The file list itself carries a digest, so an altered ``checksums.json`` is detected
    too. Written to a temporary name and renamed, so it is either complete or absent.
    """
    step_dir = _as_path(step_dir)
    files = {}
    for path in sorted(_walk_files(step_dir)):
        relative = path.relative_to(step_dir).as_posix()
        if relative not in (CHECKSUMS, CHECKSUMS + ".tmp"):
            files[relative] = list(_file_digest(path))
    manifest = {"algorithm": "sha256", "files": files, "files_digest": _listing_digest(files)}
    temporary = step_dir / (CHECKSUMS + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    temporary.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: str | os.PathLike) -> list[str]:
    """What is wrong with a step directory's files; empty when every recorded file has
    its recorded size and SHA-256 (files added after the save are not checked)."""
    step_dir = _as_path(step_dir)
    if not step_dir.is_dir():
        return [f"{step_dir} is not a directory"]
    manifest_path = step_dir / CHECKSUMS
    if not manifest_path.exists():
        return [INTERRUPTED_SAVE]
    try:
        manifest = json.loads(manifest_path.read_text())
        files, recorded = dict(manifest["files"]), manifest["files_digest"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{CHECKSUMS} is unreadable ({_short(err)})"]
    if _listing_digest(files) != recorded:
        return [f"{CHECKSUMS} does not match its own digest: it was altered"]
    problems = []
    for relative, (size, digest) in sorted(files.items()):
        path = step_dir / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
        elif (found := path.stat().length) != size:
            kind = "is truncated" if found < size else "has grown"
            problems.append(f"{relative} {kind}: {found} bytes, {size} were written")
        elif _file_digest(path)[1] != digest:
            problems.append(f"{relative} does not match its SHA-256 (bytes altered)")
    return problems


def _describe(problems: list[str]) -> str:
    more = len(problems) - _MAX_PROBLEMS
    return "; ".join(problems[:_MAX_PROBLEMS]) + (f"; ... ({more} more)" if more > 0 else "")


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """``'path: k of n values'`` for every floating-point leaf holding NaN or inf."""
    found = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not jnp.issubdtype(getattr(leaf, "dtype", np.result_type(leaf)), jnp.inexact):
            continue  # (jnp's test knows bfloat16 is floating point; NumPy's does not)
        if isinstance(leaf, jax.Array):  # the process's own copies; one if replicated
            shards = leaf.addressable_shards[:1] if leaf.is_fully_replicated else None
            values = [np.asarray(s.data) for s in (shards or leaf.addressable_shards)]
        else:
            values = [np.asarray(leaf)]
        bad = sum(int(np.size(v) - np.count_nonzero(np.isfinite(v))) for v in values)
        if bad:
            total = sum(np.size(v) for v in values)
            found.append(f"{jax.tree_util.keystr(key_path)}: {bad} of {total} values")
    return found


def all_processes_agree(ok: bool) -> bool:
    """True only if ``ok`` holds on every process (collective in multi-process runs)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _sync_processes(name: str) -> None:
    """Barrier of all processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _move_aside(step_dir: epath.Path) -> epath.Path:
    """Rename a corrupt ``<root>/<kind>/<step>`` to ``<root>/corrupt/<kind>-<step>``."""
    corrupt = step_dir.parent.parent / CORRUPT
    corrupt.mkdir(parents=True, exist_ok=True)
    name = f"{step_dir.parent.name}-{step_dir.name}"
    target, copy = corrupt / name, 1
    while target.exists():
        copy += 1
        target = corrupt / f"{name}.{copy}"
    step_dir.rename(target)
    return target


def _warn_corrupt(path: epath.Path, reason: str, moved: epath.Path | None) -> None:
    log.warning(
        "checkpoint %s (step %s) is corrupt: %s. Moved it to %s; falling back to an older "
        "intact checkpoint.",
        path,
        path.name,
        reason,
        moved or f"{path.parent.parent / CORRUPT} (by process 0)",
    )


def _move_corrupt_steps_aside(root: epath.Path) -> int:
    """Verify every step under ``root`` and move the failing ones aside (process 0);
    returns how many were moved. Collective in multi-process runs."""
    moved = 0
    if jax.process_index() == 0 and root.is_dir():
        for step_dir in root.iterdir():
            if step_dir.name.isdigit() and (problems := verify_checksums(step_dir)):
                _warn_corrupt(step_dir, _describe(problems), _move_aside(step_dir))
                moved += 1
    _sync_processes("sastc_corrupt_steps_aside")
    return moved


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What :meth:`Checkpoints.resume` restored: the state, its metadata, step and path."""

    state: PyTree
    metadata: dict
    step: int
    path: epath.Path


# --------------------------------------------------------------------- stage checkpoints


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
        self.directory = _as_path(directory)
        self._latest = _open_manager(
            self.directory / "latest",
            items=(STATE, METADATA),
            preservation=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            async_save=async_save,
            key_prefix="sastc_latest",
        )
        open_best = functools.partial(
            _open_manager,
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
                moved = _move_corrupt_steps_aside(self.directory / "best")
                if all_processes_agree(not moved):
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
                _short(err),
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
                f"cannot save the checkpoint at {path} (step {step}): {_short(err)}. {self._kept()}"
            ) from err
        future = self._checksummer.submit(self._record_checksums, manager, step)
        self._pending[manager.directory] = (step, future)
        return True

    def _record_checksums(self, manager: ocp.CheckpointManager, step: int) -> None:
        """Background: wait until orbax committed ``step``, then checksum its files."""
        manager.wait_until_finished()  # raises the error of the asynchronous write
        if jax.process_index() == 0:
            write_checksums(manager.directory / str(step))
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
                f"cannot save the checkpoint at {path} (step {step}): {_short(err)}. {self._kept()}"
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
        problems = self._verify(manager, step)
        if problems:
            raise CorruptCheckpointError(
                f"the checkpoint at {path} (step {step}) is corrupt: {_describe(problems)}. "
                f"Fix: {fix}",
                reason=_describe(problems),
            )
        return self._load(manager, target, step, fix)

    def _verify(self, manager: ocp.CheckpointManager, step: int) -> list[str]:
        """Checksum problems of ``step`` (found by process 0, agreed by all processes)."""
        path = manager.directory / str(step)
        problems = verify_checksums(path) if jax.process_index() == 0 else []
        if all_processes_agree(not problems):
            return []
        return problems or ["it failed verification on process 0"]

    def _load(
        self, manager: ocp.CheckpointManager, target: PyTree, step: int, fix: str
    ) -> tuple[PyTree, dict]:
        """Restore a verified step; CorruptCheckpointError if orbax cannot read it or a
        value is not finite, CheckpointError if it does not fit ``target``."""
        path = manager.directory / str(step)
        args = {
            STATE: ocp.args.StandardRestore(_abstract_target(target)),
            METADATA: ocp.args.JsonRestore(),
        }
        restored = _restore_items(manager, step, args, target=target, item=STATE, fix=fix)
        metadata = restored[METADATA]
        reason = ""
        if not isinstance(metadata, dict):
            reason = f"its metadata is not a dict (found {type(metadata).__name__})"
        elif nonfinite := nonfinite_leaves(restored[STATE]):
            reason = f"non-finite values right after the restore ({_describe(nonfinite)})"
        if reason:
            raise CorruptCheckpointError(
                f"the checkpoint at {path} (step {step}) is corrupt: {reason}. Fix: {fix}",
                reason=reason,
            )
        self._mark_verified(step)
        return restored[STATE], metadata

    def resume(self, target: PyTree) -> Resumed | None:
        """Restore the newest intact checkpoint of this stage into ``target``.

        Candidates, newest first: the steps under ``latest/``, then the ``best/`` step
        where it is newer than every intact ``latest/`` step. A step that fails
        verification (its checksums, orbax's restore, finite values) is logged with its
        path and reason, moved to ``directory/corrupt/`` and skipped. The ``best/`` step
        is verified even when not restored, so ``best()`` only reports an intact one.
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
            moved = _move_aside(path) if jax.process_index() == 0 else None
            _sync_processes(f"sastc_corrupt_{step}")
            manager.reload()
            _warn_corrupt(path, reason, moved)
            (interrupted if reason == INTERRUPTED_SAVE else rejected).append(f"{path}: {reason}")

        for manager in (self._latest, self._best):
            manager.reload()
        for step in self._best.all_steps():
            if problems := self._verify(self._best, step):
                reject(self._best, step, _describe(problems))
        self._best_record = self._read_best()

        candidates = [(step, 1, self._latest) for step in self._latest.all_steps()]
        candidates += [(step, 0, self._best) for step in self._best.all_steps()]
        for step, _, manager in sorted(candidates, key=lambda c: c[:2], reverse=True):
            path = manager.directory / str(step)
            reason = ""
            if manager is self._latest:
                reason = _describe(self._verify(manager, step))
            if not reason:
                try:
                    fix = f"use the config that wrote {path}, or another --workdir."
                    state, metadata = self._load(manager, target, step, fix)
                except CorruptCheckpointError as err:
                    reason = err.reason
            if all_processes_agree(not reason):
                return Resumed(state=state, metadata=metadata, step=step, path=path)
            reject(manager, step, reason or "it failed verification on another process")
            if manager is self._best:
                self._best_record = self._read_best()
        if rejected:
            raise CorruptCheckpointError(
                f"no intact checkpoint in {self.directory}: "
                + "; ".join(rejected + interrupted)
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
                            f"cannot close {manager.directory}: {_short(err)}"
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


# ---------------------------------------------------------------------- teacher checkpoints


def _teacher_manager(directory: epath.Path, *, reading: bool) -> ocp.CheckpointManager:
    return _open_manager(
        directory,
        items=(VARIABLES, RECORD),
        reading=reading,  # keeps every step: save_teacher drops the old one once verified
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
    ``directory`` is replaced only once the new one is completely written and
    checksummed. Synchronous; every process must call it.
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
            manager.wait_until_finished()
            if jax.process_index() == 0:
                write_checksums(path / str(step))
            _sync_processes(f"sastc_teacher_checksums_{step}")
        except Exception as err:
            raise CheckpointError(
                f"cannot save the teacher checkpoint at {path / str(step)}: {_short(err)}"
            ) from err
        for older in manager.all_steps():
            if older < step:
                manager.delete(older)


def load_teacher(
    directory: str | os.PathLike, *, model: str, num_classes: int, target: PyTree = None
) -> tuple[dict, dict]:
    """Load a teacher saved by ``save_teacher``: returns ``(variables, record)``.

    ``target`` (optional) gives the variables' structure, dtypes and shardings as in
    ``Checkpoints.restore``; without it the stored shapes and dtypes are used and arrays
    are replicated over all devices. Raises TeacherMismatchError if the stored model name
    or class count differs from ``model`` / ``num_classes``, CorruptCheckpointError if
    the teacher fails verification (checksums, orbax's restore, finite values; it is
    never used then), CheckpointError if there is no teacher at ``directory``.
    """
    path = _as_path(directory)
    if not path.exists():
        raise _missing_teacher(path)
    with _teacher_manager(path, reading=True) as manager:
        step = manager.latest_step()
        if step is None:
            raise _missing_teacher(path)
        fix = f"delete {path} and re-run the `teacher` stage, or set config.teacher.checkpoint."
        problems = verify_checksums(path / str(step)) if jax.process_index() == 0 else []
        if not all_processes_agree(not problems):
            reason = _describe(problems or ["it failed verification on process 0"])
            raise CorruptCheckpointError(
                f"the teacher checkpoint at {path / str(step)} is corrupt: {reason}. Fix: {fix}",
                reason=reason,
            )
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
    if nonfinite := nonfinite_leaves(variables):
        reason = f"non-finite values right after the restore ({_describe(nonfinite)})"
        raise CorruptCheckpointError(
            f"the teacher checkpoint at {path / str(step)} is corrupt: {reason}. Fix: {fix}",
            reason=reason,
        )
    return variables, record


# ------------------------------------------------------------------- reading a stage's state

STAGE_CHECKPOINTS = ("latest", "best")


def load_stage_state(directory: str | os.PathLike, *, which: str = "latest") -> tuple[PyTree, dict]:
    """Read the state a training stage saved under ``directory/<which>``, without a target.

    ``which`` is ``'latest'`` (the newest step) or ``'best'`` (the best by accuracy). Nothing
    is created or cleaned up. Returns ``(state, metadata)``: the state as nested dicts of
    replicated arrays with the stored shapes and dtypes (a ``TrainState`` reads back as
    ``{'step', 'params', 'batch_stats', 'opt_state'}``). Raises CheckpointError if there is
    no such checkpoint or it cannot be read, CorruptCheckpointError if it fails
    verification (checksums, finite values).
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
        if problems := verify_checksums(path / str(step)):
            reason = _describe(problems)
            raise CorruptCheckpointError(
                f"the checkpoint at {path / str(step)} is corrupt: {reason}. Fix: {fix}",
                reason=reason,
            )
        try:
            abstract = _abstract_from_stored(_stored_tree(manager, step, STATE))
        except Exception as err:
            raise CheckpointError(
                f"cannot read the checkpoint at {path / str(step)}: {_short(err)}. Fix: {fix}"
            ) from err
        args = {STATE: ocp.args.StandardRestore(abstract), METADATA: ocp.args.JsonRestore()}
        restored = _restore_items(manager, step, args, target=None, item=STATE, fix=fix)
    if nonfinite := nonfinite_leaves(restored[STATE]):
        reason = f"non-finite values right after the restore ({_describe(nonfinite)})"
        raise CorruptCheckpointError(
            f"the checkpoint at {path / str(step)} is corrupt: {reason}. Fix: {fix}",
            reason=reason,
        )
    return restored[STATE], restored[METADATA]


# ------------------------------------------------------------------------ verify command

_STEP_MARKERS = ("_CHECKPOINT_METADATA", CHECKSUMS, STATE, VARIABLES)


def _is_step_dir(path: epath.Path) -> bool:
    if not path.name.isdigit() or not path.is_dir():
        return False
    return path.parent.name in ("latest", "best") or any(
        (path / marker).exists() for marker in _STEP_MARKERS
    )


def find_checkpoints(workdir: str | os.PathLike) -> list[epath.Path]:
    """Committed step directories of every stage and teacher checkpoint under
    ``workdir`` (not those moved to ``corrupt/``, nor orbax's uncommitted temporaries)."""
    found, stack = [], [_as_path(workdir)]
    while stack:
        directory = stack.pop()
        for child in directory.iterdir():
            if child.name == CORRUPT or _UNCOMMITTED in child.name:
                continue
            if _is_step_dir(child):
                found.append(child)
            elif child.is_dir():
                stack.append(child)
    return sorted(found, key=lambda p: (str(p.parent), int(p.name)))


def verify_workdir(workdir: str | os.PathLike, out: Any = None) -> bool:
    """Print one line per checkpoint under ``workdir`` (intact, or CORRUPT and why) to
    ``out`` (default stdout); True only if there is at least one and all are intact.
    Checks the checksums only (no restore, no finite check)."""
    out = out or sys.stdout
    steps = find_checkpoints(workdir)
    if not steps:
        print(f"no checkpoints found under {_as_path(workdir)}", file=out)
        return False
    corrupt = 0
    for step_dir in steps:
        problems = verify_checksums(step_dir)
        corrupt += bool(problems)
        status = (
            f"CORRUPT  {step_dir}: {_describe(problems)}" if problems else f"intact   {step_dir}"
        )
        print(status, file=out)
    print(f"{len(steps)} checkpoint(s): {len(steps) - corrupt} intact, {corrupt} corrupt", file=out)
    return corrupt == 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sastc_jax.checkpointing verify --workdir=DIR``: exit status 0 only if
    every stage and teacher checkpoint under DIR is intact."""
    parser = argparse.ArgumentParser(
        prog="python -m sastc_jax.checkpointing", description="Checkpoint maintenance."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", help="check the checksums of every checkpoint under a run directory"
    )
    verify.add_argument("--workdir", required=True, help="the run's --workdir")
    args = parser.parse_args(argv)
    if not _as_path(args.workdir).is_dir():
        parser.error(f"--workdir={args.workdir} is not a directory")
    return 0 if verify_workdir(args.workdir) else 1


if __name__ == "__main__":
    sys.exit(main())
