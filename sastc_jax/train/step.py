"""The per-device program of one training step: objectives, train and eval steps.

Everything here is importable without the training loop (a notebook, a benchmark):

- :func:`teacher_objective` / :func:`student_objective`: the loss of a stage as a pure
  function ``(params, batch_stats, frozen, batch) -> (loss, (parts, batch_stats))``;
- :func:`make_train_step`: that objective differentiated per device, gradients averaged
  with ``pmean`` over ``'batch'``, the optax update, compiled as
  ``jax.jit(jax.shard_map(...))`` with the state donated;
- :func:`make_eval_step`: masked correct counts at every number of time steps, summed
  over the mesh.

The per-device batch is the calibration batch: the similarity matrices and the
attention use that many samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from sastc_jax import calibration, losses, methods, models, param_tree
from sastc_jax.parallel import AXIS

Array = jax.Array
Objective = Callable[..., tuple[Array, tuple[dict[str, Array], Any]]]


@flax.struct.dataclass
class TrainState:
    """Replicated parameters and optimiser state; ``batch_stats`` has a leading
    per-device axis (sharded over ``'batch'``) while training."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any


STATE_SPECS = TrainState(step=P(), params=P(), batch_stats=P(AXIS), opt_state=P())


def compute_dtype(config: ml_collections.ConfigDict):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]


