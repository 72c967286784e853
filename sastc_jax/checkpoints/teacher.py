"""The store of frozen teachers: one checksummed orbax checkpoint per directory.

Layout (``save_teacher(directory, ...)``)::

    directory/<n>/{variables,record,checksums.json}   one checkpoint; a re-save writes n + 1,
                                                      then drops n

``variables`` are the teacher's ``{'params', 'batch_stats'}``; ``record`` is JSON
``{model, num_classes, dataset, accuracy}``. Loads follow the restore protocol of
:func:`sastc_jax.checkpoints.restore.restore_verified`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from sastc_jax import trees
from sastc_jax.checkpoints import integrity
from sastc_jax.checkpoints.errors import CheckpointError, TeacherMismatchError
from sastc_jax.checkpoints.restore import open_manager, restore_verified, to_json

PyTree = Any
VARIABLES, RECORD = "variables", "record"
TEACHER_RECORD_KEYS = ("model", "num_classes", "dataset", "accuracy")
# A teacher checkpoint is this store's directory or a file that sastc_jax.interop.pytorch
# imports, told apart by these suffixes.
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".safetensors")


def is_torch_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a PyTorch or safetensors file (by its suffix), to import with
    :mod:`sastc_jax.interop.pytorch` rather than restore from this store."""
    return os.fspath(path).lower().endswith(TORCH_SUFFIXES)


def _teacher_manager(directory: epath.Path, *, reading: bool) -> ocp.CheckpointManager:
    return open_manager(
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
    path = integrity.as_path(directory)
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
    path = integrity.as_path(directory)
    record = to_json(
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
                integrity.write_checksums(path / str(step))
            integrity.sync_processes(f"sastc_teacher_checksums_{step}")
        except Exception as err:
            raise CheckpointError(
                f"cannot save the teacher checkpoint at {path / str(step)}: {integrity.short(err)}"
            ) from err
        for older in manager.all_steps():
            if older < step:
                manager.delete(older)


def restore_teacher(
    directory: str | os.PathLike, *, model: str, num_classes: int, target: PyTree = None
) -> tuple[dict, dict]:
    """Load a teacher saved by ``save_teacher``: returns ``(variables, record)``.

    ``target`` (optional) gives the variables' structure, dtypes and shardings as in
    ``Checkpoints.restore``; without it the stored shapes and dtypes are used and arrays
    are replicated over all devices. Raises TeacherMismatchError if the stored model name
    or class count differs from ``model`` / ``num_classes``, CorruptCheckpointError if
    the teacher fails the restore protocol (checksums, orbax's restore, finite values; it
    is never used then), CheckpointError if there is no teacher at ``directory``.
    """
    path = integrity.as_path(directory)
    if not path.exists():
        raise _missing_teacher(path)
    with _teacher_manager(path, reading=True) as manager:
        step = manager.latest_step()
        if step is None:
            raise _missing_teacher(path)
        restored = restore_verified(
            manager,
            step,
            item=VARIABLES,
            json_items=(RECORD,),
            target=target,
            where=f"the teacher checkpoint at {path / str(step)}",
            fix=f"delete {path} and re-run the `teacher` stage, or set config.teacher.checkpoint.",
        )
    record = restored[RECORD]
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
    return restored[VARIABLES], record


def check_teacher_variables(variables: PyTree, expected: PyTree, directory: str) -> None:
    """Raise TeacherMismatchError when a loaded teacher's ``variables`` do not have the
    structure and shapes of ``expected`` (the configured teacher's, e.g. from
    ``jax.eval_shape`` of its init; other collections than the saved ``params`` and
    ``batch_stats`` are ignored): a checkpoint of another architecture or width."""
    saved = {name: tree for name, tree in expected.items() if name in ("params", "batch_stats")}
    if problem := trees.shape_mismatch(saved, variables):
        raise TeacherMismatchError(
            f"the teacher checkpoint at {directory} does not fit the configured teacher "
            f"(config.teacher.model and config.teacher.model_kwargs): {problem}. Set them to "
            "the architecture the checkpoint was trained with, or train a matching teacher."
        )
