"""What a trained run's directory holds: its config and the student stage's checkpoints.

A run directory of ``python -m sastc_jax.main`` (or one run of :mod:`sastc_jax.compare`)
holds ``config.json`` and the student stage's checkpoints under ``student/``.
:func:`load_config` reads the first, :func:`load_student_state` the second (by the restore
protocol, with the stored shapes: nothing is built or initialised to restore it).
:func:`sastc_jax.train.load_run` adds the student model the config describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath

from sastc_jax.checkpoints.stage import load_stage_state

CONFIG = "config.json"
STUDENT = "student"
# checkpoint= name -> the directory under student/ that holds it.
RUN_CHECKPOINTS = {"best": "best", "latest": "latest", "final": "latest"}


def _tuples(value: Any) -> Any:
    """JSON lists back as tuples (as the configs write them), recursively."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run was trained with (``WORKDIR/config.json``), lists back as tuples.
    FileNotFoundError if ``workdir`` has no ``config.json``."""
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{Path(workdir)} is not a training run directory: no {CONFIG} there. Pass the "
            "--workdir of a `python -m sastc_jax.main` run."
        )
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def load_student_state(
    workdir: str | os.PathLike, checkpoint: str = "best"
) -> tuple[dict, dict, epath.Path]:
    """``(state, metadata, checkpoint_dir)`` of the student stage a run saved in ``workdir``.

    ``checkpoint`` is a name of :data:`RUN_CHECKPOINTS`: ``'best'`` (the selected step:
    highest validation accuracy, or test accuracy without a validation split) or
    ``'latest'`` / ``'final'`` (the last saved step). ``state`` is the whole saved train
    state as nested dicts (``{'step', 'params': {'student'[, 'calibration']},
    'batch_stats', 'opt_state'}``, as far as it was saved); ``metadata`` the stage's record
    (``model``, ``num_classes``, ``dataset``, ``method``, ``teacher``, ``step``, ...).
    Raises ValueError for another ``checkpoint``, CheckpointError /
    CorruptCheckpointError (:func:`load_stage_state`) for a missing or damaged checkpoint.
    Collective in multi-process runs (every process must call it).
    """
    if checkpoint not in RUN_CHECKPOINTS:
        raise ValueError(
            f"checkpoint must be one of {sorted(RUN_CHECKPOINTS)}; got {checkpoint!r}."
        )
    which = RUN_CHECKPOINTS[checkpoint]
    state, metadata = load_stage_state(Path(workdir) / STUDENT, which=which)
    return state, metadata, epath.Path(Path(workdir) / STUDENT / which)