def make_optimizer(
    optim: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum and coupled weight decay (as PyTorch's SGD) and its schedule,
    after clipping the gradients' global norm to ``optim.clip_grad_norm`` when it is > 0
    (as ``torch.nn.utils.clip_grad_norm_`` before the step)."""
    total_steps = optim.epochs * steps_per_epoch
    warmup_steps = int(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "step":
        boundaries = {
            int(epoch * steps_per_epoch): optim.decay_factor for epoch in optim.decay_epochs
        }
        main = optax.piecewise_constant_schedule(optim.learning_rate, boundaries)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(optim.learning_rate, max(total_steps - warmup_steps, 1))
    else:
        main = optax.constant_schedule(optim.learning_rate)
    if warmup_steps:
        warmup = optax.linear_schedule(0.0, optim.learning_rate, warmup_steps)
        schedule = optax.join_schedules([warmup, main], [warmup_steps])
    else:
        schedule = main
    # Clipping (off by default, as in the release) adds a link only when on: the default
    # optimiser state and arithmetic stay those of the release.
    clip = optim.get("clip_grad_norm", 0.0)
    clipping = [optax.clip_by_global_norm(clip)] if clip else []
    tx = optax.chain(
        *clipping,
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov),
    )
    return tx, schedule


# --------------------------------------------------------------------------- objectives


def teacher_objective(model: flax.linen.Module) -> Objective:
    """Cross-entropy of an ANN. ``(params, batch_stats, frozen, batch) -> (loss, aux)``."""

    def objective(params, batch_stats, frozen, batch):
        del frozen
        logits, mutated = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = losses.cross_entropy(logits[None], batch["label"])
        parts = {"ce": loss, "loss": loss, "accuracy": accuracy(logits[None], batch["label"])}
        return loss, (parts, mutated["batch_stats"])

    return objective


def student_objective(
    student: flax.linen.Module,
    teacher: flax.linen.Module | None,
    calibrator: calibration.Calibration | None,
    method: str | methods.Method,
    weights: losses.LossWeights,
) -> Objective:
    """The distillation loss of ``method`` (a registered name, :mod:`sastc_jax.methods`)
    for the student's parameters.

    ``params``: :mod:`sastc_jax.param_tree` (no calibration entry without a calibration);
    ``frozen`` holds the teacher's variables (empty for a method without a teacher).
    """
    method = methods.get_method(method)

    def objective(params, batch_stats, frozen, batch):
        teacher_logits, teacher_taps = None, None
        if method.needs_teacher:
            teacher_logits, teacher_vars = teacher.apply(
                frozen, batch["image"], train=False, mutable=["intermediates"]
            )
            teacher_logits = jax.lax.stop_gradient(teacher_logits)
            teacher_taps = jax.lax.stop_gradient(models.get_taps(teacher_vars))
        logits, student_vars = student.apply(
            {"params": param_tree.student_params(params), "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats", "intermediates"],
        )
        calibration_loss = None
        if calibrator is not None:
            calibration_loss, _ = calibrator.apply(
                {"params": param_tree.calibration_params(params)},
                models.get_taps(student_vars),
                teacher_taps,
            )
        loss, parts = method.loss(
            logits,
            batch["label"],
            teacher_logits=teacher_logits,
            calibration=calibration_loss,
            weights=weights,
        )
        parts["accuracy"] = accuracy(logits, batch["label"])
        return loss, (parts, student_vars["batch_stats"])

    return objective


def accuracy(logits: Array, labels: Array) -> Array:
    """Top-1 accuracy of the time-mean logits ``(T, B, K)``."""
    return jnp.mean(jnp.argmax(jnp.mean(logits, axis=0), axis=-1) == labels)


# --------------------------------------------------------------------------- steps


def make_train_step(
    objective: Objective, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh
) -> Callable:
    """``step(state, frozen, batch) -> (state, metrics)``, jitted over the mesh.

    ``frozen`` (teacher variables) is replicated and never differentiated; the
    state buffers are donated.
    """

    def per_device(state: TrainState, frozen, batch):
        batch_stats = jax.tree.map(lambda x: x[0], state.batch_stats)
        # Differentiate a per-device copy of the parameters (marked as varying over the
        # axis, so autodiff inserts no implicit psum), then average explicitly.
        local_params = jax.lax.pcast(state.params, AXIS, to="varying")
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (_, (parts, new_stats)), grads = grad_fn(local_params, batch_stats, frozen, batch)
        grads = jax.lax.pmean(grads, AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        parts = jax.lax.pmean(parts, AXIS)
        # Norms make a blow-up visible at the step that causes it (checked on the host).
        parts["grad_norm"] = optax.global_norm(grads)
        parts["param_norm"] = optax.global_norm(params)
        parts["learning_rate"] = schedule(state.step)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            batch_stats=jax.tree.map(lambda x: x[None], new_stats),
            opt_state=opt_state,
        )
        return new_state, parts

    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(STATE_SPECS, P(), P(AXIS)), out_specs=(STATE_SPECS, P())
    )
    return jax.jit(sharded, donate_argnums=0)


def firing_counts(lif_outputs: dict[str, Array], mask: Array) -> dict[str, dict[str, Array]]:
    """Per LIF layer ``(T, B, ...)`` spikes: spike total and neuron-steps over unmasked examples."""
    weights = mask.astype(jnp.float32)
    result = {}
    for name, spikes in lif_outputs.items():
        steps, _ = spikes.shape[:2]
        neurons = math.prod(spikes.shape[2:])
        per_example = jnp.sum(spikes.astype(jnp.float32), axis=tuple(range(2, spikes.ndim)))
        result[name] = {
            "spikes": jnp.sum(per_example.sum(axis=0) * weights),
            "neuron_steps": jnp.sum(weights) * neurons * steps,
        }
    return result


def cumulative_mean_logits(logits: Array) -> Array:
    """``(T, B, K)`` -> float32 ``(T, B, K)``: entry ``t`` is the mean of the logits over
    the first ``t + 1`` time steps."""
    logits = logits.astype(jnp.float32)
    steps = jnp.arange(1, logits.shape[0] + 1, dtype=jnp.float32)[:, None, None]
    return jnp.cumsum(logits, axis=0) / steps


def correct_per_time_steps(logits: Array, labels: Array, mask: Array) -> Array:
    """``(T,)`` correct predictions of the mean logits over the first t+1 time steps,
    over the examples where ``mask`` (``(B,)``) is set. ``logits`` is ``(T, B, K)``.

    The one definition of accuracy by number of time steps: :func:`make_eval_step` sums
    it over the mesh, :mod:`sastc_jax.analyze` over the test split.
    """
    hits = jnp.argmax(cumulative_mean_logits(logits), axis=-1) == labels
    return jnp.sum(hits.astype(jnp.float32) * mask.astype(jnp.float32), axis=1)


def make_eval_step(model: flax.linen.Module, mesh) -> Callable:
    """``eval_step(variables, batch) -> {'correct': (T,), 'count', 'loss_sum'}`` summed
    over the whole mesh; masked (padding) examples count for nothing. A spiking model
    adds ``'spikes'`` and ``'neuron_steps'`` over all its LIF layers (their ratio is the
    network's firing rate: :func:`firing_counts`, as :mod:`sastc_jax.analyze` uses).

    ``correct[t]`` counts hits of the mean logits over the first t+1 time steps.
    """

    def per_device(variables, batch):
        logits, captured = model.apply(
            variables,
            batch["image"],
            train=False,
            capture_intermediates=models.is_lif_call,
            mutable=["intermediates"],
        )
        if logits.ndim == 2:  # ANN: one "time step"
            logits = logits[None]
        mask = batch["mask"].astype(jnp.float32)
        final = cumulative_mean_logits(logits)[-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(final, batch["label"])
        sums = {
            "correct": correct_per_time_steps(logits, batch["label"], mask),
            "count": jnp.sum(mask),
            "loss_sum": jnp.sum(nll * mask),
        }
        firing = firing_counts(models.get_lif_outputs(captured.get("intermediates", {})), mask)
        if firing:  # a spiking model: the totals over all its LIF layers
            sums["spikes"] = sum(layer["spikes"] for layer in firing.values())
            sums["neuron_steps"] = sum(layer["neuron_steps"] for layer in firing.values())
        return jax.lax.psum(sums, AXIS)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P()))
