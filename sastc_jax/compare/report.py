"""The results of a comparison: results.csv, results.md (table, paired differences,
choices, doubling check), comparison.png and validation_curves.png."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sastc_jax import analyze
from sastc_jax.compare.runs import comparison_settings, read_summary, run_name, validation_curve
from sastc_jax.compare.statistics import paired_differences

CSV_FIELDS = (
    "row",
    "method",
    "seed",
    "final_test_accuracy",
    "best_validation_test_accuracy",
    "best_validation_accuracy",
    "final_validation_accuracy",
    "seconds",
    "cpu_seconds",
    "invocations",
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
            "seconds": summary.get("total_seconds", summary["seconds"]),
            "cpu_seconds": summary.get("total_cpu_seconds", summary.get("cpu_seconds", "")),
            "invocations": summary.get("invocations", ""),
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
        for key in ("firing_rate", "sops_per_image", "energy_ratio", "seconds", "cpu_seconds"):
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
        f"Teacher ({teacher['model']}): test accuracy {100 * teacher['final_accuracy']:.2f}%"
        + (
            f", best validation {100 * teacher['best_validation_accuracy']:.2f}%"
            if teacher.get("best_validation_accuracy")
            else ""
        )
        + (f"; checkpoint SHA-256 `{teacher['sha256']}`." if teacher.get("sha256") else "."),
        "",
        "| row | method | seeds | test acc. final (%) | test acc. at best validation (%) "
        "| gap to teacher (pp) | firing rate | SOPs / image | energy vs teacher | s / run "
        "| CPU s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in table:
        lines.append(
            f"| {entry['row']} | {entry['method']} | {entry['seeds']} "
            f"| {_pct(entry['final_test_accuracy'])} "
            f"| {_pct(entry['best_validation_test_accuracy'])} | {100 * entry['gap']:.2f} "
            f"| {_first(entry['firing_rate'])} | {_first(entry['sops_per_image'])} "
            f"| {_first(entry['energy_ratio'])} | {_first(entry['seconds'], 4)} "
            f"| {_first(entry['cpu_seconds'], 4)} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds. Gap = teacher minus the mean final "
        "student accuracy. Firing rate: spikes per neuron per time step over the test split "
        "(network average). Energy vs teacher: the student's estimate (first layer MACs x "
        "4.6 pJ + SOPs x 0.9 pJ) over the teacher's (MACs x 4.6 pJ). s / run: training "
        "wall-clock of one run; CPU s / run: the process's CPU seconds over that training; "
        "both summed over the run's recorded invocations when it was stopped and resumed "
        "(invocations.jsonl; a run that predates that record, or an invocation killed "
        "without SIGTERM, counts only the last invocation's share). Wall-clock depends on "
        "what else ran on the machine; CPU seconds much less.",
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


def validation_curves_figure(
    curves: dict[str, list[tuple[int, float]]], row_of: Mapping[str, str] | None = None
):
    """Validation accuracy per epoch, one line per run name. A name in ``row_of`` (a
    doubling run) is dashed in the colour of its row; every row has its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_of = dict(row_of or {})
    rows = [name for name in curves if name not in row_of]
    palette = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    colour = {name: palette(index) for index, name in enumerate(rows)}
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if not curve:
            continue
        epochs, accuracy = zip(*curve, strict=True)
        axis.plot(
            epochs,
            [100 * a for a in accuracy],
            "--" if name in row_of else "-",
            color=colour.get(row_of.get(name, name)),
            marker=".",
            label=name,
        )
    axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation curves")
    axis.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    return figure


def plot_validation_curves(
    curves: dict[str, list[tuple[int, float]]],
    output: Path,
    row_of: Mapping[str, str] | None = None,
) -> Path:
    """Writes :func:`validation_curves_figure` to ``output``."""
    import matplotlib.pyplot as plt

    figure = validation_curves_figure(curves, row_of)
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


