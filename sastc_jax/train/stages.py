"""The two stages built from a config: datasets, models, optimiser, step functions, state.

- ``teacher``: the ANN trained with cross-entropy;
- ``student`` (distillation): the SNN trained with ``config.method`` against the frozen
  teacher (inference mode, no gradient, no optimiser state), loaded once from its orbax
  directory or imported from a PyTorch / safetensors file.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sastc_jax import (
    calibration,
    checkpoints,
    data,
    methods,
    models,
    neurons,
    parallel,
    param_tree,
)
from sastc_jax import ops as ops_lib
from sastc_jax.interop import pytorch
from sastc_jax.train import step as step_lib

Array = jax.Array


@dataclasses.dataclass
class Stage:
    """Everything one stage needs: models, datasets, step functions and the state."""

    name: str
    model: flax.linen.Module
    train_data: Any
    eval_data: Any  # the test split: reported, never used to select
    validation_data: Any  # selects the "best" checkpoint; None = the test split does
    optim: ml_collections.ConfigDict
    state: step_lib.TrainState
    frozen: Any
    train_step: Callable
    eval_step: Callable
    record: dict  # JSON facts stored with every checkpoint


def dataset_settings(config: ml_collections.ConfigDict, global_batch: int, mesh) -> dict:
    """``data.get_dataset`` keywords shared by both splits, for this process's share of a
    global batch."""
    parallel.local_batch_size(global_batch, mesh)  # raises unless it divides by the devices
    return dict(
        batch_size=global_batch // jax.process_count(),
        time_steps=config.time_steps,
        seed=config.seed,
        data_dir=config.dataset.data_dir or None,
        source=config.dataset.source,
        num_devices=jax.local_device_count(),
        image_size=config.dataset.image_size or None,
        validation_fraction=config.dataset.validation_fraction,
        bad_examples=config.dataset.get("bad_examples", "error"),
    )


def load_datasets(config: ml_collections.ConfigDict, role: str, mesh):
    """Train, validation and test datasets for this process's share of the global batch
    of stage ``role`` ('teacher' | 'student': ``config.<role>.optimizer.batch_size``).

    The validation split is ``None`` unless ``config.dataset.validation_fraction > 0``;
    then it is held out of the training split (:mod:`sastc_jax.data.validation`).
    """
    common = dataset_settings(config, config[role].optimizer.batch_size, mesh)
    try:
        train_data = data.get_dataset(
            config.dataset.name, "train", train=True, augment=config.dataset.augment, **common
        )
    except data.BatchLargerThanSplitError as err:
        raise ValueError(
            f"{err} Lower config.{role}.optimizer.batch_size (the {role} stage's global batch)."
        ) from None
    validation_data = (
        data.get_dataset(config.dataset.name, "validation", train=False, **common)
        if config.dataset.validation_fraction
        else None
    )
    eval_data = data.get_dataset(config.dataset.name, "test", train=False, **common)
    return train_data, validation_data, eval_data


def model_from_config(section: ml_collections.ConfigDict, role: str, **settings):
    """``models.get_model(section.model, **settings, **section.model_kwargs)`` with an
    error that names the config fields when the keyword arguments do not fit the model."""
    kwargs = section.model_kwargs.to_dict()
    try:
        return models.get_model(section.model, **settings, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"config.{role}.model_kwargs = {kwargs} do not fit the model {section.model!r}: {error}"
        ) from error


def build_ops(config) -> ops_lib.Ops:
    """``ops.select(config.ops)``: the compute forms of every model and the calibration."""
    return ops_lib.select(config.get("ops", "auto"))


def build_teacher(config, num_classes: int, ops: ops_lib.Ops | None = None) -> flax.linen.Module:
    return model_from_config(
        config.teacher,
        "teacher",
        num_classes=num_classes,
        dtype=step_lib.compute_dtype(config),
        ops=ops or build_ops(config),
    )


def build_student(config, num_classes: int, ops: ops_lib.Ops | None = None) -> flax.linen.Module:
    # remat is passed only when set (configuration.validate refuses it for a student
    # without the option), so a registered student without it still builds.
    remat = {"remat": True} if config.get("remat", False) else {}
    return model_from_config(
        config.student,
        "student",
        num_classes=num_classes,
        time_steps=config.time_steps,
        neuron=neurons.LIFConfig(**config.neuron.to_dict()),
        dtype=step_lib.compute_dtype(config),
        ops=ops or build_ops(config),
        **remat,
    )


def tap_shapes(model: flax.linen.Module, sample: np.ndarray) -> list[jax.ShapeDtypeStruct]:
    """Shapes of a model's distillation taps for this per-device input (no FLOPs spent)."""
    variables = jax.eval_shape(
        functools.partial(model.init, train=False, mutable=True), jax.random.key(0), sample
    )
    return models.get_taps(variables)


