"""Training: the per-device step, the stages built from a config, and their loop.

- :mod:`~sastc_jax.train.step`: objectives, the jitted data-parallel train and eval steps
  (pure functions; importable without the loop);
- :mod:`~sastc_jax.train.stages`: datasets, models, the teacher load and the state of
  each stage;
- :mod:`~sastc_jax.train.loop`: resume, logging, evaluation, checkpoints;
- :mod:`~sastc_jax.train.runs`: :func:`load_run`, a trained run's config, student and
  variables;
- :mod:`~sastc_jax.train.guards`, :mod:`~sastc_jax.train.preemption`: what stops a run.
"""

from sastc_jax.train import step
from sastc_jax.train.guards import (
    NonFiniteLossError,
    ParameterNormGrowthError,
    calibration_ratio_warning,
    check_finite,
    check_param_norm_growth,
    global_norm,
)
from sastc_jax.train.loop import (
    TrainLog,
    bad_example_policies,
    best_test_accuracy,
    count_bad_examples,
    eval_variables,
    evaluate,
    evaluate_checkpoint,
    evaluate_for_selection,
    log_bad_examples,
    portable,
    run_stage,
    synced,
    train_student,
    train_teacher,
)
from sastc_jax.train.preemption import Preempted, SigtermFlag
from sastc_jax.train.runs import Run, load_run
from sastc_jax.train.stages import (
    Distillation,
    Stage,
    build_distillation,
    build_ops,
    build_student,
    build_teacher,
    dataset_settings,
    distill_stage,
    distillation_inputs,
    init_variables,
    initial_student,
    load_configured_teacher,
    load_datasets,
    load_test_split,
    model_from_config,
    new_state,
    steps_per_epoch,
    tap_shapes,
    teacher_checkpoint_dir,
    teacher_stage,
)

__all__ = [
    "Distillation",
    "NonFiniteLossError",
    "ParameterNormGrowthError",
    "Preempted",
    "Run",
    "SigtermFlag",
    "Stage",
    "TrainLog",
    "bad_example_policies",
    "best_test_accuracy",
    "build_distillation",
    "build_ops",
    "build_student",
    "build_teacher",
    "calibration_ratio_warning",
    "check_finite",
    "check_param_norm_growth",
    "count_bad_examples",
    "dataset_settings",
    "distill_stage",
    "distillation_inputs",
    "eval_variables",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_for_selection",
    "global_norm",
    "init_variables",
    "initial_student",
    "load_configured_teacher",
    "load_datasets",
    "load_run",
    "load_test_split",
    "log_bad_examples",
    "model_from_config",
    "new_state",
    "portable",
    "run_stage",
    "step",
    "steps_per_epoch",
    "synced",
    "tap_shapes",
    "teacher_checkpoint_dir",
    "teacher_stage",
    "train_student",
    "train_teacher",
]
