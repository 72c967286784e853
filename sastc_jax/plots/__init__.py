"""Figures of a run: training curves from ``metrics.jsonl`` and attention maps.

    python -m sastc_jax.plots --workdir=DIR     # writes DIR/curves.png

Needs matplotlib (``pip install -e '.[plots]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sastc_jax import methods
from sastc_jax.metrics import read_metrics


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install -e '.[plots]'") from error
    return plt


def plot_run(workdir: str | Path, output: str | Path | None = None) -> Path:
    """Loss parts, test accuracy and accuracy per number of time steps of every stage.

    Reads ``workdir/metrics.jsonl``; writes ``output`` (default ``workdir/curves.png``).
    """
    records = read_metrics(workdir)
    if not records:
        raise FileNotFoundError(
            f"No metrics in {Path(workdir) / 'metrics.jsonl'}; "
            "run `python -m sastc_jax.main` with this --workdir first."
        )
    stages = list(dict.fromkeys(r["stage"] for r in records if "stage" in r))
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis, per_t_axis) = plt.subplots(1, 3, figsize=(15, 4))
    for stage in stages:
        train = [r for r in records if r.get("stage") == stage and r["split"] == "train"]
        for part in ("loss", *methods.part_names()):
            values = [(r["step"], r[part]) for r in train if r.get(part)]
            if values:
                steps, ys = zip(*values, strict=True)
                loss_axis.plot(steps, ys, label=f"{stage} {part}")
        tests = [r for r in records if r.get("stage") == stage and r["split"] == "test"]
        if tests:
            accuracy_axis.plot(
                [r["step"] for r in tests],
                [100 * r["accuracy"] for r in tests],
                marker="o",
                label=stage,
            )
            per_t = tests[-1]["accuracy_per_t"]
            per_t_axis.plot(
                range(1, len(per_t) + 1), [100 * a for a in per_t], marker="o", label=stage
            )
    loss_axis.set(title="training loss", xlabel="step", yscale="log")
    accuracy_axis.set(title="test accuracy (%)", xlabel="step")
    per_t_axis.set(title="final accuracy by time steps used (%)", xlabel="time steps")
    per_t_axis.xaxis.get_major_locator().set_params(integer=True)
    for axis in (loss_axis, accuracy_axis, per_t_axis):
        if axis.lines:
            axis.legend(fontsize="small")
    figure.tight_layout()
    output = Path(output) if output else Path(workdir) / "curves.png"
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def plot_attention(
    attention: np.ndarray,
    output: str | Path,
    student_names: Sequence[str] | None = None,
    teacher_names: Sequence[str] | None = None,
) -> Path:
    """Heat maps of the batch-mean attention ``(T, B, S, K)``, one panel per time step."""
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 4:
        raise ValueError(f"attention must be (T, B, S, K); got shape {attention.shape}.")
    mean = attention.mean(axis=1)
    steps, num_student, num_teacher = mean.shape
    student_names = student_names or [f"student {i}" for i in range(num_student)]
    teacher_names = teacher_names or [f"teacher {j}" for j in range(num_teacher)]
    plt = _pyplot()
    figure, axes = plt.subplots(1, steps, figsize=(3.5 * steps, 3), squeeze=False)
    for t, axis in enumerate(axes[0]):
        image = axis.imshow(mean[t], vmin=0.0, vmax=1.0, cmap="viridis")
        axis.set(title=f"t = {t + 1}", xticks=range(num_teacher), yticks=range(num_student))
        axis.set_xticklabels(teacher_names, rotation=45, ha="right", fontsize="small")
        axis.set_yticklabels(student_names if t == 0 else [], fontsize="small")
        for i in range(num_student):
            for j in range(num_teacher):
                axis.text(
                    j,
                    i,
                    f"{mean[t, i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if mean[t, i, j] < 0.5 else "black",
                    fontsize="small",
                )
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    output = Path(output)
    figure.savefig(output, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return output


def plot_attention_panels(
    panels: Mapping[str, np.ndarray],
    output: str | Path,
    planted: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Batch-mean attention of several runs, one row per run and one panel per time step.

    ``panels`` maps a row title to an attention ``(T', B, S, K)``; a row with T' = 1
    (the ``spatial`` method) is one panel for all steps. ``planted[t][i]``, when given,
    is the expected teacher tap of student tap i at step t: those cells are outlined
    (for a T' = 1 row, every step's planted cell is).
    """
    means = {}
    for title, attention in panels.items():
        attention = np.asarray(attention, np.float32)
        if attention.ndim != 4:
            raise ValueError(f"attention {title!r} must be (T, B, S, K); got {attention.shape}.")
        means[title] = attention.mean(axis=1)
    columns = max(mean.shape[0] for mean in means.values())
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(means),
        columns,
        figsize=(3.4 * columns + 1, 3.0 * len(means)),
        squeeze=False,
        layout="constrained",
    )
    for row, (title, mean) in zip(axes, means.items(), strict=True):
        steps, num_student, num_teacher = mean.shape
        for t, axis in enumerate(row):
            if t >= steps:
                axis.set_axis_off()
                continue
            image = axis.imshow(mean[t], vmin=0.0, vmax=1.0, cmap="viridis")
            when = f"t = {t + 1}" if steps > 1 else "all t"
            axis.set_title(f"{title}, {when}", fontsize="small")
            axis.set(xticks=range(num_teacher), yticks=range(num_student), xlabel="teacher tap")
            if t == 0:
                axis.set_ylabel("student tap")
            for i in range(num_student):
                for j in range(num_teacher):
                    color = "white" if mean[t, i, j] < 0.5 else "black"
                    axis.text(
                        j,
                        i,
                        f"{mean[t, i, j]:.2f}",
                        ha="center",
                        va="center",
                        color=color,
                        fontsize="small",
                    )
            if planted is not None:
                # A T' = 1 row holds the same weights at every step: mark all their pairs.
                for pairing_row in [planted[t]] if steps > 1 else planted:
                    for i, j in enumerate(pairing_row):
                        outline = plt.Rectangle(
                            (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2
                        )
                        axis.add_patch(outline)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    output = Path(output)
    figure.savefig(output, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return output
