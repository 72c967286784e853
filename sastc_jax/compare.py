"""The method comparison: ``python -m sastc_jax.compare --config=configs/X.py --workdir=DIR``.

Trains the teacher once (``DIR/teacher``), then the student with every method of
``config.compare.methods`` for every seed of ``config.compare.seeds``, each run in its own
workdir ``DIR/runs/<method>_seed<k>`` with the ordinary training loop (so a stopped run
resumes from its checkpoints and a finished one, which has ``summary.json``, is skipped);
then analyses every student (:mod:`sastc_jax.analyze`) and writes

- ``DIR/results.csv``: one row per run (method, seed, final and best-on-validation test
  accuracy, validation accuracy, test accuracy at 1..T time steps, seconds, images/s and
  the analysis' firing rate, SOPs and energy ratio);
- ``DIR/results.md``: mean +- std per method, the teacher, the student-teacher gap and
  the analysis headline figures;
- ``DIR/comparison.png``: accuracy per method (every seed and the mean).

Rerunning the same command after a stop (SIGTERM, exit 143) continues where it stopped.
Runs go seed by seed (every method for seed 0, then seed 1, ...), so a comparison cut
short still compares every method; ``--notrain`` writes the results of the finished runs.
``config.compare.teacher_max_steps_per_epoch`` replaces ``config.max_steps_per_epoch``
for the teacher (0 = whole epochs), so the students can be given a shorter budget.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from sastc_jax import analyze, checkpointing, configuration, losses, metrics, parallel, train

config_flags.DEFINE_config_file(
    "config", None, "Comparison config file (configs/*_compare.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory of the teacher, the runs and the results.")
flags.DEFINE_bool(
    "train", True, "Train what is missing; --notrain tabulates the finished runs only."
)
FLAGS = flags.FLAGS

SUMMARY = "summary.json"


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def comparison_settings(config: ml_collections.ConfigDict) -> tuple[list[str], list[int]]:
    """The methods and seeds of ``config.compare``, checked."""
    if "compare" not in config:
        raise ValueError(
            "The config has no 'compare' section (methods, seeds); use a *_compare.py config."
        )
    methods, seeds = list(config.compare.methods), [int(s) for s in config.compare.seeds]
    unknown = [m for m in methods if m not in losses.METHODS]
    if not methods or unknown:
        raise ValueError(
            f"config.compare.methods = {methods} must be a non-empty subset of {losses.METHODS}."
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.compare.seeds = {seeds} must be distinct and non-empty.")
    return methods, seeds


def run_config(config, **changes) -> ml_collections.ConfigDict:
    """A copy of ``config`` with top-level fields changed (the 'compare' section dropped)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    with copy.unlocked():
        if "compare" in copy:
            del copy["compare"]
        for name, value in changes.items():
            copy[name] = value
    return copy


def teacher_config(config, workdir: Path) -> ml_collections.ConfigDict:
    copy = run_config(
        config, stage="teacher", max_steps_per_epoch=config.compare.teacher_max_steps_per_epoch
    )
    copy.teacher.checkpoint = str(workdir / "teacher" / "final")
    return copy


def student_config(config, workdir: Path, method: str, seed: int) -> ml_collections.ConfigDict:
    copy = run_config(config, stage="distill", method=method, seed=seed)
    copy.teacher.checkpoint = str(workdir / "teacher" / "final")
    return copy


