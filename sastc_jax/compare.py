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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sastc_jax import analyze, configuration, losses, metrics, parallel, train

SUMMARY = "summary.json"
# A run whose loss went non-finite (or whose parameter norm blew up) leaves this record
# instead of a summary: the comparison reports it and goes on.
DIVERGED = "diverged.json"
PHASES = ("sweeps", "table", "doubling")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: ``method`` with ``overrides`` (a nested dict merged into the
    run config, e.g. ``{'loss': {'kd_target': 'per_step'}}``)."""

    name: str
    method: str
    overrides: dict = dataclasses.field(default_factory=dict)


def run_name(row: str, seed: int, tag: str = "") -> str:
    """``<row>[_<tag>]_seed<k>``: a table run has no tag (``sastc_seed0``)."""
    return f"{row}_{tag}_seed{seed}" if tag else f"{row}_seed{seed}"


def comparison_rows(config: ml_collections.ConfigDict) -> list[Row]:
    """The rows of ``config.compare``, checked (``rows``; ``methods`` is the older name)."""
    if "compare" not in config:
        raise ValueError(
            "The config has no 'compare' section (rows, seeds); use a *_compare.py config."
        )
    compare = config.compare
    names = list(compare.rows if "rows" in compare else compare.get("methods", ()))
    variants = compare.get("variants") or {}
    if not names or len(set(names)) != len(names):
        raise ValueError(f"config.compare.rows = {names} must be distinct and non-empty.")
    rows = []
    for name in names:
        if name in variants:
            variant = variants[name]
            method = variant.get("method")
            overrides = variant.get("overrides") or {}
            overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
        else:
            method, overrides = name, {}
        if method not in losses.METHODS:
            raise ValueError(
                f"config.compare.rows: row {name!r} has method {method!r}; a row is a method "
                f"of {losses.METHODS} or a variant of config.compare.variants "
                "({'method': ..., 'overrides': {...}})."
            )
        rows.append(Row(name, method, overrides))
    return rows


def comparison_settings(config: ml_collections.ConfigDict) -> tuple[list[Row], list[int]]:
    """The rows and seeds of ``config.compare``, checked."""
    rows = comparison_rows(config)
    seeds = [int(s) for s in config.compare.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.compare.seeds = {seeds} must be distinct and non-empty.")
    by_name = {row.name: row for row in rows}
    for first, second in config.compare.get("paired", ()):
        if first not in by_name or second not in by_name:
            raise ValueError(
                f"config.compare.paired has ({first!r}, {second!r}); both must be rows of "
                f"config.compare.rows = {list(by_name)}."
            )
    for sweep in ("learning_rate_sweep", "beta_sweep"):
        settings = config.compare.get(sweep)
        if settings and settings.get("candidates"):
            if settings.row not in by_name:
                raise ValueError(
                    f"config.compare.{sweep}.row = {settings.row!r} is not a row of "
                    f"config.compare.rows = {list(by_name)}."
                )
            if sweep == "beta_sweep" and by_name[settings.row].method not in (
                losses.CALIBRATED_METHODS
            ):
                raise ValueError(
                    f"config.compare.beta_sweep.row = {settings.row!r} has no calibration "
                    f"term; sweep beta on a row of method {losses.CALIBRATED_METHODS}."
                )
            if not config.dataset.validation_fraction:
                raise ValueError(
                    f"config.compare.{sweep} chooses on the validation split, but "
                    "config.dataset.validation_fraction = 0; hold out a validation split."
                )
    doubling = config.compare.get("doubling")
    if doubling and doubling.get("rows"):
        missing = [name for name in doubling.rows if name not in by_name]
        if missing or not config.dataset.validation_fraction:
            raise ValueError(
                f"config.compare.doubling.rows = {list(doubling.rows)} must be rows of "
                f"config.compare.rows and compares validation accuracy, so it needs "
                f"config.dataset.validation_fraction > 0 (it is "
                f"{config.dataset.validation_fraction})."
            )
    return rows, seeds


def run_config(config, **changes) -> ml_collections.ConfigDict:
    """A copy of ``config`` with top-level fields changed (the 'compare' section dropped)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    with copy.unlocked():
        if "compare" in copy:
            del copy["compare"]
        for name, value in changes.items():
            copy[name] = value
    return copy


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    """Merge a nested dict of overrides into ``config``; an unknown field is an error."""
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(
                f"{where}: config.{key} is not a field of the run config; overrides may only "
                "change existing fields."
            )
        if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
            apply_overrides(config[key], value, where)
        else:
            config[key] = value


