"""Checksummed orbax checkpoints: of training stages, of frozen teachers, of whole runs.

- :mod:`~sastc_jax.checkpoints.integrity`: checksum manifests, verification, the finite
  check, moving corrupt steps aside, and the multi-process policy (every process
  verifies what it reads, then all agree);
- :mod:`~sastc_jax.checkpoints.restore`: the one restore protocol (verify, restore,
  check, :class:`CorruptCheckpointError`) and the orbax plumbing;
- :mod:`~sastc_jax.checkpoints.stage`: :class:`Checkpoints`, a stage's ``latest/`` and
  ``best/`` steps, resume with fallback; :func:`load_stage_state`;
- :mod:`~sastc_jax.checkpoints.teacher`: the teacher store;
- :mod:`~sastc_jax.checkpoints.runs`: a trained run's config (:func:`load_config`) and
  student checkpoint (:func:`load_student_state`; :func:`sastc_jax.train.load_run` adds
  the model);
- :mod:`~sastc_jax.checkpoints.verify`: :func:`verify_workdir`, what ``python -m
  sastc_jax.checkpoints verify --workdir=DIR`` runs (its command line is
  :mod:`sastc_jax.cli.checkpoints`).
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
from sastc_jax.checkpoints.runs import RUN_CHECKPOINTS, load_config, load_student_state
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
    TORCH_SUFFIXES,
    VARIABLES,
    check_teacher_variables,
    is_torch_checkpoint,
    restore_teacher,
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
    "RUN_CHECKPOINTS",
    "STAGE_CHECKPOINTS",
    "STATE",
    "TEACHER_RECORD_KEYS",
    "TORCH_SUFFIXES",
    "VARIABLES",
    "CheckpointError",
    "Checkpoints",
    "CorruptCheckpointError",
    "Resumed",
    "TeacherMismatchError",
    "all_processes_agree",
    "check_teacher_variables",
    "find_checkpoints",
    "is_torch_checkpoint",
    "load_config",
    "load_stage_state",
    "load_student_state",
    "nonfinite_leaves",
    "restore_teacher",
    "save_teacher",
    "teacher_exists",
    "verify_checksums",
    "verify_workdir",
    "write_checksums",
]