def train_teacher(config, workdir: Path, mesh) -> dict[str, Any]:
    """Train the shared teacher once; its summary is kept in ``DIR/teacher/summary.json``."""
    summary_path = workdir / "teacher" / SUMMARY
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = teacher_config(config, workdir)
    configuration.validate(cfg, device_count=mesh.size)
    logger = metrics.MetricsLogger(workdir / "teacher")
    summary = train.train_teacher(cfg, workdir, mesh, logger)
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def train_run(config, workdir: Path, mesh, method: str, seed: int) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one student run; returns its summary."""
    run_dir = workdir / "runs" / run_name(method, seed)
    summary_path = run_dir / SUMMARY
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = student_config(config, workdir, method, seed)
    configuration.validate(cfg, device_count=mesh.size)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    logger = metrics.MetricsLogger(run_dir)
    logger.info(f"[compare] {run_name(method, seed)} in {run_dir}")
    summary = train.train_student(cfg, run_dir, mesh, logger)
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def analyse_run(workdir: Path, method: str, seed: int, mesh) -> dict[str, Any]:
    """The analysis of one finished run (computed once, then read from ``analysis.json``)."""
    run_dir = workdir / "runs" / run_name(method, seed)
    path = run_dir / analyze.ANALYSIS
    if path.exists():
        return json.loads(path.read_text())
    return analyze.analyze_run(run_dir, mesh=mesh)


# --------------------------------------------------------------------------- results


CSV_FIELDS = (
    "method",
    "seed",
    "final_test_accuracy",
    "best_validation_test_accuracy",
    "best_validation_accuracy",
    "seconds",
    "images_per_second",
    "firing_rate",
    "sops_per_image",
    "energy_ratio",
)


def result_rows(runs: list[dict[str, Any]], time_steps: int) -> list[dict[str, Any]]:
    """One CSV row per run from its training summary and analysis."""
    rows = []
    for run in runs:
        summary, analysis = run["summary"], run.get("analysis") or {}
        row = {
            "method": run["method"],
            "seed": run["seed"],
            "final_test_accuracy": summary["final_accuracy"],
            "best_validation_test_accuracy": summary["best_accuracy"],
            "best_validation_accuracy": summary.get("best_validation_accuracy", ""),
            "seconds": summary["seconds"],
            "images_per_second": summary["images_per_second"],
            "firing_rate": analysis.get("firing_rate", {}).get("network", ""),
            "sops_per_image": analysis.get("operations", {}).get("student_sops", ""),
            "energy_ratio": analysis.get("operations", {}).get("energy_ratio", ""),
        }
        for t, accuracy in enumerate(summary["accuracy_per_t"], start=1):
            row[f"test_accuracy_t{t}"] = accuracy
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], time_steps: int, path: Path) -> None:
    fields = [*CSV_FIELDS[:4], *(f"test_accuracy_t{t}" for t in range(1, time_steps + 1))]
    fields += list(CSV_FIELDS[4:])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def method_table(rows: list[dict[str, Any]], methods: Sequence[str], teacher_accuracy: float):
    """Per method: seeds, mean/std of final and selected test accuracy, gap, analysis."""
    table = []
    for method in methods:
        own = [row for row in rows if row["method"] == method]
        if not own:
            continue
        entry = {"method": method, "seeds": len(own)}
        for key in ("final_test_accuracy", "best_validation_test_accuracy"):
            entry[key] = mean_std([row[key] for row in own])
        entry["gap"] = teacher_accuracy - entry["final_test_accuracy"][0]
        for key in ("firing_rate", "sops_per_image", "energy_ratio", "seconds"):
            values = [row[key] for row in own if row[key] != ""]
            entry[key] = mean_std(values) if values else None
        table.append(entry)
    return table


def _pct(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"


def _first(pair: tuple[float, float] | None, digits: int = 3) -> str:
    return "n/a" if pair is None else f"{pair[0]:.{digits}g}"


def results_markdown(table, teacher: dict[str, Any], setup: str) -> str:
    lines = [
        "# Method comparison",
        "",
        setup,
        "",
        f"Teacher ({teacher['model']}): test accuracy {100 * teacher['final_accuracy']:.2f}%.",
        "",
        "| method | seeds | test acc. final (%) | test acc. at best validation (%) "
        "| gap to teacher (pp) | firing rate | SOPs / image | energy vs teacher | s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in table:
        lines.append(
            f"| {entry['method']} | {entry['seeds']} | {_pct(entry['final_test_accuracy'])} "
            f"| {_pct(entry['best_validation_test_accuracy'])} | {100 * entry['gap']:.2f} "
            f"| {_first(entry['firing_rate'])} | {_first(entry['sops_per_image'])} "
            f"| {_first(entry['energy_ratio'])} | {_first(entry['seconds'], 4)} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds. Gap = teacher minus the mean final "
        "student accuracy. Firing rate: spikes per neuron per time step over the test split "
        "(network average). Energy vs teacher: the student's estimate (first layer MACs x "
        "4.6 pJ + SOPs x 0.9 pJ) over the teacher's (MACs x 4.6 pJ). s / run: training "
        "wall-clock of one run.",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(rows, methods, teacher_accuracy: float, output: Path) -> Path:
    """Test accuracy per method: every seed (dots) and the mean (bar), teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.4 * len(methods) + 2, 3.5))
    for position, method in enumerate(methods):
        values = [100 * row["final_test_accuracy"] for row in rows if row["method"] == method]
        if not values:
            continue
        axis.bar(position, np.mean(values), color="tab:blue", alpha=0.4)
        axis.plot([position] * len(values), values, "o", color="tab:blue")
    axis.axhline(100 * teacher_accuracy, color="tab:red", linestyle="--", label="ANN teacher")
    axis.set_xticks(range(len(methods)), methods)
    low = min(100 * row["final_test_accuracy"] for row in rows)
    axis.set_ylim(low - 2, max(100 * teacher_accuracy, low) + 1)
    axis.set(ylabel="test accuracy (%)", title="SNN student by distillation method")
    axis.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def describe_setup(config, training_seconds: float) -> str:
    student_steps = config.max_steps_per_epoch or "all"
    return (
        f"Dataset {config.dataset.name} (validation fraction "
        f"{config.dataset.validation_fraction}), T = {config.time_steps}. Teacher "
        f"{config.teacher.model} {dict(config.teacher.model_kwargs)}, "
        f"{config.teacher.optimizer.epochs} epoch(s); student {config.student.model} "
        f"{dict(config.student.model_kwargs)}, {config.student.optimizer.epochs} epoch(s) of "
        f"{student_steps} steps of batch {config.student.optimizer.batch_size}; beta = "
        f"{config.loss.beta}. Training wall-clock, teacher and every run added up: "
        f"{training_seconds / 60:.1f} min (evaluations included, analyses not)."
    )


