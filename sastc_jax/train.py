"""The loop of one training stage: building, resume, preemption, logging, evaluation.

Two stages share one loop:

- ``teacher``: the ANN trained with cross-entropy;
- ``distill``: the SNN student trained with ``config.method`` against the frozen
  teacher (inference mode, no gradient, no optimiser state).

The per-device program of a step (objectives, train and eval steps) lives in
:mod:`sastc_jax.step`; this module builds the stages from a config and runs them.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sastc_jax import (
    calibration,
    checkpoints,
    data,
    losses,
    metrics,
    models,
    neurons,
    parallel,
    torch_import,
)
from sastc_jax import ops as ops_lib
from sastc_jax import step as step_lib

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf in training; the last verified checkpoint is kept."""


class ParameterNormGrowthError(NonFiniteLossError):
    """The parameter norm grew past ``config.guards.max_param_norm_growth`` within one
    logging interval; the last verified checkpoint is kept."""


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


def evaluate(eval_step: Callable, variables, dataset, mesh) -> dict[str, Any]:
    """Accuracy over the whole split, every example exactly once."""
    totals = None
    for batch in dataset.epoch(0):
        sums = eval_step(variables, parallel.shard_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    if count != dataset.num_examples:
        raise RuntimeError(
            f"Evaluation counted {count} examples but the split has "
            f"{dataset.num_examples}; the eval pipeline dropped or repeated some."
        )
    per_step = [float(c) / count for c in totals["correct"]]
    result = {
        "accuracy": per_step[-1],
        "accuracy_per_t": per_step,
        "loss": float(totals["loss_sum"]) / count,
        "count": count,
    }
    if "spikes" in totals:  # a spiking model: spikes / (neurons x T) over all LIF layers
        result["firing_rate"] = float(totals["spikes"]) / float(totals["neuron_steps"])
    return result


# --------------------------------------------------------------------------- building


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


def load_teacher(
    config, workdir: Path, model: flax.linen.Module, num_classes: int, input_shape: tuple
) -> tuple[dict, dict]:
    """The frozen teacher's ``(variables, record)`` for ``model``: imported from a PyTorch
    or safetensors file (:mod:`sastc_jax.torch_import`), else from an orbax teacher
    directory. ``input_shape`` is one example's shape."""
    path = teacher_checkpoint_dir(config, workdir)
    if torch_import.is_torch_checkpoint(path):
        return torch_import.load_teacher(
            path, model, config.teacher.model, input_shape, num_classes=num_classes
        )
    return checkpoints.load_teacher(path, model=config.teacher.model, num_classes=num_classes)


@dataclasses.dataclass
class Distillation:
    """The modules of a distillation run, built from the config and a per-device input."""

    student: flax.linen.Module
    teacher: flax.linen.Module | None  # None for 'ce'
    calibrator: calibration.Calibration | None  # None for 'ce' and 'kd'
    objective: step_lib.Objective
    # Shapes of the taps the calibrator was built for (empty without a calibrator).
    tap_shapes: tuple[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]] = ([], [])

    def init_calibration(self, rng: Array) -> dict:
        """Calibration parameters (zero taps of the right shapes: only shapes matter)."""
        zeros = [[jnp.zeros(tap.shape, jnp.float32) for tap in taps] for taps in self.tap_shapes]
        return self.calibrator.init(rng, *zeros)["params"]


def build_distillation(config, num_classes: int, sample: np.ndarray) -> Distillation:
    """Student, teacher, calibration module and objective for per-device ``sample`` inputs.

    Raises ``ValueError`` when the method cannot pair these models' taps (e.g.
    'layerwise' with different tap counts) before anything is loaded.
    """
    ops = build_ops(config)
    student = build_student(config, num_classes, ops)
    teacher = build_teacher(config, num_classes, ops) if config.method != "ce" else None
    calibrator, taps = None, ([], [])
    if config.method in losses.CALIBRATED_METHODS:
        taps = (tap_shapes(student, sample), tap_shapes(teacher, sample))
        calibrator = calibration.calibration_module(
            *taps,
            method=config.method,
            embed_dim=config.calibration.embed_dim or None,
            dtype=step_lib.compute_dtype(config),
            remat=config.get("remat", False),
            attention_scale=config.loss.get("attention_scale", 1.0),
            learn_attention_scale=config.loss.get("learn_attention_scale", False),
            ops=ops,
        )
    weights = losses.LossWeights.from_config(config.loss)
    objective = step_lib.student_objective(student, teacher, calibrator, config.method, weights)
    return Distillation(student, teacher, calibrator, objective, taps)