def init_variables(model: flax.linen.Module, rng: Array, sample: np.ndarray, mesh) -> dict:
    """Model variables, initialised once under jit and replicated on the mesh."""
    init = jax.jit(
        functools.partial(model.init, train=False), out_shardings=parallel.replicated(mesh)
    )
    return flax.core.unfreeze(init(rng, jnp.zeros(sample.shape, jnp.float32)))


def new_state(params, batch_stats, tx, mesh) -> step_lib.TrainState:
    opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
    return step_lib.TrainState(
        step=parallel.replicate(np.zeros((), np.int32), mesh),
        params=params,
        batch_stats=parallel.per_device_copies(batch_stats, mesh),
        opt_state=opt_state,
    )


def teacher_stage(config, mesh) -> Stage:
    optim = config.teacher.optimizer
    train_data, validation_data, eval_data = load_datasets(config, "teacher", mesh)
    model = build_teacher(config, train_data.num_classes)
    sample = np.zeros((mesh.size, *train_data.input_shape), np.float32)
    variables = init_variables(model, jax.random.key(config.seed), sample, mesh)
    tx, schedule = step_lib.make_optimizer(optim, steps_per_epoch(config, train_data))
    return Stage(
        name="teacher",
        model=model,
        train_data=train_data,
        eval_data=eval_data,
        validation_data=validation_data,
        optim=optim,
        state=new_state(variables["params"], variables["batch_stats"], tx, mesh),
        frozen={},
        train_step=step_lib.make_train_step(step_lib.teacher_objective(model), tx, schedule, mesh),
        eval_step=step_lib.make_eval_step(model, mesh),
        record={
            "model": config.teacher.model,
            "num_classes": train_data.num_classes,
            "dataset": config.dataset.name,
        },
    )


def teacher_checkpoint_dir(config, workdir: Path) -> Path:
    """The teacher's orbax directory, or the PyTorch / safetensors file to import."""
    return (
        Path(config.teacher.checkpoint)
        if config.teacher.checkpoint
        else (workdir / "teacher" / "final")
    )


def load_configured_teacher(
    config, workdir: Path, model: flax.linen.Module, num_classes: int, input_shape: tuple
) -> tuple[dict, dict]:
    """The frozen teacher's ``(variables, record)`` for ``model``: imported from a PyTorch
    or safetensors file (:mod:`sastc_jax.interop.pytorch`), else from an orbax teacher
    directory. ``input_shape`` is one example's shape."""
    path = teacher_checkpoint_dir(config, workdir)
    if pytorch.is_torch_checkpoint(path):
        return pytorch.load_teacher(
            path, model, config.teacher.model, input_shape, num_classes=num_classes
        )
    variables, record = checkpoints.restore_teacher(
        path, model=config.teacher.model, num_classes=num_classes
    )
    expected = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
    )
    checkpoints.check_teacher_variables(variables, expected, str(path))
    return variables, record


@dataclasses.dataclass
class Distillation:
    """The modules of a distillation run, built from the config and a per-device input."""

    student: flax.linen.Module
    teacher: flax.linen.Module | None  # None for a method without a teacher ('ce')
    calibrator: calibration.Calibration | None  # None for a method without a calibration
    objective: step_lib.Objective
    # Shapes of the taps the calibrator was built for (empty without a calibrator).
    tap_shapes: tuple[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]] = ([], [])

    def init_calibration(self, rng: Array) -> dict:
        """Calibration parameters (zero taps of the right shapes: only shapes matter)."""
        zeros = [[jnp.zeros(tap.shape, jnp.float32) for tap in taps] for taps in self.tap_shapes]
        return self.calibrator.init(rng, *zeros)["params"]