def teacher_config(config, workdir: Path) -> ml_collections.ConfigDict:
    copy = run_config(
        config, stage="teacher", max_steps_per_epoch=config.compare.teacher_max_steps_per_epoch
    )
    copy.teacher.checkpoint = str(workdir / "teacher" / "final")
    return copy


def student_config(
    config,
    workdir: Path,
    row: Row | str,
    seed: int,
    choices: dict[str, float] | None = None,
    epochs_factor: int = 1,
) -> ml_collections.ConfigDict:
    """The run config of ``row`` at ``seed``: the chosen learning rate (every row) and beta
    (calibrated rows), then the row's overrides (which win), epochs x ``epochs_factor``."""
    row = row if isinstance(row, Row) else Row(row, row)
    choices = choices or {}
    copy = run_config(config, stage="distill", method=row.method, seed=seed)
    if "learning_rate" in choices:
        copy.student.optimizer.learning_rate = float(choices["learning_rate"])
    if "beta" in choices and row.method in losses.CALIBRATED_METHODS:
        copy.loss.beta = float(choices["beta"])
    apply_overrides(copy, row.overrides, f"config.compare.variants.{row.name}.overrides")
    if epochs_factor != 1:
        optim = copy.student.optimizer
        optim.epochs = optim.epochs * epochs_factor
        optim.decay_epochs = tuple(epoch * epochs_factor for epoch in optim.decay_epochs)
        optim.warmup_epochs = optim.warmup_epochs * epochs_factor
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


def _config_text(cfg: ml_collections.ConfigDict) -> str:
    return cfg.to_json_best_effort(indent=2)


def finished_twin(workdir: Path, name: str, text: str) -> Path | None:
    """A finished run of ``DIR/runs`` (not ``name``) whose config is exactly ``text``."""
    for candidate in sorted((workdir / "runs").glob("*/config.json")):
        run_dir = candidate.parent
        if run_dir.name == name or run_dir.is_symlink() or not (run_dir / SUMMARY).exists():
            continue
        if candidate.read_text() == text:
            return run_dir
    return None


