"""One way to load a trained run: its config, the student model and the saved variables.

A run directory of ``python -m sastc_jax.main`` (or one run of :mod:`sastc_jax.compare`)
holds ``config.json`` and the student stage's checkpoints under ``student/``.
:func:`load_run` reads both (the checkpoint by the restore protocol, with the stored shapes:
nothing is built or initialised to restore it) and builds the student the config
describes; evaluation (``stage=evaluate``), :mod:`sastc_jax.analyze` and
:mod:`sastc_jax.interop.nir` all load a student this way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections
from etils import epath

from sastc_jax import param_tree
from sastc_jax.checkpoints.stage import load_stage_state

CONFIG = "config.json"
STUDENT = "student"
# checkpoint= name -> the directory under student/ that holds it.
RUN_CHECKPOINTS = {"best": "best", "latest": "latest", "final": "latest"}


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
    CorruptCheckpointError (:func:`load_stage_state`) for a missing or damaged checkpoint.
    Collective in multi-process runs (every process must call it).
    """
    from sastc_jax import train  # train imports this package: import it when called

    if checkpoint not in RUN_CHECKPOINTS:
        raise ValueError(
            f"checkpoint must be one of {sorted(RUN_CHECKPOINTS)}; got {checkpoint!r}."
        )
    workdir = Path(workdir)
    config = load_config(workdir) if config is None else config
    which = RUN_CHECKPOINTS[checkpoint]
    state, metadata = load_stage_state(workdir / STUDENT, which=which)
    model = train.build_student(config, int(metadata["num_classes"]))
    variables = param_tree.inference_variables(state["params"], state["batch_stats"])
    return Run(
        workdir=workdir,
        config=config,
        model=model,
        variables=variables,
        state=state,
        metadata=metadata,
        checkpoint_dir=epath.Path(workdir / STUDENT / which),
    )
