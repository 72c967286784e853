"""Training: ``python -m sastc_jax.main --config=configs/X.py --workdir=DIR`` (the command
line is :mod:`sastc_jax.cli.main`; this module holds what it runs).

Any config field can be overridden, e.g. ``--config.method=kd --config.stage=distill``.
``config.stage``: ``teacher`` trains the ANN teacher, ``distill`` trains the SNN
student against a frozen teacher checkpoint, ``all`` does both (skipping the
teacher when its checkpoint exists or is a PyTorch file to import), ``evaluate``
reports the test accuracy of ``config.evaluate`` (the teacher, or the student's
latest / best checkpoint) without training. Rerunning with the same workdir resumes:
a config that changes what its checkpoints mean is refused before anything in the workdir
is written (:mod:`sastc_jax.checkpoints.resumption`); other changes are recorded in
``WORKDIR/history.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax

from sastc_jax import (
    checkpoints,
    configuration,
    methods,
    metrics,
    parallel,
    runlock,
    train,
)
from sastc_jax.checkpoints import resumption


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
        run_record = None
        if config.stage != "evaluate":  # reads only: a refused resume writes nothing
            teacher_dir = train.teacher_checkpoint_dir(config, workdir)
            run_record = resumption.check_resume(config, workdir, teacher_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        logger = metrics.MetricsLogger(
            workdir,
            enabled=jax.process_index() == 0,
            tensorboard=config.tensorboard and config.stage != "evaluate",
        )
        cleanup.callback(logger.close)
        if lock.warning:
            logger.info(lock.warning)
        if run_record is not None and jax.process_index() == 0:
            if run_record["changed"]:
                changes = ", ".join(
                    f"{field} {old!r} -> {new!r}"
                    for field, (old, new) in run_record["changed"].items()
                )
                logger.info(f"resuming with changed settings: {changes}")
            resumption.record_run(workdir, run_record)
        return run_stages(config, workdir, mesh, logger)


def run_stages(config, workdir: Path, mesh, logger: metrics.MetricsLogger) -> list[dict]:
    """The stages of :func:`run`, logged to ``logger``; the workdir's ``summary.json``
    keeps the summary of every stage that ever finished (:func:`metrics.merge_summaries`)."""
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
    needs_teacher = methods.get_method(config.method).needs_teacher
    teacher_dir = train.teacher_checkpoint_dir(config, workdir)
    if config.stage == "teacher" or (config.stage == "all" and needs_teacher):
        if config.stage == "all" and checkpoints.is_torch_checkpoint(teacher_dir):
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
            metrics.write_summaries(workdir, summaries)
    return summaries