def train_run(cfg, workdir: Path, mesh, name: str) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run ``DIR/runs/<name>`` of ``cfg``.

    A finished run with exactly this config (a sweep's chosen value) is linked, not rerun.
    """
    run_dir = workdir / "runs" / name
    summary_path = run_dir / SUMMARY
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    if (run_dir / DIVERGED).exists():
        return json.loads((run_dir / DIVERGED).read_text())
    configuration.validate(cfg, device_count=mesh.size)
    text = _config_text(cfg)
    if not run_dir.exists():
        twin = finished_twin(workdir, name, text)
        if twin is not None:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(twin.name, run_dir, target_is_directory=True)
            return json.loads(summary_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(text)
    logger = metrics.MetricsLogger(run_dir)
    logger.info(f"[compare] {name} in {run_dir}")
    try:
        summary = train.train_student(cfg, run_dir, mesh, logger)
    except train.NonFiniteLossError as error:
        record = {"diverged": True, "error": str(error)}
        (run_dir / DIVERGED).write_text(json.dumps(record, indent=2))
        logger.info(f"[compare] {name} diverged, reported and skipped: {error}")
        return record
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def read_diverged(directory: Path) -> dict[str, Any] | None:
    """The divergence record of a run (:data:`DIVERGED`), ``None`` when it did not diverge."""
    path = directory / DIVERGED
    return json.loads(path.read_text()) if path.exists() else None


def read_summary(directory: Path) -> dict[str, Any] | None:
    path = directory / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``[(epoch, validation accuracy)]`` of a run, from its ``metrics.jsonl`` (the last
    record of an epoch wins: a resumed run may have evaluated it twice)."""
    curve = {}
    for record in metrics.read_metrics(run_dir):
        if record.get("split") == "validation":
            curve[int(record["epoch"])] = float(record["accuracy"])
    return sorted(curve.items())


def final_validation_accuracy(run_dir: Path) -> float:
    """The validation accuracy at the end of a finished run (what the choices read)."""
    curve = validation_curve(run_dir)
    if not curve:
        raise ValueError(
            f"{run_dir} logged no validation accuracy; choices need "
            "config.dataset.validation_fraction > 0."
        )
    return curve[-1][1]


# --------------------------------------------------------------------------- phases


def sweep(
    config, workdir: Path, mesh, rows: list[Row], kind: str, choices: dict, *, train_runs: bool
) -> dict[str, Any] | None:
    """One validation sweep (``kind`` = 'learning_rate' or 'beta'): its runs, each value's
    final validation accuracy and the value chosen (the highest; the first on a tie).

    Returns ``None`` when the sweep is not configured or (``train_runs=False``) unfinished.
    """
    settings = config.compare.get(f"{kind}_sweep")
    if not settings or not settings.get("candidates"):
        return None
    row = next(r for r in rows if r.name == settings.row)
    seed = int(settings.get("seed", 0))
    tag = "lr" if kind == "learning_rate" else "beta"
    accuracies, diverged = {}, []
    for value in settings["candidates"]:
        name = run_name(row.name, seed, f"{tag}{value:g}")
        run_dir = workdir / "runs" / name
        if train_runs:
            cfg = student_config(config, workdir, row, seed, {**choices, kind: value})
            train_run(cfg, workdir, mesh, name)
        if read_diverged(run_dir) is not None:
            diverged.append(f"{value:g}")
            continue
        if read_summary(run_dir) is None:
            return None
        accuracies[float(value)] = final_validation_accuracy(run_dir)
    if not accuracies:
        raise ValueError(
            f"Every {kind} candidate of config.compare.{kind}_sweep diverged "
            f"({', '.join(diverged)}); see the runs in {workdir / 'runs'}."
        )
    chosen = max(accuracies, key=lambda value: (accuracies[value], -list(accuracies).index(value)))
    return {
        "row": row.name,
        "seed": seed,
        "validation_accuracy": {f"{value:g}": acc for value, acc in accuracies.items()},
        "diverged": diverged,
        "chosen": chosen,
    }


def run_sweeps(config, workdir: Path, mesh, rows, *, train_runs: bool) -> dict[str, Any]:
    """The learning-rate sweep, then the beta sweep at the chosen learning rate; writes and
    returns ``DIR/choices.json`` (``{'learning_rate': ..., 'beta': ..., 'sweeps': ...}``)."""
    path = workdir / "choices.json"
    choices: dict[str, Any] = {}
    sweeps = {}
    for kind in ("learning_rate", "beta"):
        result = sweep(config, workdir, mesh, rows, kind, choices, train_runs=train_runs)
        if result is None:
            if config.compare.get(f"{kind}_sweep", {}).get("candidates"):
                break  # an unfinished sweep: nothing after it is chosen
            continue
        sweeps[kind] = result
        choices[kind] = result["chosen"]
    record = {**choices, "sweeps": sweeps}
    path.write_text(json.dumps(record, indent=2))
    return record


def sweeps_complete(config, choices: dict) -> bool:
    return all(
        kind in choices
        for kind in ("learning_rate", "beta")
        if config.compare.get(f"{kind}_sweep", {}).get("candidates")
    )


def doubling_check(
    config, workdir: Path, mesh, rows, choices, *, train_runs: bool
) -> list[dict[str, Any]]:
    """Rows of ``config.compare.doubling`` on its seed at ``factor`` x the epochs: final
    validation accuracy against the table's run of the same seed."""
    settings = config.compare.get("doubling")
    if not settings or not settings.get("rows"):
        return []
    seed, factor = int(settings.get("seed", 0)), int(settings.get("factor", 2))
    tolerance = float(settings.get("tolerance", 0.003))
    by_name = {row.name: row for row in rows}
    results = []
    for name in settings.rows:
        longer = run_name(name, seed, f"x{factor}")
        if train_runs:
            cfg = student_config(config, workdir, by_name[name], seed, choices, factor)
            train_run(cfg, workdir, mesh, longer)
        base_dir, long_dir = workdir / "runs" / run_name(name, seed), workdir / "runs" / longer
        if read_diverged(base_dir) is not None or read_diverged(long_dir) is not None:
            results.append({"row": name, "seed": seed, "factor": factor, "diverged": True})
            continue
        if read_summary(base_dir) is None or read_summary(long_dir) is None:
            continue
        base, doubled = final_validation_accuracy(base_dir), final_validation_accuracy(long_dir)
        results.append(
            {
                "row": name,
                "seed": seed,
                "factor": factor,
                "validation_accuracy": base,
                "doubled_validation_accuracy": doubled,
                "change": doubled - base,
                "plateau": abs(doubled - base) < tolerance,
                "tolerance": tolerance,
            }
        )
    return results


# --------------------------------------------------------------------------- statistics


def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, abs(x), 4001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
    step = grid[1] - grid[0]
    area = (
        step
        / 3
        * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    )
    return 0.5 + math.copysign(area, x)


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t (bisection on :func:`_t_cdf`)."""
    if not 0.5 <= probability < 1.0 or df < 1:
        raise ValueError(
            f"t_quantile needs 0.5 <= probability < 1 and df >= 1; got {probability}, {df}."
        )
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def paired_differences(
    rows: list[dict[str, Any]], pairs: Sequence[Sequence[str]], key: str = "final_test_accuracy"
) -> list[dict[str, Any]]:
    """Per pair (a, b): the per-seed differences a - b over the seeds both have, their mean
    and the 95% t-interval ``mean +- t(0.975, n-1) * sd / sqrt(n)`` (none below 2 seeds)."""
    results = []
    for first, second in pairs:
        values = {
            name: {row["seed"]: row[key] for row in rows if row["row"] == name}
            for name in (first, second)
        }
        seeds = sorted(set(values[first]) & set(values[second]))
        if not seeds:
            continue
        diffs = np.array([values[first][s] - values[second][s] for s in seeds], np.float64)
        mean = float(diffs.mean())
        interval = None
        if len(diffs) > 1:
            half = t_quantile(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
            interval = (mean - half, mean + half)
        results.append(
            {
                "pair": f"{first} - {second}",
                "seeds": seeds,
                "differences": diffs.tolist(),
                "mean": mean,
                "interval": interval,
            }
        )
    return results


# --------------------------------------------------------------------------- results


CSV_FIELDS = (
    "row",
    "method",
    "seed",
    "final_test_accuracy",
    "best_validation_test_accuracy",
    "best_validation_accuracy",
    "final_validation_accuracy",
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
            "row": run["row"],
            "method": run["method"],
            "seed": run["seed"],
            "final_test_accuracy": summary["final_accuracy"],
            "best_validation_test_accuracy": summary["best_accuracy"],
            "best_validation_accuracy": summary.get("best_validation_accuracy", ""),
            "final_validation_accuracy": run.get("final_validation_accuracy", ""),
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
    fields = [*CSV_FIELDS[:5], *(f"test_accuracy_t{t}" for t in range(1, time_steps + 1))]
    fields += list(CSV_FIELDS[5:])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def method_table(rows: list[dict[str, Any]], names: Sequence[str], teacher_accuracy: float):
    """Per row: seeds, mean/std of final and selected test accuracy, gap, analysis."""
    table = []
    for name in names:
        own = [row for row in rows if row["row"] == name]
        if not own:
            continue
        entry = {"row": name, "method": own[0]["method"], "seeds": len(own)}
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
        "| row | method | seeds | test acc. final (%) | test acc. at best validation (%) "
        "| gap to teacher (pp) | firing rate | SOPs / image | energy vs teacher | s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in table:
        lines.append(
            f"| {entry['row']} | {entry['method']} | {entry['seeds']} "
            f"| {_pct(entry['final_test_accuracy'])} "
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


def paired_markdown(differences: list[dict[str, Any]]) -> str:
    if not differences:
        return ""
    lines = [
        "## Paired differences (final test accuracy, same seed)",
        "",
        "| pair | seeds | per-seed difference (pp) | mean (pp) | 95% t-interval (pp) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in differences:
        interval = entry["interval"]
        interval_text = (
            "n/a (one seed)"
            if interval is None
            else f"[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"
        )
        lines.append(
            f"| {entry['pair']} | {', '.join(map(str, entry['seeds']))} "
            f"| {', '.join(f'{100 * d:+.2f}' for d in entry['differences'])} "
            f"| {100 * entry['mean']:+.2f} | {interval_text} |"
        )
    lines += [
        "",
        "Interval: mean ± t(0.975, n-1) x sd / sqrt(n) over the n seeds; an interval that "
        "contains 0 does not separate the two rows.",
        "",
    ]
    return "\n".join(lines)


def choices_markdown(choices: dict[str, Any], doubling: list[dict[str, Any]]) -> str:
    lines = []
    for kind, result in choices.get("sweeps", {}).items():
        values = ", ".join(
            f"{value}: {100 * acc:.2f}%" for value, acc in result["validation_accuracy"].items()
        )
        lines.append(
            f"- {kind} sweep ({result['row']}, seed {result['seed']}), final validation "
            f"accuracy per value: {values}; chosen {result['chosen']:g}."
        )
        if result.get("diverged"):
            lines.append(
                f"- {kind} sweep: the value(s) {', '.join(result['diverged'])} diverged "
                "(non-finite loss or parameter norm blow-up) and were not chosen."
            )
    for entry in doubling:
        if entry.get("diverged"):
            lines.append(
                f"- doubling check, {entry['row']} seed {entry['seed']}: a run diverged, "
                "no comparison."
            )
            continue
        lines.append(
            f"- doubling check, {entry['row']} seed {entry['seed']}: validation "
            f"{100 * entry['validation_accuracy']:.2f}% -> "
            f"{100 * entry['doubled_validation_accuracy']:.2f}% at {entry['factor']}x the "
            f"epochs ({100 * entry['change']:+.2f} pp; plateau "
            f"{'yes' if entry['plateau'] else 'NO'}, |change| < "
            f"{100 * entry['tolerance']:.1f} pp)."
        )
    if not lines:
        return ""
    return "\n".join(["## Choices on validation and the plateau check", "", *lines, ""])


def plot_comparison(rows, names, teacher_accuracy: float, output: Path) -> Path:
    """Test accuracy per row: every seed (dots), the mean (bar) with the std (error bar),
    the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 2, 3.5))
    for position, name in enumerate(names):
        values = [100 * row["final_test_accuracy"] for row in rows if row["row"] == name]
        if not values:
            continue
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        axis.bar(position, np.mean(values), yerr=spread, capsize=4, color="tab:blue", alpha=0.4)
        axis.plot([position] * len(values), values, "o", color="tab:blue")
    axis.axhline(100 * teacher_accuracy, color="tab:red", linestyle="--", label="ANN teacher")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min(100 * row["final_test_accuracy"] for row in rows)
    axis.set_ylim(low - 2, max(100 * teacher_accuracy, low) + 1)
    axis.set(ylabel="test accuracy (%)", title="SNN student by row (mean ± std, seeds)")
    axis.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def plot_validation_curves(curves: dict[str, list[tuple[int, float]]], output: Path) -> Path:
    """Validation accuracy per epoch, one line per run name (``..._x2`` runs dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if not curve:
            continue
        epochs, accuracy = zip(*curve, strict=True)
        style = "--" if "_x" in name else "-"
        axis.plot(epochs, [100 * a for a in accuracy], style, marker=".", label=name)
    axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation curves")
    axis.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def describe_setup(config, training_seconds: float, choices: dict[str, Any]) -> str:
    student_steps = config.max_steps_per_epoch or "all"
    chosen = ", ".join(f"{k} = {choices[k]:g}" for k in ("learning_rate", "beta") if k in choices)
    return (
        f"Dataset {config.dataset.name} (validation fraction "
        f"{config.dataset.validation_fraction}), T = {config.time_steps}. Teacher "
        f"{config.teacher.model} {dict(config.teacher.model_kwargs)}, "
        f"{config.teacher.optimizer.epochs} epoch(s); student {config.student.model} "
        f"{dict(config.student.model_kwargs)}, {config.student.optimizer.epochs} epoch(s) of "
        f"{student_steps} steps of batch {config.student.optimizer.batch_size}; "
        f"learning rate {config.student.optimizer.learning_rate:g} and beta "
        f"{config.loss.beta:g} unless chosen on validation"
        + (f" (chosen: {chosen})" if chosen else "")
        + f" or set by a row. Training wall-clock, teacher, sweeps, table and doubling runs "
        f"added up: {training_seconds / 60:.1f} min (evaluations included, analyses not)."
    )


def diverged_markdown(diverged: list[dict[str, Any]]) -> str:
    if not diverged:
        return ""
    lines = ["## Runs that diverged (left out of the table)", ""]
    lines += [f"- {entry['row']}, seed {entry['seed']}: {entry['error']}" for entry in diverged]
    return "\n".join([*lines, ""])


def write_results(
    config, workdir: Path, runs, teacher: dict[str, Any], choices, doubling, diverged=()
):
    rows_config, seeds = comparison_settings(config)
    names = [row.name for row in rows_config]
    rows = result_rows(runs, config.time_steps)
    write_csv(rows, config.time_steps, workdir / "results.csv")
    table = method_table(rows, names, teacher["final_accuracy"])
    differences = paired_differences(rows, config.compare.get("paired", ()))
    # Training time of every run directory once (a table run linked to a sweep run is one).
    names_run = [run_name(r["row"], r["seed"]) for r in runs]
    for kind, result in choices.get("sweeps", {}).items():
        tag = "lr" if kind == "learning_rate" else "beta"
        names_run += [
            run_name(result["row"], result["seed"], f"{tag}{v}")
            for v in result["validation_accuracy"]
        ]
    names_run += [run_name(d["row"], d["seed"], f"x{d['factor']}") for d in doubling]
    directories = {(workdir / "runs" / name).resolve() for name in names_run}
    training_seconds = teacher["seconds"] + sum(
        summary["seconds"] for summary in map(read_summary, directories) if summary
    )
    markdown = results_markdown(table, teacher, describe_setup(config, training_seconds, choices))
    headline = analyze.headline_markdown(
        {run_name(r["row"], r["seed"]): r["analysis"] for r in runs if r.get("analysis")}
    )
    text = "\n".join(
        part
        for part in (
            markdown,
            paired_markdown(differences),
            choices_markdown(choices, doubling),
            diverged_markdown(list(diverged)),
        )
        if part
    )
    (workdir / "results.md").write_text(text + "\n" + headline)
    (workdir / "paired.json").write_text(json.dumps(differences, indent=2))
    plot_comparison(rows, names, teacher["final_accuracy"], workdir / "comparison.png")
    curves = {name: validation_curve(workdir / "runs" / run_name(name, seeds[0])) for name in names}
    for entry in doubling:
        name = run_name(entry["row"], entry["seed"], f"x{entry['factor']}")
        curves[name] = validation_curve(workdir / "runs" / name)
    if any(curves.values()):
        plot_validation_curves(curves, workdir / "validation_curves.png")
    for row in rows_config:
        heat_map = workdir / "runs" / run_name(row.name, seeds[0]) / "attention.png"
        if row.method in losses.CALIBRATED_METHODS and heat_map.exists():
            (workdir / f"attention_{row.name}.png").write_bytes(heat_map.read_bytes())
    return rows, table, differences


def run(
    config,
    workdir: Path,
    *,
    train_runs: bool = True,
    analyse: bool = True,
    phases: Sequence[str] = PHASES,
) -> list[dict[str, Any]]:
    """Teacher, sweeps, every (row, seed) run, the doubling check, analyses and results.

    ``train_runs=False`` trains nothing: the results cover the runs already finished.
    ``phases`` (a subset of :data:`PHASES`) says which phases may train.
    """
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown:
        raise ValueError(f"Unknown phases {unknown}; choose from {PHASES}.")
    rows_config, seeds = comparison_settings(config)
    mesh = parallel.make_mesh()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    if train_runs and "sweeps" not in phases and {"table", "doubling"} & set(phases):
        finished = run_sweeps(config, workdir, mesh, rows_config, train_runs=False)
        if not sweeps_complete(config, finished):
            raise ValueError(
                f"The table and doubling runs use the sweeps' choices, and a sweep of "
                f"config.compare has not finished in {workdir}: run the phase 'sweeps' first "
                "(--phases=sweeps, or all phases)."
            )
    if train_runs:
        teacher = train_teacher(config, workdir, mesh)
    else:
        teacher = read_summary(workdir / "teacher")
        if teacher is None:
            raise FileNotFoundError(f"No finished teacher in {workdir / 'teacher'}.")
    choices = run_sweeps(
        config, workdir, mesh, rows_config, train_runs=train_runs and "sweeps" in phases
    )
    chosen = {k: choices[k] for k in ("learning_rate", "beta") if k in choices}
    table_ready = sweeps_complete(config, choices)
    runs, diverged = [], []
    # Seed-major: a comparison stopped early has every row for the seeds it finished.
    for seed in seeds:
        for row in rows_config:
            run_dir = workdir / "runs" / run_name(row.name, seed)
            if train_runs and "table" in phases and table_ready:
                cfg = student_config(config, workdir, row, seed, chosen)
                summary = train_run(cfg, workdir, mesh, run_name(row.name, seed))
            else:
                summary = read_summary(run_dir) or read_diverged(run_dir)
                if summary is None:
                    continue
            if summary.get("diverged"):
                diverged.append({"row": row.name, "seed": seed, "error": summary["error"]})
                continue
            runs.append(
                {
                    "row": row.name,
                    "method": row.method,
                    "seed": seed,
                    "summary": summary,
                    "final_validation_accuracy": (
                        validation_curve(run_dir)[-1][1] if validation_curve(run_dir) else ""
                    ),
                }
            )
    doubling = doubling_check(
        config,
        workdir,
        mesh,
        rows_config,
        chosen,
        train_runs=train_runs and "doubling" in phases and table_ready,
    )
    if analyse:
        for entry in runs:
            entry["analysis"] = analyse_run(workdir, run_name(entry["row"], entry["seed"]), mesh)
    if runs:
        write_results(config, workdir, runs, teacher, choices, doubling, diverged)
    return runs


def analyse_run(workdir: Path, name: str, mesh) -> dict[str, Any]:
    """The analysis of one finished run (computed once, then read from ``analysis.json``)."""
    run_dir = workdir / "runs" / name
    path = run_dir / analyze.ANALYSIS
    if path.exists():
        return json.loads(path.read_text())
    return analyze.analyze_run(run_dir, mesh=mesh)


if __name__ == "__main__":
    from sastc_jax.cli import compare

    compare.run()
