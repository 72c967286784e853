"""The restore protocol, and the orbax plumbing the stage and teacher stores share.

:func:`restore_verified` is the one way a checkpoint step is read: verify its checksums,
restore it with orbax into a target (or the stored shapes), check the restored values
(finite, plus what the caller asks), and raise :class:`CorruptCheckpointError` naming the
step, the reason and the fix when any of that fails. Every check runs on every process
and all processes agree on its outcome (see :mod:`sastc_jax.checkpoints.integrity`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sastc_jax.checkpoints import integrity
from sastc_jax.checkpoints.errors import CheckpointError, CorruptCheckpointError

PyTree = Any
_MAX_MISMATCH_LINES = 8


def to_json(value: Any, what: str) -> Any:
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


def open_manager(
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
            f"cannot open the checkpoint directory {directory}: {integrity.short(err)}. "
            f"Fix: delete {directory} or use another --workdir."
        ) from err


# ----------------------------------------------------------------------- targets


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


# ----------------------------------------------------------------------- restoring


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
                f"Underlying error: {integrity.short(err)}. Fix: {fix}"
            ) from err
        reason = f"orbax cannot read it ({integrity.short(err)})"
        raise CorruptCheckpointError(
            f"the checkpoint at {path} (step {step}) is corrupt: {reason}. Fix: {fix}",
            reason=reason,
        ) from err


def restore_verified(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    item: str,
    json_items: Sequence[str] = (),
    target: PyTree = None,
    where: str,
    fix: str,
    validate: Callable[[Mapping[str, Any]], str] | None = None,
) -> Mapping[str, Any]:
    """The restore protocol: verify, restore, check; returns the restored items by name.

    1. The step's checksums (:func:`integrity.verify_step`).
    2. orbax restores the pytree ``item`` into ``target``'s structure, dtypes and
       shardings (a concrete tree or ``jax.ShapeDtypeStruct`` leaves; those without a
       sharding are replicated), or, with ``target=None``, into the stored shapes and
       dtypes replicated over all devices; and the JSON ``json_items``.
    3. ``validate(restored)`` (a reason, or '' when fine), then every floating-point
       value of ``item`` is finite.

    Every step runs on every process and the processes agree on the outcome. Raises
    CorruptCheckpointError ``'<where> is corrupt: <reason>. Fix: <fix>'`` when the step
    fails 1-3 (orbax's own read failure names the path and step), CheckpointError when it
    does not fit ``target`` or its stored structure cannot be read.
    """
    step_dir = manager.directory / str(step)
    if problems := integrity.verify_step(step_dir):
        raise integrity.corrupt_error(where, integrity.describe(problems), fix)
    if target is None:
        try:
            abstract = _abstract_from_stored(_stored_tree(manager, step, item))
        except Exception as err:
            raise CheckpointError(
                f"cannot read {where}: {integrity.short(err)}. Fix: {fix}"
            ) from err
    else:
        abstract = _abstract_target(target)
    args = {item: ocp.args.StandardRestore(abstract)}
    args |= {name: ocp.args.JsonRestore() for name in json_items}
    failure: CorruptCheckpointError | None = None
    reason = ""
    try:
        restored = _restore_items(manager, step, args, target=target, item=item, fix=fix)
    except CorruptCheckpointError as err:
        failure = err
    else:
        reason = validate(restored) if validate is not None else ""
        if not reason and (nonfinite := integrity.nonfinite_leaves(restored[item])):
            reason = f"non-finite values right after the restore ({integrity.describe(nonfinite)})"
    if not integrity.all_processes_agree(failure is None and not reason):
        if failure is not None:
            raise failure
        raise integrity.corrupt_error(where, reason or integrity.FAILED_ELSEWHERE, fix)
    return restored
