"""The method comparison: ``python -m sastc_jax.compare --config=configs/X.py --workdir=DIR``.

The table's rows are named variants: a method plus config overrides
(``config.compare.rows``; ``config.compare.variants[name] = {method, overrides}``, a row
named after a method with no variant is that method as configured). Phases, in order:

1. the teacher, trained once (``DIR/teacher``);
2. ``learning_rate_sweep`` (optional): one row (``ce``), one seed, several student learning
   rates; the one with the highest final *validation* accuracy is shared by every row
   (a variant that sets its own, the release row, keeps it);
3. ``beta_sweep`` (optional): one calibrated row, one seed, several beta at the chosen
   learning rate; the best on validation serves every calibrated row (except a variant
   that sets its own);
4. the table: every row for every seed of ``config.compare.seeds``, seed-major;
5. ``doubling`` (optional): some rows on one seed at ``factor`` x the epochs, to show that
   the table's runs reached their plateau (the change of final validation accuracy).

Every run has its own workdir ``DIR/runs/<name>`` and the ordinary training loop, so a
stopped run resumes from its checkpoints and a finished one (``summary.json``) is
skipped; a table run whose exact config already ran in a sweep (the chosen value, on the
sweep's seed) links to that run instead of training again. The choices, with every
value's validation accuracy, are in ``DIR/choices.json``. Nothing reads the test split to
choose. The same seed gives every row the same student initialisation and data order
(:func:`sastc_jax.train.distill_stage`), so per-seed differences pair. Then every student
is analysed (:mod:`sastc_jax.analyze`) and the command writes

- ``DIR/results.csv``: one row per run (row, method, seed, final and best-on-validation
  test accuracy, validation accuracy, test accuracy at 1..T time steps, seconds,
  images/s, firing rate, SOPs and energy ratio);
- ``DIR/results.md``: mean +- std per row, the teacher and the gap to it, the paired
  per-seed differences with 95% t-intervals (``config.compare.paired``), the choices,
  the doubling check and the analysis headline figures;
- ``DIR/comparison.png`` (accuracy per row, every seed, mean and std),
  ``DIR/validation_curves.png`` (validation accuracy per epoch, one line per row, first
  seed, doubling runs dashed) and ``DIR/attention_<row>.png`` (the first seed's
  attention heat map of every calibrated row).

Rerunning the same command after a stop (SIGTERM, exit 143) continues where it stopped;
``--phases`` runs a subset (e.g. ``--phases=sweeps`` first, to size the rest);
``--notrain`` writes the results of the finished runs.
``config.compare.teacher_max_steps_per_epoch`` replaces ``config.max_steps_per_epoch``
for the teacher (0 = whole epochs).
``config.compare.teacher_overrides`` changes fields of the teacher's run config only
(e.g. ``{'dataset': {'augment': True}}``).
"""

from sastc_jax.compare.phases import (
    analyse_run,
    diagnose_calibration,
    doubling_check,
    finish_run,
    read_analysis,
    run,
    run_sweeps,
    sweep,
    sweeps_complete,
)
from sastc_jax.compare.records import (
    checkpoint_digest,
    git_commit,
    run_record_paths,
    verify_teacher_checksum,
)
from sastc_jax.compare.report import (
    CSV_FIELDS,
    method_table,
    result_rows,
    results_markdown,
    write_csv,
    write_results,
)
from sastc_jax.compare.runs import (
    DIVERGED,
    PHASES,
    SUMMARY,
    Row,
    comparison_rows,
    comparison_settings,
    final_validation_accuracy,
    read_diverged,
    read_summary,
    run_config,
    run_name,
    student_config,
    teacher_config,
    train_run,
    validation_curve,
)
from sastc_jax.compare.statistics import paired_differences, t_quantile

__all__ = [
    "CSV_FIELDS",
    "DIVERGED",
    "PHASES",
    "SUMMARY",
    "Row",
    "analyse_run",
    "checkpoint_digest",
    "comparison_rows",
    "comparison_settings",
    "diagnose_calibration",
    "doubling_check",
    "final_validation_accuracy",
    "finish_run",
    "git_commit",
    "method_table",
    "paired_differences",
    "read_analysis",
    "read_diverged",
    "read_summary",
    "result_rows",
    "results_markdown",
    "run",
    "run_config",
    "run_name",
    "run_record_paths",
    "run_sweeps",
    "student_config",
    "sweep",
    "sweeps_complete",
    "t_quantile",
    "teacher_config",
    "train_run",
    "validation_curve",
    "verify_teacher_checksum",
    "write_csv",
    "write_results",
]
