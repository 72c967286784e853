"""The runs of a comparison: rows, their configs, one resumable training run each, and
what a finished (or diverged) run left in its directory."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import ml_collections

from sastc_jax import configuration, methods, metrics, train
from sastc_jax.compare import records

SUMMARY = "summary.json"
# A run whose loss went non-finite (or whose parameter norm blew up) leaves this record
# instead of a summary: the comparison reports it and goes on.
DIVERGED = "diverged.json"
# One line per invocation of a run's training (wall-clock and CPU seconds, and whether it
# finished), so that a run resumed after a stop reports the time of all its invocations.
INVOCATIONS = "invocations.jsonl"
PHASES = ("sweeps", "table", "doubling")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: ``method`` with ``overrides`` (a nested dict merged into the
    run config, e.g. ``{'loss': {'kd_target': 'per_step'}}``), trained for ``seeds``."""

    name: str
    method: str
    overrides: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = ()

    @property
    def calibrated(self) -> bool:
        """Whether the row's method has a calibration term (weighted by beta)."""
        return methods.get_method(self.method).calibrated


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
            overrides = plain_dict(variant.get("overrides"))
        else:
            method, overrides = name, {}
        if method not in methods.method_names():
            raise ValueError(
                f"config.compare.rows: row {name!r} has method {method!r}; a row is a method "
                f"of {methods.method_names()} or a variant of config.compare.variants "
                "({'method': ..., 'overrides': {...}})."
            )
        rows.append(Row(name, method, overrides))
    return rows


def _distinct_seeds(values, where: str) -> tuple[int, ...]:
    seeds = tuple(int(s) for s in values)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} = {list(seeds)} must be distinct and non-empty.")
    return seeds


def comparison_settings(config: ml_collections.ConfigDict) -> tuple[list[Row], list[int]]:
    """The rows of ``config.compare`` with their seeds, and every seed any row uses (in
    order: ``config.compare.seeds``, then the others), checked.

    A row trains ``config.compare.seeds`` unless ``config.compare.row_seeds[row]`` names
    its own (e.g. five seeds for the cheap rows, three for the costly ones).
    """
    default = _distinct_seeds(config.compare.seeds, "config.compare.seeds")
    row_seeds = plain_dict(config.compare.get("row_seeds"))
    rows = comparison_rows(config)
    unknown = sorted(set(row_seeds) - {row.name for row in rows})
    if unknown:
        raise ValueError(
            f"config.compare.row_seeds names {unknown}, which are not rows of "
            f"config.compare.rows = {[row.name for row in rows]}."
        )
    rows = [
        dataclasses.replace(
            row,
            seeds=_distinct_seeds(row_seeds[row.name], f"config.compare.row_seeds.{row.name}")
            if row.name in row_seeds
            else default,
        )
        for row in rows
    ]
    seeds = list(default) + sorted({s for row in rows for s in row.seeds} - set(default))
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
            if sweep == "beta_sweep" and not by_name[settings.row].calibrated:
                raise ValueError(
                    f"config.compare.beta_sweep.row = {settings.row!r} has no calibration "
                    f"term; sweep beta on a row of method {methods.calibrated_method_names()}."
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


def plain_dict(overrides) -> dict:
    """A nested dict of overrides from a ConfigDict, a dict or None (no overrides)."""
    if not overrides:
        return {}
    return overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)


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
    """The teacher's run config: ``config.compare.teacher_overrides`` (a nested dict of
    existing fields, e.g. ``{'dataset': {'augment': True}}`` for a teacher trained with
    augmentation and students without), then ``teacher_max_steps_per_epoch``."""
    copy = run_config(config, stage="teacher")
    overrides = plain_dict(config.compare.get("teacher_overrides"))
    apply_overrides(copy, overrides, "config.compare.teacher_overrides")
    copy.max_steps_per_epoch = config.compare.teacher_max_steps_per_epoch
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
    if "beta" in choices and row.calibrated:
        copy.loss.beta = float(choices["beta"])
    apply_overrides(copy, row.overrides, f"config.compare.variants.{row.name}.overrides")
    if epochs_factor != 1:
        optim = copy.student.optimizer
        optim.epochs = optim.epochs * epochs_factor
        optim.decay_epochs = tuple(epoch * epochs_factor for epoch in optim.decay_epochs)
        optim.warmup_epochs = optim.warmup_epochs * epochs_factor
    copy.teacher.checkpoint = str(workdir / "teacher" / "final")
    return copy


def train_teacher(
    config, workdir: Path, mesh, on_record: records.RecordHook | None = None
) -> dict[str, Any]:
    """Train the shared teacher once, or check the finished one against its checksum.

    ``DIR/teacher`` keeps its summary, config, metrics, final checkpoint and the
    checkpoint's SHA-256 (``checksum.json``); ``on_record`` receives those files.
    """
    teacher_dir = workdir / "teacher"
    summary_path = teacher_dir / SUMMARY
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        checksum = records.verify_teacher_checksum(teacher_dir)
        return {**summary, "sha256": checksum} if checksum else summary
    cfg = teacher_config(config, workdir)
    configuration.validate(cfg, device_count=mesh.size)
    logger = metrics.MetricsLogger(teacher_dir)
    started = time.process_time()
    summary = train.train_teacher(cfg, workdir, mesh, logger)
    summary["cpu_seconds"] = time.process_time() - started
    (teacher_dir / "config.json").write_text(_config_text(cfg))
    summary_path.write_text(json.dumps(summary, indent=2))
    if not (teacher_dir / "final").is_dir():
        return summary  # no final checkpoint: nothing to record or checksum
    checksum = records.write_teacher_checksum(teacher_dir)["sha256"]
    if on_record is not None:
        on_record(records.teacher_record_paths(teacher_dir), "compare: the teacher finished")
    return {**summary, "sha256": checksum}


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
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    outcome = "stopped"
    try:
        summary = train.train_student(cfg, run_dir, mesh, logger)
        summary["cpu_seconds"] = time.process_time() - cpu_start
        outcome = "finished"
    except train.NonFiniteLossError as error:
        outcome = "diverged"
        record = {"diverged": True, "error": str(error)}
        (run_dir / DIVERGED).write_text(json.dumps(record, indent=2))
        logger.info(f"[compare] {name} diverged, reported and skipped: {error}")
        return record
    finally:
        record_invocation(
            run_dir,
            time.perf_counter() - wall_start,
            time.process_time() - cpu_start,
            outcome,
        )
    summary.update(invocation_totals(run_dir))
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def record_invocation(run_dir: Path, wall_seconds: float, cpu_seconds: float, outcome: str):
    """Append one invocation's wall-clock and CPU seconds and its ``outcome``
    (finished, diverged or stopped) to ``run_dir``'s :data:`INVOCATIONS`."""
    entry = {"wall_seconds": wall_seconds, "cpu_seconds": cpu_seconds, "outcome": outcome}
    with open(run_dir / INVOCATIONS, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def invocation_totals(run_dir: Path) -> dict[str, Any]:
    """``{'invocations', 'total_seconds', 'total_cpu_seconds'}`` over every invocation in
    ``run_dir``'s :data:`INVOCATIONS` (set-up and evaluations included); ``{}`` without one."""
    path = run_dir / INVOCATIONS
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        "invocations": len(entries),
        "total_seconds": sum(entry["wall_seconds"] for entry in entries),
        "total_cpu_seconds": sum(entry["cpu_seconds"] for entry in entries),
    }


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
