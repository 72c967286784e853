"""The phases of a comparison in order: teacher, sweeps, table, doubling; then the
analysis of every student and the results (:func:`run`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sastc_jax import analyze, parallel
from sastc_jax.compare.report import write_results
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
