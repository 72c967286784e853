"""Why the calibration helps or does not: ``python -m sastc_jax.diagnose --workdir=RUN_DIR``.

For a calibrated run (``sastc``, ``spatial`` or ``layerwise``; a run of ``sastc_jax.main``
or one run of :mod:`sastc_jax.compare`), over its validation split (the test split when
the run holds none out), writes ``diagnosis.json`` and ``diagnosis.md``:

- the loss over training, from ``metrics.jsonl``: at every logged step the share of
  ``gamma * CE``, ``alpha_kd * KD`` and ``beta * calibration`` in the logged loss;
- the calibration at initialisation (the run's own seed: the same student and
  calibration parameters its first step started from) and as trained: the regression
  error of every (student tap, teacher tap) pair (docs/method.md §5, mean over time steps and
  samples), the mean attention ``(T', S, K)`` and its entropy per student tap, and the
  attention-weighted error that the loss minimises;
- how far the attention moved: the mean absolute change of its weights and of its
  entropy between the two.

Only full calibration batches count (a sample's attention depends on its batch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sastc_jax import analyze, checkpoints, methods, metrics, models, parallel, param_tree, train

DIAGNOSIS = "diagnosis.json"


def loss_shares(run_dir: Path, term_weights: dict[str, float]) -> list[dict[str, float]]:
    """Per logged training step: each weighted loss part over the logged total loss.

    ``term_weights``: ``{part: its weight}`` of the run's method
    (:meth:`sastc_jax.methods.Method.term_weights`)."""
    shares = []
    for record in metrics.read_metrics(run_dir):
        if record.get("split") != "train" or "calibration" not in record:
            continue
        weighted_terms = {
            name: weight * record.get(name, 0.0) for name, weight in term_weights.items()
        }
        total = record["loss"]
        shares.append(
            {
                "step": record["step"],
                "loss": total,
                **{f"{name}_share": value / total for name, value in weighted_terms.items()},
                "unexplained": (total - sum(weighted_terms.values())) / total,
            }
        )
    return shares


def calibration_state(
    distillation, student_variables, calibration_params, teacher_vars, data
) -> dict:
    """Over ``data``'s full batches: mean pair errors ``(S, K)``, mean attention
    ``(T', S, K)``, its entropy per student tap ``(S,)`` and the attention-weighted error."""

    @jax.jit
    def batch_sums(student_variables, calibration_params, teacher_vars, images):
        _, student_state = distillation.student.apply(
            student_variables, images, train=False, mutable=["intermediates"]
        )
        _, teacher_state = distillation.teacher.apply(
            teacher_vars, images, train=False, mutable=["intermediates"]
        )
        errors, attention = distillation.calibrator.apply(
            {"params": calibration_params},
            models.get_taps(student_state),
            models.get_taps(teacher_state),
            method="loss_factors",
        )
        return {
            "errors": jnp.sum(errors, axis=(0, 1)) / errors.shape[0],  # (S, K)
            "attention": jnp.sum(attention, axis=1),  # (T', S, K)
            "entropy": jnp.sum(analyze.attention_entropy(attention), axis=(0, 1))
            / attention.shape[0],  # (S,)
            "weighted": jnp.sum(attention * errors) / (attention.shape[0] * attention.shape[2]),
        }

    totals, examples = None, 0
    for batch in data.epoch(0):
        if not batch["mask"].all():
            continue
        sums = jax.device_get(
            batch_sums(student_variables, calibration_params, teacher_vars, batch["image"])
        )
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        examples += batch["mask"].size
    if not examples:
        raise ValueError("The split has no full calibration batch to diagnose.")
    mean = {name: np.asarray(value) / examples for name, value in totals.items()}
    return {
        "examples": examples,
        "pair_errors": mean["errors"].tolist(),
        "attention": mean["attention"].tolist(),
        "entropy_per_student_tap": mean["entropy"].tolist(),
        "weighted_error": float(mean["weighted"]),
    }


def diagnose_run(run_dir: str | Path, *, mesh=None) -> dict[str, Any]:
    """Diagnose the calibration of ``run_dir``; writes and returns ``diagnosis.json``."""
    run_dir = Path(run_dir)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    config = checkpoints.load_config(run_dir)
    method = methods.get_method(config.method)
    if not method.calibrated:
        raise ValueError(
            f"{run_dir} trained method {config.method!r}, which has no calibration; diagnose "
            f"needs one of {sorted(methods.calibrated_method_names())}."
        )
    trained = train.load_run(run_dir, "latest", config=config).state
    _, validation, test = train.load_datasets(config, "student", mesh)
    data = validation or test
    sample = np.zeros((data.batch_size, *data.input_shape), np.float32)
    distillation = train.build_distillation(config, data.num_classes, sample)
    params, batch_stats = jax.device_get(train.initial_student(config, distillation, sample, mesh))
    initial = {"params": params, "batch_stats": batch_stats}
    teacher_vars, _ = train.load_configured_teacher(
        config, run_dir, distillation.teacher, data.num_classes, data.input_shape
    )
    teacher_vars = jax.device_get(teacher_vars)
    states = {}
    for name, state in (("initial", initial), ("trained", trained)):
        variables = param_tree.inference_variables(state["params"], state["batch_stats"])
        states[name] = calibration_state(
            distillation,
            variables,
            param_tree.calibration_params(state["params"]),
            teacher_vars,
            data,
        )
    attention = {name: np.asarray(states[name]["attention"]) for name in states}
    entropy = {name: np.asarray(states[name]["entropy_per_student_tap"]) for name in states}
    weights = methods.LossWeights.from_config(config.loss)
    result = {
        "run": str(run_dir),
        "method": config.method,
        "split": "validation" if validation is not None else "test",
        "beta": weights.beta,
        "max_entropy": math.log(attention["trained"].shape[-1]),
        "loss_shares": loss_shares(run_dir, method.term_weights(weights)),
        **states,
        "attention_change": float(np.mean(np.abs(attention["trained"] - attention["initial"]))),
        "entropy_change": (entropy["trained"] - entropy["initial"]).tolist(),
    }
    (run_dir / DIAGNOSIS).write_text(json.dumps(result, indent=2))
    (run_dir / "diagnosis.md").write_text(diagnosis_markdown(result))
    return result


def _matrix(rows: Sequence[Sequence[float]], digits: int = 4) -> list[str]:
    header = "| student tap | " + " | ".join(f"teacher {j + 1}" for j in range(len(rows[0])))
    lines = [header + " |", "|" + " --- |" * (len(rows[0]) + 1)]
    for i, row in enumerate(rows):
        lines.append(f"| {i + 1} | " + " | ".join(f"{value:.{digits}g}" for value in row) + " |")
    return lines


def diagnosis_markdown(result: dict[str, Any]) -> str:
    shares = result["loss_shares"]
    title = f"# Calibration diagnosis: {result['run']}\n"  # each line ends a paragraph
    setup = (
        f"Method {result['method']}, beta {result['beta']:g}, over the {result['split']} split.\n"
    )
    lines = [title, setup]
    if shares:
        picks = sorted(
            {0, len(shares) // 4, len(shares) // 2, 3 * len(shares) // 4, len(shares) - 1}
        )
        terms = [key.removesuffix("_share") for key in shares[0] if key.endswith("_share")]
        lines += [
            "## Share of the training loss (each term times its weight)",
            "",
            "| step | loss | " + " | ".join(terms) + " |",
            "|" + " --- |" * (len(terms) + 2),
        ]
        for index in picks:
            entry = shares[index]
            cells = " | ".join(f"{100 * entry[f'{term}_share']:.1f}%" for term in terms)
            lines.append(f"| {entry['step']} | {entry['loss']:.4g} | {cells} |")
        lines.append("")
    for name in ("initial", "trained"):
        state = result[name]
        mean_attention = np.mean(np.asarray(state["attention"]), axis=0)
        entropy = ", ".join(f"{value:.3f}" for value in state["entropy_per_student_tap"])
        lines += [
            f"## {name.capitalize()} ({state['examples']} examples)",
            "",
            "Regression error per pair:",
            "",
            *_matrix(state["pair_errors"]),
            "",
            "Attention (mean over time steps):",
            "",
            *_matrix(mean_attention.tolist(), digits=3),
            "",
            f"Attention entropy per student tap: {entropy} (maximum "
            f"{result['max_entropy']:.3f} nats). Attention-weighted error: "
            f"{state['weighted_error']:.4g}.",
            "",
        ]
    change = ", ".join(f"{value:+.3f}" for value in result["entropy_change"])
    lines += [
        f"Attention moved by {result['attention_change']:.4f} per weight on average; entropy "
        f"change per student tap: {change} nats.",
        "",
    ]
    return "\n".join(lines)
