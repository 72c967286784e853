"""One way to load a trained run: its config, the student model and the saved variables.

:func:`load_run` reads the run's config and student checkpoint
(:mod:`sastc_jax.checkpoints.runs`) and builds the student the config describes
(:func:`sastc_jax.train.stages.build_student`); evaluation (``stage=evaluate``),
:mod:`sastc_jax.analyze`, :mod:`sastc_jax.diagnose` and :mod:`sastc_jax.interop.nir` all
load a student this way.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import ml_collections
from etils import epath

from sastc_jax import param_tree
from sastc_jax.checkpoints.runs import load_config, load_student_state
from sastc_jax.train.stages import build_student


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained student as its run directory holds it.

    ``variables`` are the student's ``{'params', 'batch_stats'}``; ``state`` is the whole
    saved train state as nested dicts (``{'step', 'params': {'student'[, 'calibration']},
    'batch_stats', 'opt_state'}``, as far as it was saved); ``metadata`` is the stage's
    record saved with it (``model``, ``num_classes``, ``dataset``, ``method``,
    ``teacher``, ``step``, ...); ``checkpoint_dir`` is the directory it was read from.
    """

    workdir: Path
    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict
    state: dict
    metadata: dict
    checkpoint_dir: epath.Path


def load_run(
    workdir: str | os.PathLike,
    checkpoint: str = "best",
    *,
    config: ml_collections.ConfigDict | None = None,
) -> Run:
    """The student a run saved in ``workdir``, with its config.

    ``checkpoint``: ``'best'`` (the selected step: highest validation accuracy, or test
    accuracy without a validation split) or ``'latest'`` / ``'final'`` (the last saved
    step). ``config`` builds the model instead of ``WORKDIR/config.json`` (the
    ``evaluate`` stage builds it from the command line's config). Raises ValueError for
    another ``checkpoint``, FileNotFoundError without a config, CheckpointError /
    CorruptCheckpointError for a missing or damaged checkpoint
    (:func:`sastc_jax.checkpoints.load_student_state`). Collective in multi-process runs
    (every process must call it).
    """
    workdir = Path(workdir)
    config = load_config(workdir) if config is None else config
    state, metadata, checkpoint_dir = load_student_state(workdir, checkpoint)
    return Run(
        workdir=workdir,
        config=config,
        model=build_student(config, int(metadata["num_classes"])),
        variables=param_tree.inference_variables(state["params"], state["batch_stats"]),
        state=state,
        metadata=metadata,
        checkpoint_dir=checkpoint_dir,
    )