def teacher_margin_markdown(teacher_validation: float | None, rows, baseline: str) -> str:
    """The teacher's final validation accuracy against the mean of row ``baseline``'s."""
    values = [
        row["final_validation_accuracy"]
        for row in rows
        if row["row"] == baseline and row["final_validation_accuracy"] != ""
    ]
    if teacher_validation is None or not values:
        return ""
    mean = float(np.mean(values))
    return (
        f"Teacher margin on validation: the teacher's final validation accuracy "
        f"{100 * teacher_validation:.2f}% against the mean final validation accuracy of "
        f"`{baseline}` {100 * mean:.2f}% ({len(values)} seed(s)): "
        f"{100 * (teacher_validation - mean):+.2f} pp.\n"
    )


def missing_markdown(missing: Sequence[str]) -> str:
    """The line that says which table runs have not finished (a partial table)."""
    if not missing:
        return ""
    return (
        f"**Partial table:** {len(missing)} run(s) have not finished yet: {', '.join(missing)}.\n"
    )


def diverged_markdown(diverged: list[dict[str, Any]]) -> str:
    if not diverged:
        return ""
    lines = ["## Runs that diverged (left out of the table)", ""]
    lines += [f"- {entry['row']}, seed {entry['seed']}: {entry['error']}" for entry in diverged]
    return "\n".join([*lines, ""])


def pending_markdown(
    teacher: dict[str, Any], sweeps: dict[str, dict[str, float | None]], missing: Sequence[str]
) -> str:
    """``results.md`` before any table run has finished: the teacher, each sweep's
    validation accuracy per value so far (``None``: not finished) and the missing runs."""
    lines = [
        "# Method comparison (no table run has finished yet)",
        "",
        f"Teacher ({teacher['model']}): test accuracy {100 * teacher['final_accuracy']:.2f}%"
        + (f"; checkpoint SHA-256 `{teacher['sha256']}`." if teacher.get("sha256") else "."),
        "",
    ]
    for kind, values in sweeps.items():
        done = ", ".join(
            f"{value}: {'not finished' if acc is None else f'{100 * acc:.2f}%'}"
            for value, acc in values.items()
        )
        lines.append(f"- {kind} sweep, final validation accuracy per value: {done}.")
    return "\n".join([*lines, "", missing_markdown(missing)])


def write_results(
    config,
    workdir: Path,
    runs,
    teacher: dict[str, Any],
    choices,
    doubling,
    diverged=(),
    missing: Sequence[str] = (),
):
    rows_config, _ = comparison_settings(config)
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
        summary.get("total_seconds", summary["seconds"])
        for summary in map(read_summary, directories)
        if summary
    )
    markdown = results_markdown(table, teacher, describe_setup(config, training_seconds, choices))
    teacher_curve = validation_curve(workdir / "teacher")
    headline = analyze.headline_markdown(
        {run_name(r["row"], r["seed"]): r["analysis"] for r in runs if r.get("analysis")}
    )
    text = "\n".join(
        part
        for part in (
            markdown,
            teacher_margin_markdown(
                teacher_curve[-1][1] if teacher_curve else None, rows, names[0]
            ),
            missing_markdown(missing),
            paired_markdown(differences),
            choices_markdown(choices, doubling),
            diverged_markdown(list(diverged)),
        )
        if part
    )
    (workdir / "results.md").write_text(text + "\n" + headline)
    (workdir / "paired.json").write_text(json.dumps(differences, indent=2))
    plot_comparison(rows, names, teacher["final_accuracy"], workdir / "comparison.png")
    curves = {
        row.name: validation_curve(workdir / "runs" / run_name(row.name, row.seeds[0]))
        for row in rows_config
    }
    row_of = {}
    for entry in doubling:
        name = run_name(entry["row"], entry["seed"], f"x{entry['factor']}")
        curves[name] = validation_curve(workdir / "runs" / name)
        row_of[name] = entry["row"]
    if any(curves.values()):
        plot_validation_curves(curves, workdir / "validation_curves.png", row_of)
    for row in rows_config:
        heat_map = workdir / "runs" / run_name(row.name, row.seeds[0]) / "attention.png"
        if row.calibrated and heat_map.exists():
            (workdir / f"attention_{row.name}.png").write_bytes(heat_map.read_bytes())
    return rows, table, differences