def distillation_inputs(config, mesh):
    """``(train_data, validation_data, eval_data, sample, parts)`` of the distillation
    stage: its datasets, a zero per-device input batch and the :class:`Distillation` built
    for it."""
    optim = config.student.optimizer
    train_data, validation_data, eval_data = load_datasets(config, "student", mesh)
    local_batch = parallel.local_batch_size(optim.batch_size, mesh)
    sample = np.zeros((local_batch, *train_data.input_shape), np.float32)
    parts = build_distillation(config, train_data.num_classes, sample)
    return train_data, validation_data, eval_data, sample, parts


def initial_student(config, parts: Distillation, sample: np.ndarray, mesh) -> tuple[dict, dict]:
    """``(params, batch_stats)`` the distillation starts from: ``params['student']`` and,
    for a calibrated method, ``params['calibration']``, both from ``config.seed``."""
    rng_student, rng_calibration = jax.random.split(jax.random.key(config.seed + 1))
    variables = init_variables(parts.student, rng_student, sample, mesh)
    params = {"student": variables["params"]}
    if parts.calibrator is not None:
        init = jax.jit(parts.init_calibration, out_shardings=parallel.replicated(mesh))
        params["calibration"] = init(rng_calibration)
    return params, variables["batch_stats"]


def distill_stage(config, mesh, workdir: Path) -> Stage:
    optim = config.student.optimizer
    train_data, validation_data, eval_data, sample, parts = distillation_inputs(config, mesh)
    num_classes = train_data.num_classes
    params, batch_stats = initial_student(config, parts, sample, mesh)
    frozen, teacher_record = {}, {}
    if parts.teacher is not None:
        teacher_vars, teacher_record = load_teacher(
            config, workdir, parts.teacher, num_classes, train_data.input_shape
        )
        frozen = parallel.replicate(teacher_vars, mesh)
    tx, schedule = step_lib.make_optimizer(optim, steps_per_epoch(config, train_data))
    return Stage(
        name="student",
        model=parts.student,
        train_data=train_data,
        eval_data=eval_data,
        validation_data=validation_data,
        optim=optim,
        state=new_state(params, batch_stats, tx, mesh),
        frozen=frozen,
        train_step=step_lib.make_train_step(parts.objective, tx, schedule, mesh),
        eval_step=step_lib.make_eval_step(parts.student, mesh),
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


# --------------------------------------------------------------------------- the loop


def synced(state: step_lib.TrainState, mesh) -> step_lib.TrainState:
    """The state with batch statistics averaged across devices (before eval and saving)."""
    mean_stats = parallel.average_copies(state.batch_stats, mesh)
    return state.replace(batch_stats=parallel.per_device_copies(mean_stats, mesh))


def portable(state: step_lib.TrainState, mesh) -> step_lib.TrainState:
    """Replicated form saved to disk: batch statistics averaged, no device axis."""
    return state.replace(batch_stats=parallel.average_copies(state.batch_stats, mesh))


class SigtermFlag:
    """Set by SIGTERM; the loop saves a checkpoint and stops at the next step.

    Multi-process runs leave SIGTERM to JAX's preemption notifier (installed by
    ``jax.distributed.initialize``) and ask ``stop_at(step)`` at every step: every process
    then stops at the same step, however far apart their signals arrive.
    """

    def __init__(self):
        self.raised = False
        self._previous = None

    def stop_at(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (call once per step, on every process)."""
        if jax.process_count() == 1:
            return self.raised
        from jax.experimental import multihost_utils

        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled
            return False

    def __enter__(self):
        if jax.process_count() > 1:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@jax.jit
def global_norm(params) -> Array:
    return optax.global_norm(params)


def check_finite(step: int, parts: dict[str, float], last_checkpoint: int | None) -> None:
    """Raise NonFiniteLossError (divergence) unless every loss part is finite.

    ``last_checkpoint``: the newest checkpoint step verified intact (restored after
    verification, or checksummed once written), not merely the last one saved. A
    restored state is checked finite by the checkpoints themselves, so divergence here
    is the training's own.
    """
    if not all(np.isfinite(value) for value in parts.values()):
        described = ", ".join(f"{name}={value:.6g}" for name, value in parts.items())
        kept = (
            f"the last verified checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None
            else "no checkpoint had been verified yet"
        )
        raise NonFiniteLossError(
            f"Non-finite loss or parameters at step {step}: {described}; {kept}. "
            "Lower the learning rate or the loss weights and rerun."
        )


def check_param_norm_growth(
    step: int,
    param_norm: float,
    reference: tuple[int, float] | None,
    max_growth: float,
    last_checkpoint: int | None,
) -> None:
    """Raise :class:`ParameterNormGrowthError` when ``param_norm`` exceeds ``max_growth``
    times the norm at ``reference = (its step, its norm)``; ``max_growth = 0``: off."""
    if not max_growth or reference is None:
        return
    reference_step, reference_norm = reference
    if param_norm <= max_growth * reference_norm:
        return
    kept = (
        f"the last verified checkpoint (step {last_checkpoint}) is kept"
        if last_checkpoint is not None
        else "no checkpoint had been verified yet"
    )
    raise ParameterNormGrowthError(
        f"The parameter norm grew from {reference_norm:.6g} (step {reference_step}) to "
        f"{param_norm:.6g} at step {step}: x{param_norm / reference_norm:.2f}, more than "
        f"config.guards.max_param_norm_growth = {max_growth} within one logging interval; "
        f"{kept}. Lower the learning rate or the loss weights (or set "
        "config.*.optimizer.clip_grad_norm) and rerun."
    )


def calibration_ratio_warning(
    parts: dict[str, float], weights: losses.LossWeights, max_ratio: float
) -> str | None:
    """The warning when ``beta * calibration`` exceeds ``max_ratio`` times ``gamma * CE``
    (None when it does not, or when ``max_ratio`` is 0)."""
    calibration_term = weights.beta * parts.get("calibration", 0.0)
    ce_term = weights.gamma * parts["ce"]
    if not max_ratio or calibration_term <= max_ratio * abs(ce_term):
        return None
    ratio = calibration_term / abs(ce_term) if ce_term else float("inf")
    return (
        f"warning: at the first step beta * calibration = {weights.beta:g} * "
        f"{parts['calibration']:.6g} = {calibration_term:.6g} is {ratio:.1f}x the CE term "
        f"(gamma * CE = {ce_term:.6g}), more than config.guards.max_calibration_ratio = "
        f"{max_ratio:g}. The calibration term dominates the gradients: consider a lower "
        "config.loss.beta or config.student.optimizer.clip_grad_norm."
    )


class TrainLog:
    """Per-step metrics of one stage, read one step late so dispatch stays asynchronous.

    Every step's metrics are checked for non-finite values and for the parameter norm
    growing more than ``guards.max_param_norm_growth`` times since the last logging step
    (the run stops with the step and the loss parts), shown on the progress bar, and
    written at step 1 and every ``log_every`` steps. The first step's parts are also
    printed, with a warning when its calibration term dwarfs the CE term
    (``guards.max_calibration_ratio``; ``weights`` None: no calibration term).
    """

    def __init__(
        self,
        logger: metrics.MetricsLogger,
        stage: Stage,
        log_every: int,
        *,
        guards: ml_collections.ConfigDict | None = None,
        weights: losses.LossWeights | None = None,
        initial_param_norm: tuple[int, float] | None = None,
    ):
        self.logger, self.stage, self.log_every = logger, stage, log_every
        self.max_growth = guards.max_param_norm_growth if guards is not None else 0.0
        self.max_ratio = guards.max_calibration_ratio if guards is not None else 0.0
        self.weights = weights
        # (step, parameter norm) at the start of the current logging interval.
        self.norm_reference = initial_param_norm
        self.pending = None
        self.progress = None

    def start_epoch(self, epoch: int, steps: int, offset: int) -> None:
        self.epoch, self.epoch_start, self.epoch_images = epoch, time.perf_counter(), 0
        self.progress = self.logger.progress(
            total=steps,
            initial=offset,
            desc=f"{self.stage.name} epoch {epoch + 1}/{self.stage.optim.epochs}",
        )

    def push(self, step: int, parts: dict[str, Array], last_checkpoint: int | None) -> None:
        """Record step ``step``'s (still running) metrics; read the previous step's."""
        self.epoch_images += self.stage.optim.batch_size
        self.flush(last_checkpoint)
        self.pending = (step, parts)

    def flush(self, last_checkpoint: int | None) -> None:
        if self.pending is None:
            return
        step, parts = self.pending
        self.pending = None
        values = {name: float(value) for name, value in jax.device_get(parts).items()}
        losses_only = {k: v for k, v in values.items() if k != "learning_rate"}
        check_finite(step, losses_only, last_checkpoint)
        if step == 1:  # printed before the growth guard can stop a first-step blow-up
            self.first_step(values)
        check_param_norm_growth(
            step, values["param_norm"], self.norm_reference, self.max_growth, last_checkpoint
        )
        rate = self.epoch_images / max(time.perf_counter() - self.epoch_start, 1e-9)
        self.progress.update(1)
        self.progress.set_postfix(
            {k: f"{v:.4g}" for k, v in losses_only.items()} | {"img/s": metrics.format_rate(rate)},
            refresh=False,
        )
        if step % self.log_every == 0:
            self.norm_reference = (step, values["param_norm"])
        if step % self.log_every == 0 or step == 1:
            self.logger.write(
                {
                    "stage": self.stage.name,
                    "split": "train",
                    "step": step,
                    "epoch": self.epoch,
                    "images_per_second": rate,
                    **values,
                }
            )

    def first_step(self, values: dict[str, float]) -> None:
        """Print the first step's loss parts and warn when calibration dwarfs CE."""
        shown = ("ce", "kd", "calibration", "loss", "grad_norm", "param_norm")
        described = " ".join(f"{k}={values[k]:.6g}" for k in shown if k in values)
        if self.norm_reference is not None:
            described += f" (param_norm {self.norm_reference[1]:.6g} before it)"
        self.logger.info(f"[{self.stage.name}] first step: {described}")
        if self.weights is not None:
            warning = calibration_ratio_warning(values, self.weights, self.max_ratio)
            if warning:
                self.logger.info(f"[{self.stage.name}] {warning}")

    def end_epoch(self, last_checkpoint: int | None) -> int:
        """Flush and close the bar; returns the images trained on this epoch."""
        self.flush(last_checkpoint)
        self.progress.close()
        return self.epoch_images


def bad_example_policies(*datasets) -> list:
    """The :class:`data.BadExamples` of these datasets (policy 'skip'; None is skipped)."""
    return [d.bad_examples for d in datasets if d is not None and d.bad_examples is not None]


def log_bad_examples(datasets, workdir: Path) -> None:
    """Have this process log the datasets' replaced examples to its file in ``workdir``."""
    for policy in bad_example_policies(*datasets):
        policy.log_path = data.bad_examples.log_path(workdir, jax.process_index())


def count_bad_examples(datasets) -> int:
    """Distinct examples replaced in these datasets, over all processes (call on every one)."""
    gather = None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gather = multihost_utils.process_allgather
    return data.bad_examples.count_bad(bad_example_policies(*datasets), gather)


def run_stage(
    stage: Stage, config, workdir: Path, mesh, logger: metrics.MetricsLogger
) -> dict[str, Any]:
    """Train one stage to the end (resuming from its checkpoints), return its summary.

    Checkpoints every ``config.checkpoint_every_steps`` steps and after every evaluation
    (the best by accuracy is kept separately); SIGTERM saves and raises
    :class:`Preempted`; a non-finite loss raises :class:`NonFiniteLossError` before
    anything after the last good checkpoint is saved.
    """
    steps = steps_per_epoch(config, stage.train_data)
    total_steps = stage.optim.epochs * steps
    splits = (stage.train_data, stage.validation_data, stage.eval_data)
    log_bad_examples(splits, workdir)
    start, images, last_eval = time.perf_counter(), 0, None
    with (
        checkpoints.Checkpoints(workdir / stage.name, max_to_keep=config.keep_checkpoints) as ckpts,
        SigtermFlag() as sigterm,
    ):
        # The newest intact checkpoint; corrupt ones are reported and moved aside.
        state, resumed = stage.state, ckpts.resume(portable(stage.state, mesh))
        if resumed is not None:
            stats = parallel.per_device_copies(resumed.state.batch_stats, mesh)
            state = resumed.state.replace(batch_stats=stats)
            logger.info(f"[{stage.name}] resumed from step {resumed.step} in {resumed.path}")
        step = int(jax.device_get(state.step))
        calibrated = stage.name == "student" and config.method in losses.CALIBRATED_METHODS
        log = TrainLog(
            logger,
            stage,
            config.log_every_steps,
            guards=config.guards,
            weights=losses.LossWeights.from_config(config.loss) if calibrated else None,
            # Computed once here; every step returns its own norm from the jitted step.
            initial_param_norm=(step, float(jax.device_get(global_norm(state.params)))),
        )
        best = ckpts.best()
        best_metrics = best[1] if best else None

        def save(state, eval_metrics=None) -> None:
            # A step already under latest/ (periodic save, then the epoch's evaluation)
            # is kept as it is; the evaluated one may still become the best.
            ckpts.save(
                step,
                portable(state, mesh),
                metadata={**stage.record, "step": step},
                metrics=eval_metrics,
            )

        while step < total_steps:
            epoch, offset = divmod(step, steps)
            log.start_epoch(epoch, steps, offset)
            for batch in stage.train_data.epoch(epoch, start_step=offset):
                if step == (epoch + 1) * steps:
                    break
                state, parts = stage.train_step(
                    state, stage.frozen, parallel.shard_batch(batch, mesh)
                )
                step += 1
                log.push(step, parts, ckpts.verified_step())
                stop = sigterm.stop_at(step)
                if step % config.checkpoint_every_steps == 0 or stop:
                    log.flush(ckpts.verified_step())
                    state = synced(state, mesh)
                    save(state)
                if stop:
                    log.end_epoch(ckpts.verified_step())
                    raise Preempted(
                        f"SIGTERM at step {step}: checkpoint saved in "
                        f"{ckpts.directory}; rerun the same command to resume."
                    )
            images += log.end_epoch(ckpts.verified_step())
            if (step // steps) % config.eval_every_epochs == 0 or step == total_steps:
                state = synced(state, mesh)
                last_eval, checkpoint_metrics = evaluate_for_selection(
                    stage, eval_variables(state, mesh), mesh, logger, step, step // steps
                )
                if (
                    best_metrics is None
                    or checkpoint_metrics["accuracy"] > best_metrics["accuracy"]
                ):
                    best_metrics = checkpoint_metrics
                save(state, checkpoint_metrics)
        if last_eval is None:  # resumed after the last step: evaluate what was saved
            state = synced(state, mesh)
            last_eval = evaluate(
                stage.eval_step, eval_variables(state, mesh), stage.eval_data, mesh
            )
    elapsed = time.perf_counter() - start
    summary = {
        "stage": stage.name,
        "model": stage.record["model"],
        "step": step,
        "final_accuracy": last_eval["accuracy"],
        "best_accuracy": best_test_accuracy(best_metrics, last_eval),
        "accuracy_per_t": last_eval["accuracy_per_t"],
        "seconds": elapsed,
        "images_per_second": images / elapsed if elapsed else 0.0,
    }
    if stage.validation_data is not None and best_metrics is not None:
        summary["best_validation_accuracy"] = best_metrics["accuracy"]
    if bad_example_policies(*splits):  # policy 'skip' on a reader it applies to
        summary["bad_examples"] = count_bad_examples(splits)
    stage.state = state
    logger.write({"split": "summary", **summary})
    return summary


def evaluate_for_selection(
    stage: Stage, variables, mesh, logger: metrics.MetricsLogger, step: int, epoch: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate on the test split (logged) and, when there is one, the validation split.

    Returns the test evaluation and the checkpoint metrics: ``{'accuracy': the selection
    accuracy}``, which is the validation accuracy (with ``'test_accuracy'`` beside it)
    when a validation split exists and the test accuracy otherwise.
    """
    splits = [("test", stage.eval_data)]
    if stage.validation_data is not None:
        splits.append(("validation", stage.validation_data))
    results = {}
    for split, dataset in splits:
        results[split] = evaluate(stage.eval_step, variables, dataset, mesh)
        logger.write(
            {"stage": stage.name, "split": split, "step": step, "epoch": epoch, **results[split]}
        )
    test = results["test"]
    if "validation" in results:
        return test, {
            "accuracy": results["validation"]["accuracy"],
            "test_accuracy": test["accuracy"],
        }
    return test, {"accuracy": test["accuracy"]}


def best_test_accuracy(best_metrics: dict | None, last_eval: dict[str, Any]) -> float:
    """Test accuracy of the selected ("best") checkpoint.

    Selected on validation, it is the test accuracy recorded with that checkpoint;
    selected on test (no validation split), the best test accuracy seen.
    """
    if best_metrics is None:
        return last_eval["accuracy"]
    if "test_accuracy" in best_metrics:
        return float(best_metrics["test_accuracy"])
    return max(float(best_metrics["accuracy"]), last_eval["accuracy"])


def eval_variables(state: step_lib.TrainState, mesh) -> dict:
    """Inference variables of the trained model (the student's, in the distill stage)."""
    params = state.params.get("student", state.params)
    return {"params": params, "batch_stats": parallel.average_copies(state.batch_stats, mesh)}


def train_teacher(config, workdir: Path, mesh, logger) -> dict[str, Any]:
    """Stage ``teacher``: train the ANN with CE and save it for distillation."""
    stage = teacher_stage(config, mesh)
    summary = run_stage(stage, config, workdir, mesh, logger)
    variables = eval_variables(stage.state, mesh)
    checkpoints.save_teacher(
        teacher_checkpoint_dir(config, workdir),
        jax.device_get(variables),
        model=config.teacher.model,
        num_classes=stage.train_data.num_classes,
        dataset=config.dataset.name,
        accuracy=summary["final_accuracy"],
    )
    return summary


def train_student(config, workdir: Path, mesh, logger) -> dict[str, Any]:
    """Stage ``distill``: train the SNN with ``config.method`` against the frozen teacher."""
    stage = distill_stage(config, mesh, workdir)
    summary = run_stage(stage, config, workdir, mesh, logger)
    summary["teacher_accuracy"] = stage.record["teacher"].get("accuracy")
    summary["method"] = config.method
    return summary


def load_test_split(config, role: str, mesh):
    """The test split for this process's share of stage ``role``'s global batch
    (``config.<role>.optimizer.batch_size``), as the stage evaluates it."""
    settings = dataset_settings(config, config[role].optimizer.batch_size, mesh)
    return data.get_dataset(config.dataset.name, "test", train=False, **settings)


def evaluate_checkpoint(config, workdir: Path, mesh, logger) -> dict[str, Any]:
    """Stage ``evaluate``: the test-split accuracy of a saved model, without training.

    ``config.evaluate`` picks the model: ``'teacher'`` (the orbax teacher directory or the
    imported PyTorch / safetensors file of ``config.teacher.checkpoint``), ``'student'``
    (the latest checkpoint of ``WORKDIR/student``) or ``'student_best'`` (its best one).
    Writes a ``summary`` record with ``stage='evaluate'`` and returns it.
    """
    start = time.perf_counter()
    logger.info(
        f"[evaluate] {config.evaluate}: loading the test split and the checkpoint "
        "(the first batch then compiles the model)"
    )
    if config.evaluate == "teacher":
        eval_data = load_test_split(config, "teacher", mesh)
        model = build_teacher(config, eval_data.num_classes)
        variables, _ = load_teacher(
            config, workdir, model, eval_data.num_classes, eval_data.input_shape
        )
        variables = parallel.replicate(variables, mesh)
        eval_step = step_lib.make_eval_step(model, mesh)
        found = {
            "model": config.teacher.model,
            "checkpoint": str(teacher_checkpoint_dir(config, workdir)),
        }
    else:
        eval_data = load_test_split(config, "student", mesh)
        which = "best" if config.evaluate == "student_best" else "latest"
        run = checkpoints.load_run(workdir, which, config=config)
        variables = run.variables
        eval_step = step_lib.make_eval_step(run.model, mesh)
        found = {
            "model": config.student.model,
            "checkpoint": str(run.checkpoint_dir),
            "step": run.metadata.get("step"),
        }
    log_bad_examples([eval_data], workdir)
    logger.info(
        f"[evaluate] {found['model']} from {found['checkpoint']}: evaluating "
        f"{eval_data.num_examples} test examples"
    )
    result = evaluate(eval_step, variables, eval_data, mesh)
    summary = {
        "stage": "evaluate",
        "split": "summary",
        "evaluated": config.evaluate,
        **found,
        **result,
        "seconds": time.perf_counter() - start,
    }
    if bad_example_policies(eval_data):
        summary["bad_examples"] = count_bad_examples([eval_data])
    logger.write(summary)
    return summary
