"""Checksummed orbax checkpoints: of training stages, of frozen teachers, of whole runs.

- :mod:`~sastc_jax.checkpoints.integrity`: checksum manifests, verification, the finite
  check, moving corrupt steps aside, and the multi-process policy (every process
  verifies what it reads, then all agree);
- :mod:`~sastc_jax.checkpoints.restore`: the one restore protocol (verify, restore,
  check, :class:`CorruptCheckpointError`) and the orbax plumbing;
- :mod:`~sastc_jax.checkpoints.stage`: :class:`Checkpoints`, a stage's ``latest/`` and
  ``best/`` steps, resume with fallback; :func:`load_stage_state`;
- :mod:`~sastc_jax.checkpoints.teacher`: the teacher store;
- :mod:`~sastc_jax.checkpoints.runs`: :func:`load_run`, a trained run's config, student
  and variables;
- :mod:`~sastc_jax.checkpoints.verify`: :func:`verify_workdir`, what ``python -m
  sastc_jax.checkpoints verify --workdir=DIR`` runs (``sastc_jax.checkpointing`` is the
  same command; its command line is :mod:`sastc_jax.cli.checkpoints`).
"""

from sastc_jax.checkpoints.errors import (
    CheckpointError,
    CorruptCheckpointError,
    TeacherMismatchError,
)
from sastc_jax.checkpoints.integrity import (
    CHECKSUMS,
    CORRUPT,
    INTERRUPTED_SAVE,
    all_processes_agree,
    nonfinite_leaves,
    verify_checksums,
    write_checksums,
)
from sastc_jax.checkpoints.runs import Run, load_config, load_run
from sastc_jax.checkpoints.stage import (
    BEST_METRIC,
    METADATA,
    STAGE_CHECKPOINTS,
    STATE,
    Checkpoints,
    Resumed,
    load_stage_state,
)
from sastc_jax.checkpoints.teacher import (
    RECORD,
    TEACHER_RECORD_KEYS,
    VARIABLES,
    check_teacher_variables,
    load_teacher,
    save_teacher,
    teacher_exists,
)
from sastc_jax.checkpoints.verify import find_checkpoints, verify_workdir

__all__ = [
    "BEST_METRIC",
    "CHECKSUMS",
    "CORRUPT",
    "INTERRUPTED_SAVE",
    "METADATA",
    "RECORD",
    "STAGE_CHECKPOINTS",
    "STATE",
    "TEACHER_RECORD_KEYS",
    "VARIABLES",
    "CheckpointError",
    "Checkpoints",
    "CorruptCheckpointError",
    "Resumed",
    "Run",
    "TeacherMismatchError",
    "all_processes_agree",
    "check_teacher_variables",
    "find_checkpoints",
    "load_config",
    "load_run",
    "load_stage_state",
    "load_teacher",
    "nonfinite_leaves",
    "save_teacher",
    "teacher_exists",
    "verify_checksums",
    "verify_workdir",
    "write_checksums",
]
