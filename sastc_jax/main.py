"""Command line: ``python -m sastc_jax.main --config=configs/X.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.method=kd --config.stage=distill``.
``config.stage``: ``teacher`` trains the ANN teacher, ``distill`` trains the SNN
student against a frozen teacher checkpoint, ``all`` does both (skipping the
teacher when its checkpoint exists or is a PyTorch file to import), ``evaluate``
reports the test accuracy of ``config.evaluate`` (the teacher, or the student's
latest / best checkpoint) without training. Rerunning with the same workdir resumes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sastc_jax import (
    checkpoints,
    configuration,
    distributed,
    metrics,
    parallel,
    runlock,
    torch_import,
    train,
)

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the teacher.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

EXPECTED_ERRORS = (
    ValueError,
    FileNotFoundError,
    ImportError,
    checkpoints.CheckpointError,
    train.NonFiniteLossError,
    distributed.DistributedError,
    runlock.WorkdirLockedError,
)


def lock_workdir(workdir: Path) -> runlock.RunLock:
    """Process 0's lock on the workdir, taken before anything in it is touched; every
    process raises :class:`runlock.WorkdirLockedError` when another run holds it."""
    lock = runlock.RunLock(workdir, enabled=jax.process_index() == 0)
    refusal = None
    try:
        lock.acquire()
    except runlock.WorkdirLockedError as error:
        refusal = error
    if jax.process_count() > 1 and not checkpoints.all_processes_agree(refusal is None):
        lock.release()
        raise refusal or runlock.WorkdirLockedError(
            f"{workdir} is in use by another run (process 0 names it)."
        )
    if refusal is not None:
        raise refusal
    return lock


def run(config, workdir: Path) -> list[dict]:
    """Run the configured stages holding the workdir's lock; returns their summaries
    (process 0 prints them)."""
    mesh = parallel.make_mesh()
    configuration.validate(config, device_count=mesh.size)
    with contextlib.ExitStack() as cleanup:
        lock = lock_workdir(workdir)
        cleanup.callback(lock.release)
        workdir.mkdir(parents=True, exist_ok=True)
        logger = metrics.MetricsLogger(
            workdir,
            enabled=jax.process_index() == 0,
            tensorboard=config.tensorboard and config.stage != "evaluate",
        )
        cleanup.callback(logger.close)
        if lock.warning:
            logger.info(lock.warning)
        return run_stages(config, workdir, mesh, logger)


def run_stages(config, workdir: Path, mesh, logger: metrics.MetricsLogger) -> list[dict]:
    """The stages of :func:`run`, logged to ``logger``."""
    if config.stage == "evaluate":  # the workdir's config.json and summary.json stay as they are
        summary = train.evaluate_checkpoint(config, workdir, mesh, logger)
        if jax.process_index() == 0:
            (workdir / "evaluation.json").write_text(json.dumps(summary, indent=2))
        return [summary]
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    logger.info(
        f"{jax.process_count()} process(es), {mesh.size} device(s) "
        f"({jax.devices()[0].platform}); per-device (calibration) batch "
        f"{config.student.optimizer.batch_size // mesh.size}"
    )

    summaries = []
    needs_teacher = config.method != "ce"
    teacher_dir = train.teacher_checkpoint_dir(config, workdir)
    if config.stage == "teacher" or (config.stage == "all" and needs_teacher):
        if config.stage == "all" and torch_import.is_torch_checkpoint(teacher_dir):
            logger.info(f"[teacher] importing {teacher_dir}; skipping the stage")
        elif config.stage == "all" and checkpoints.teacher_exists(teacher_dir):
            logger.info(f"[teacher] checkpoint found in {teacher_dir}; skipping the stage")
        else:
            summary = train.train_teacher(config, workdir, mesh, logger)
            summaries.append(summary)
    if config.stage in ("distill", "all"):
        summaries.append(train.train_student(config, workdir, mesh, logger))
    if summaries:
        logger.info("\n" + metrics.summary_table(summaries))
        if jax.process_index() == 0:
            (workdir / "summary.json").write_text(json.dumps(summaries, indent=2))
    return summaries


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        distributed.initialize_from_flags(FLAGS)
        run(FLAGS.config, Path(FLAGS.workdir))
    except train.Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(143)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