def write_results(config, workdir: Path, runs, teacher: dict[str, Any]):
    methods, _ = comparison_settings(config)
    rows = result_rows(runs, config.time_steps)
    write_csv(rows, config.time_steps, workdir / "results.csv")
    table = method_table(rows, methods, teacher["final_accuracy"])
    training_seconds = teacher["seconds"] + sum(run["summary"]["seconds"] for run in runs)
    markdown = results_markdown(table, teacher, describe_setup(config, training_seconds))
    headline = analyze.headline_markdown(
        {run_name(r["method"], r["seed"]): r["analysis"] for r in runs if r.get("analysis")}
    )
    (workdir / "results.md").write_text(markdown + "\n" + headline)
    plot_comparison(rows, methods, teacher["final_accuracy"], workdir / "comparison.png")
    return rows, table


def read_summary(directory: Path) -> dict[str, Any] | None:
    path = directory / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def run(
    config, workdir: Path, *, train_runs: bool = True, analyse: bool = True
) -> list[dict[str, Any]]:
    """Teacher, every (method, seed) run, the analyses and the result files.

    ``train_runs=False`` trains nothing: the results cover the runs already finished.
    """
    methods, seeds = comparison_settings(config)
    mesh = parallel.make_mesh()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    if train_runs:
        teacher = train_teacher(config, workdir, mesh)
    else:
        teacher = read_summary(workdir / "teacher")
        if teacher is None:
            raise FileNotFoundError(f"No finished teacher in {workdir / 'teacher'}.")
    runs = []
    # Seed-major: a comparison stopped early has every method for the seeds it finished.
    for seed in seeds:
        for method in methods:
            if train_runs:
                summary = train_run(config, workdir, mesh, method, seed)
            else:
                summary = read_summary(workdir / "runs" / run_name(method, seed))
                if summary is None:
                    continue
            runs.append({"method": method, "seed": seed, "summary": summary})
    if analyse:
        for entry in runs:
            entry["analysis"] = analyse_run(workdir, entry["method"], entry["seed"], mesh)
    write_results(config, workdir, runs, teacher)
    return runs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if jax.process_count() > 1:
        raise app.UsageError("The comparison runs in one process.")
    workdir = Path(FLAGS.workdir)
    # Every seed of a method compiles the same programs: compile them once.
    jax.config.update("jax_compilation_cache_dir", str(workdir / "compilation_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        run(FLAGS.config, workdir, train_runs=FLAGS.train)
    except train.Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(143)
    except (
        ValueError,
        FileNotFoundError,
        checkpointing.CheckpointError,
        train.NonFiniteLossError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
