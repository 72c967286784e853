"""The phases of a comparison in order: teacher, sweeps, table, doubling; then the
analysis of every student and the results (:func:`run`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sastc_jax import analyze, diagnose, methods, parallel
from sastc_jax.compare import records, report
from sastc_jax.compare.runs import (
    PHASES,
    Row,
    comparison_settings,
    final_validation_accuracy,
    read_diverged,
    read_summary,
    run_name,
    student_config,
    train_run,
    train_teacher,
    validation_curve,
)


def sweep(
    config,
    workdir: Path,
    mesh,
    rows: list[Row],
    kind: str,
    choices: dict,
    *,
    train_runs: bool,
    finish: Callable[[str], Any] | None = None,
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
            if finish is not None:
                finish(name)
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


def sweep_progress(config, workdir: Path, rows) -> dict[str, dict[str, float | None]]:
    """Each configured sweep's final validation accuracy per value so far, ``None`` for a
    value whose run has not finished (or diverged), without training anything."""
    progress = {}
    for kind, tag in (("learning_rate", "lr"), ("beta", "beta")):
        settings = config.compare.get(f"{kind}_sweep")
        if not settings or not settings.get("candidates"):
            continue
        row = next(r for r in rows if r.name == settings.row)
        seed = int(settings.get("seed", 0))
        values = {}
        for value in settings["candidates"]:
            run_dir = workdir / "runs" / run_name(row.name, seed, f"{tag}{value:g}")
            finished = read_summary(run_dir) is not None
            values[f"{value:g}"] = final_validation_accuracy(run_dir) if finished else None
        progress[kind] = values
    return progress


def run_sweeps(
    config,
    workdir: Path,
    mesh,
    rows,
    *,
    train_runs: bool,
    finish: Callable[[str], Any] | None = None,
    on_record: records.RecordHook | None = None,
) -> dict[str, Any]:
    """The learning-rate sweep, then the beta sweep at the chosen learning rate; writes and
    returns ``DIR/choices.json`` (``{'learning_rate': ..., 'beta': ..., 'sweeps': ...}``)."""
    path = workdir / "choices.json"
    choices: dict[str, Any] = {}
    sweeps = {}
    for kind in ("learning_rate", "beta"):
        result = sweep(
            config, workdir, mesh, rows, kind, choices, train_runs=train_runs, finish=finish
        )
        if result is None:
            if config.compare.get(f"{kind}_sweep", {}).get("candidates"):
                break  # an unfinished sweep: nothing after it is chosen
            continue
        sweeps[kind] = result
        choices[kind] = result["chosen"]
    record = {**choices, "sweeps": sweeps}
    text = json.dumps(record, indent=2)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        if on_record is not None and train_runs and sweeps:
            on_record([path], "compare: the validation choices")
    return record


def sweeps_complete(config, choices: dict) -> bool:
    return all(
        kind in choices
        for kind in ("learning_rate", "beta")
        if config.compare.get(f"{kind}_sweep", {}).get("candidates")
    )


def doubling_check(
    config,
    workdir: Path,
    mesh,
    rows,
    choices,
    *,
    train_runs: bool,
    finish: Callable[[str], Any] | None = None,
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
            if finish is not None:
                finish(longer)
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


def run(
    config,
    workdir: Path,
    *,
    train_runs: bool = True,
    analyse: bool = True,
    phases: Sequence[str] = PHASES,
    on_record: records.RecordHook | None = None,
) -> list[dict[str, Any]]:
    """Teacher, sweeps, every (row, seed) run, the doubling check, analyses and results.

    ``train_runs=False`` trains nothing: the results cover the runs already finished.
    ``phases`` (a subset of :data:`PHASES`) says which phases may train. Each run is
    analysed (and diagnosed, when calibrated) as soon as it finishes, while its checkpoint
    is there; ``on_record(paths, message)`` then receives its record files (and the
    teacher's, the choices', the results'), e.g. :func:`records.git_commit`.
    """
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown:
        raise ValueError(f"Unknown phases {unknown}; choose from {PHASES}.")
    rows_config, seeds = comparison_settings(config)
    mesh = parallel.make_mesh()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    def finish(name: str) -> None:
        finish_run(workdir, name, mesh, analyse=analyse, on_record=on_record)

    if train_runs and "sweeps" not in phases and {"table", "doubling"} & set(phases):
        finished = run_sweeps(config, workdir, mesh, rows_config, train_runs=False)
        if not sweeps_complete(config, finished):
            raise ValueError(
                f"The table and doubling runs use the sweeps' choices, and a sweep of "
                f"config.compare has not finished in {workdir}: run the phase 'sweeps' first "
                "(--phases=sweeps, or all phases)."
            )
    if train_runs:
        teacher = train_teacher(config, workdir, mesh, on_record)
    else:
        teacher = read_summary(workdir / "teacher")
        if teacher is None:
            raise FileNotFoundError(f"No finished teacher in {workdir / 'teacher'}.")
        teacher = {**teacher, "sha256": records.verify_teacher_checksum(workdir / "teacher")}
    sweeping = train_runs and "sweeps" in phases
    choices = run_sweeps(
        config,
        workdir,
        mesh,
        rows_config,
        train_runs=sweeping,
        finish=finish,
        on_record=on_record,
    )
    chosen = {k: choices[k] for k in ("learning_rate", "beta") if k in choices}
    table_ready = sweeps_complete(config, choices)
    runs, diverged, missing = [], [], []
    # Seed-major: a comparison stopped early has every row for the seeds it finished.
    for seed in seeds:
        for row in rows_config:
            if seed not in row.seeds:
                continue
            name = run_name(row.name, seed)
            run_dir = workdir / "runs" / name
            if train_runs and "table" in phases and table_ready:
                cfg = student_config(config, workdir, row, seed, chosen)
                summary = train_run(cfg, workdir, mesh, name)
                finish(name)
            else:
                summary = read_summary(run_dir) or read_diverged(run_dir)
                if summary is None:
                    missing.append(name)
                    continue
            if summary.get("diverged"):
                diverged.append({"row": row.name, "seed": seed, "error": summary["error"]})
                continue
            curve = validation_curve(run_dir)
            runs.append(
                {
                    "row": row.name,
                    "method": row.method,
                    "seed": seed,
                    "summary": summary,
                    "final_validation_accuracy": curve[-1][1] if curve else "",
                    "analysis": read_analysis(run_dir),
                }
            )
    doubling = doubling_check(
        config,
        workdir,
        mesh,
        rows_config,
        chosen,
        train_runs=train_runs and "doubling" in phases and table_ready,
        finish=finish,
    )
    if runs:
        report.write_results(config, workdir, runs, teacher, choices, doubling, diverged, missing)
        if on_record is not None and train_runs:
            on_record(records.comparison_record_paths(workdir), "compare: the results so far")
    elif not train_runs:
        progress = sweep_progress(config, workdir, rows_config)
        (workdir / "results.md").write_text(report.pending_markdown(teacher, progress, missing))
    return runs


def finish_run(
    workdir: Path,
    name: str,
    mesh,
    *,
    analyse: bool = True,
    on_record: records.RecordHook | None = None,
) -> None:
    """After ``DIR/runs/<name>`` finished: its analysis, its diagnosis (calibrated methods),
    then ``on_record`` with its record files. A diverged run is only recorded."""
    run_dir = workdir / "runs" / name
    summary = read_summary(run_dir)
    if summary is not None and analyse:
        analyse_run(workdir, name, mesh)
        if methods.get_method(summary["method"]).calibrated:
            diagnose_calibration(run_dir, mesh)
    if on_record is not None and (summary is not None or read_diverged(run_dir) is not None):
        on_record(records.run_record_paths(run_dir), f"compare: {name} finished")


def read_analysis(run_dir: Path) -> dict[str, Any] | None:
    """The analysis a finished run left (``analysis.json``), ``None`` when it has none."""
    path = run_dir / analyze.ANALYSIS
    return json.loads(path.read_text()) if path.exists() else None


def analyse_run(workdir: Path, name: str, mesh) -> dict[str, Any]:
    """The analysis of one finished run (computed once, then read from ``analysis.json``)."""
    run_dir = workdir / "runs" / name
    return read_analysis(run_dir) or analyze.analyze_run(run_dir, mesh=mesh)


def diagnose_calibration(run_dir: Path, mesh) -> dict[str, Any]:
    """The diagnosis of one finished calibrated run (computed once, then read)."""
    path = run_dir / diagnose.DIAGNOSIS
    if path.exists():
        return json.loads(path.read_text())
    return diagnose.diagnose_run(run_dir, mesh=mesh)