def build_distillation(config, num_classes: int, sample: np.ndarray) -> Distillation:
    """Student, teacher, calibration module and objective for per-device ``sample`` inputs,
    as the registered method ``config.method`` needs them (:mod:`sastc_jax.methods`).

    Raises ``ValueError`` when the method cannot pair these models' taps (e.g.
    'layerwise' with different tap counts) before anything is loaded.
    """
    method = methods.get_method(config.method)
    ops = build_ops(config)
    student = build_student(config, num_classes, ops)
    teacher = build_teacher(config, num_classes, ops) if method.needs_teacher else None
    calibrator, taps = None, ([], [])
    if method.calibrated:
        taps = (tap_shapes(student, sample), tap_shapes(teacher, sample))
        calibrator = calibration.calibration_module(
            *taps,
            method=method.calibration,
            embed_dim=config.calibration.embed_dim or None,
            dtype=step_lib.compute_dtype(config),
            remat=config.get("remat", False),
            attention_scale=config.loss.get("attention_scale", 1.0),
            learn_attention_scale=config.loss.get("learn_attention_scale", False),
            ops=ops,
        )
    weights = methods.LossWeights.from_config(config.loss)
    objective = step_lib.student_objective(student, teacher, calibrator, method, weights)
    return Distillation(student, teacher, calibrator, objective, taps)


def distillation_inputs(config, mesh):
    """``(train_data, validation_data, eval_data, sample, distillation)`` of the distillation
    stage: its datasets, a zero per-device input batch and the :class:`Distillation` built
    for it."""
    optim = config.student.optimizer
    train_data, validation_data, eval_data = load_datasets(config, "student", mesh)
    local_batch = parallel.local_batch_size(optim.batch_size, mesh)
    sample = np.zeros((local_batch, *train_data.input_shape), np.float32)
    distillation = build_distillation(config, train_data.num_classes, sample)
    return train_data, validation_data, eval_data, sample, distillation


def initial_student(
    config, distillation: Distillation, sample: np.ndarray, mesh
) -> tuple[dict, dict]:
    """``(params, batch_stats)`` the distillation starts from: the student's parameters
    and, for a calibrated method, the calibration's (:mod:`sastc_jax.param_tree`), both
    from ``config.seed``."""
    rng_student, rng_calibration = jax.random.split(jax.random.key(config.seed + 1))
    variables = init_variables(distillation.student, rng_student, sample, mesh)
    calibration_params = None
    if distillation.calibrator is not None:
        init = jax.jit(distillation.init_calibration, out_shardings=parallel.replicated(mesh))
        calibration_params = init(rng_calibration)
    params = param_tree.distillation_params(variables["params"], calibration_params)
    return params, variables["batch_stats"]


def distill_stage(config, mesh, workdir: Path) -> Stage:
    optim = config.student.optimizer
    train_data, validation_data, eval_data, sample, distillation = distillation_inputs(config, mesh)
    num_classes = train_data.num_classes
    params, batch_stats = initial_student(config, distillation, sample, mesh)
    frozen, teacher_record = {}, {}
    if distillation.teacher is not None:
        teacher_vars, teacher_record = load_configured_teacher(
            config, workdir, distillation.teacher, num_classes, train_data.input_shape
        )
        frozen = parallel.replicate(teacher_vars, mesh)
    tx, schedule = step_lib.make_optimizer(optim, steps_per_epoch(config, train_data))
    return Stage(
        name="student",
        model=distillation.student,
        train_data=train_data,
        eval_data=eval_data,
        validation_data=validation_data,
        optim=optim,
        state=new_state(params, batch_stats, tx, mesh),
        frozen=frozen,
        train_step=step_lib.make_train_step(distillation.objective, tx, schedule, mesh),
        eval_step=step_lib.make_eval_step(distillation.student, mesh),
        record={
            "model": config.student.model,
            "num_classes": num_classes,
            "dataset": config.dataset.name,
            "method": config.method,
            "teacher": teacher_record,
        },
    )


def steps_per_epoch(config, dataset) -> int:
    """Training steps per epoch, optionally cut short by ``config.max_steps_per_epoch``."""
    steps = dataset.steps_per_epoch
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"The training split ({dataset.num_examples} examples) is too small "
            "for one batch per host; lower the batch size."
        )
    return steps


def load_test_split(config, role: str, mesh):
    """The test split for this process's share of stage ``role``'s global batch
    (``config.<role>.optimizer.batch_size``), as the stage evaluates it."""
    settings = dataset_settings(config, config[role].optimizer.batch_size, mesh)
    return data.get_dataset(config.dataset.name, "test", train=False, **settings)
