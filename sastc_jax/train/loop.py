"""The loop of one training stage: resume, steps, logging, evaluation, checkpoints.

:func:`run_stage` trains a :class:`~sastc_jax.train.stages.Stage` to its end;
:func:`train_teacher`, :func:`train_student` and :func:`evaluate_checkpoint` are the
stages ``config.stage`` names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sastc_jax import (
    checkpoints,
    data,
    losses,
    methods,
    metrics,
    parallel,
    param_tree,
)
from sastc_jax.train import step as step_lib
from sastc_jax.train.guards import (
    calibration_ratio_warning,
    check_finite,
    check_param_norm_growth,
    global_norm,
)
from sastc_jax.train.preemption import Preempted, SigtermFlag
from sastc_jax.train.runs import load_run
from sastc_jax.train.stages import (
    Stage,
    build_teacher,
    distill_stage,
    load_configured_teacher,
    load_test_split,
    steps_per_epoch,
    teacher_checkpoint_dir,
    teacher_stage,
)

Array = jax.Array


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


def portable(state: step_lib.TrainState, mesh) -> step_lib.TrainState:
    """Replicated form saved to disk and evaluated: batch statistics averaged across
    devices, no device axis."""
    return state.replace(batch_stats=parallel.average_copies(state.batch_stats, mesh))


def synced(state: step_lib.TrainState, mesh) -> tuple[step_lib.TrainState, step_lib.TrainState]:
    """``(training state, portable state)`` with the batch statistics averaged once: the
    one to train on holds per-device copies of the mean, the other is :func:`portable`'s
    (what is saved and evaluated)."""
    saved = portable(state, mesh)
    stats = parallel.per_device_copies(saved.batch_stats, mesh)
    return saved.replace(batch_stats=stats), saved


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
        shown = (*methods.part_names(), "loss", "grad_norm", "param_norm")
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
        state = resume(stage, ckpts, mesh, logger)
        step = int(jax.device_get(state.step))
        calibrated = stage.name == "student" and methods.get_method(config.method).calibrated
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

        def save(saved: step_lib.TrainState, eval_metrics=None) -> None:
            # A step already under latest/ (periodic save, then the epoch's evaluation)
            # is kept as it is; the evaluated one may still become the best.
            ckpts.save(
                step,
                saved,
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
                    state, saved = synced(state, mesh)
                    save(saved)
                if stop:
                    log.end_epoch(ckpts.verified_step())
                    raise Preempted(
                        f"SIGTERM at step {step}: checkpoint saved in "
                        f"{ckpts.directory}; rerun the same command to resume."
                    )
            images += log.end_epoch(ckpts.verified_step())
            if (step // steps) % config.eval_every_epochs == 0 or step == total_steps:
                state, saved = synced(state, mesh)
                last_eval, checkpoint_metrics = evaluate_for_selection(
                    stage, eval_variables(saved), mesh, logger, step, step // steps
                )
                if (
                    best_metrics is None
                    or checkpoint_metrics["accuracy"] > best_metrics["accuracy"]
                ):
                    best_metrics = checkpoint_metrics
                save(saved, checkpoint_metrics)
        if last_eval is None:  # resumed after the last step: evaluate what was saved
            state, saved = synced(state, mesh)
            last_eval = evaluate(stage.eval_step, eval_variables(saved), stage.eval_data, mesh)
    summary = stage_summary(
        stage, step, last_eval, best_metrics, time.perf_counter() - start, images, splits
    )
    stage.state = state
    logger.write({"split": "summary", **summary})
    return summary


def resume(stage: Stage, ckpts: checkpoints.Checkpoints, mesh, logger) -> step_lib.TrainState:
    """The stage's state from its newest intact checkpoint (corrupt ones are reported and
    moved aside), or its initial state. The stage's step records after the step it
    resumes from (0 without a checkpoint) leave ``metrics.jsonl``: they are logged again."""
    resumed = ckpts.resume(portable(stage.state, mesh))
    logger.drop_after(stage.name, 0 if resumed is None else resumed.step)
    if resumed is None:
        return stage.state
    stats = parallel.per_device_copies(resumed.state.batch_stats, mesh)
    logger.info(f"[{stage.name}] resumed from step {resumed.step} in {resumed.path}")
    return resumed.state.replace(batch_stats=stats)


def stage_summary(
    stage: Stage,
    step: int,
    last_eval: dict[str, Any],
    best_metrics: dict | None,
    elapsed: float,
    images: int,
    splits,
) -> dict[str, Any]:
    """The ``summary`` record of a finished stage (call on every process: it may count
    the bad examples of ``splits`` over all of them)."""
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


def eval_variables(saved: step_lib.TrainState) -> dict:
    """Inference variables of the trained model (the student's, in the distill stage) of
    a :func:`portable` state."""
    return param_tree.inference_variables(saved.params, saved.batch_stats)


def train_teacher(config, workdir: Path, mesh, logger) -> dict[str, Any]:
    """Stage ``teacher``: train the ANN with CE and save it for distillation."""
    stage = teacher_stage(config, mesh)
    summary = run_stage(stage, config, workdir, mesh, logger)
    variables = eval_variables(portable(stage.state, mesh))
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
        variables, _ = load_configured_teacher(
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
        run = load_run(workdir, which, config=config)
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
