"""Analysis of a trained student: ``python -m sastc_jax.analyze --workdir=RUN_DIR``.

Over the test split, for the student saved in ``RUN_DIR`` (a run of ``sastc_jax.main``
with ``config.json``, or one run of :mod:`sastc_jax.compare`), writes ``analysis.json``,
``analysis.md`` and, for the calibrated methods, ``attention.png``:

- firing rates (docs/method.md §11): spikes / (neurons x T) of every LIF layer and of the network;
- operations per image (docs/method.md §11): every conv and dense layer of the student counts
  synaptic operations, the sum over its input spikes of the fan-out each reaches
  (``C_out x k x k / stride^2`` for a conv, fewer at the borders; ``features`` for a
  dense layer); the first layer, fed real values, counts MACs. An average-pooled spike
  map (values ``n / window``) counts as the ``n`` spikes it averages. The ANN teacher
  counts MACs. Energy: 4.6 pJ per MAC, 0.9 pJ per SOP (45 nm, Horowitz 2014);
- the SASTC attention: the mean weight per (time step, student tap, teacher tap) as a
  heat map and its mean entropy per student tap (over full calibration batches only,
  since the attention of a sample depends on the rest of its batch);
- the test accuracy with 1..T time steps.

The encoder convolution of a static image runs once per image (the same input at every
time step, see :mod:`sastc_jax.models.network`), so its MACs are counted once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sastc_jax import models, parallel, param_tree, plots, train
from sastc_jax.models.layers import Dense
from sastc_jax.train import step as step_lib

Array = jax.Array
ANALYSIS = "analysis.json"
PJ_PER_MAC = 4.6
PJ_PER_SOP = 0.9


# --------------------------------------------------------------------------- counting


@dataclasses.dataclass
class LayerInput:
    """The input of one conv or dense call and the fan-out of each of its elements."""

    name: str
    inputs: Array  # (L, ...) as the layer received it; L = (T *) B
    fan_out: Array  # (...): outputs each input element of one example reaches


def conv_fan_out(input_shape: Sequence[int], kernel_size, strides, padding, features: int) -> Array:
    """Outputs reached by each element of an ``(H, W, C)`` input of a conv, within bounds.

    The gradient of the sum of a ones-kernel convolution with respect to its input
    counts, per input element, the output positions whose window covers it; times the
    output channels.
    """
    kernel = jnp.ones((*kernel_size, input_shape[-1], 1), jnp.float32)

    def total(x):
        out = jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(out)

    ones = jnp.ones((1, *input_shape), jnp.float32)
    return jax.grad(total)(ones)[0] * features


def _conv_padding(module: nn.Conv, kernel_size) -> Sequence[tuple[int, int]]:
    if isinstance(module.padding, str):
        raise ValueError(
            f"Conv {module.name!r} uses string padding {module.padding!r}; the operation "
            "count needs explicit padding as the project's layers use."
        )
    return [tuple(pad) for pad in module.padding][: len(kernel_size)]


def trace_layer_inputs(apply_fn: Callable[[], Any]) -> tuple[Any, list[LayerInput]]:
    """Run ``apply_fn()`` and record the input of every ``nn.Conv`` / ``nn.Dense`` call."""
    records: list[LayerInput] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense | Dense):
            x = args[0]
            name = "/".join(str(part) for part in module.scope.path) or module.name
            if isinstance(module, nn.Conv):
                kernel_size = tuple(module.kernel_size)
                strides = module.strides or 1
                strides = (strides,) * len(kernel_size) if isinstance(strides, int) else strides
                fan_out = conv_fan_out(
                    x.shape[-3:],
                    kernel_size,
                    tuple(strides),
                    _conv_padding(module, kernel_size),
                    module.features,
                )
            else:
                fan_out = jnp.full(x.shape[-1:], float(module.features), jnp.float32)
            records.append(LayerInput(name, x, fan_out))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        output = apply_fn()
    return output, records


def example_weights(leading: int, mask: Array) -> Array:
    """Per leading-axis row of a ``(T*B)``- or ``B``-merged array, its example's mask."""
    batch = mask.shape[0]
    return jnp.tile(mask.astype(jnp.float32), leading // batch)


def spike_counts(x: Array) -> Array:
    """Spikes an input stands for: binary spikes count 1, an average of spikes ``n / w``
    counts ``n`` (``w`` read as one over the smallest positive value)."""
    x = x.astype(jnp.float32)
    quantum = jnp.min(jnp.where(x > 0, x, jnp.inf))
    quantum = jnp.where(jnp.isfinite(quantum), quantum, 1.0)
    return jnp.round(x / quantum)


def layer_operations(
    records: Sequence[LayerInput], mask: Array, *, spiking: bool
) -> tuple[dict[str, str], dict[str, Array]]:
    """Per layer: what it counts (``'MAC'`` or ``'SOP'``) and how many, over unmasked examples.

    The first layer of a spiking network and every layer of an ANN count MACs (every
    input element times its fan-out); later spiking layers count SOPs (the spikes of
    their input times the fan-out).
    """
    kinds, ops = {}, {}
    for index, record in enumerate(records):
        x = record.inputs.reshape((-1, *record.fan_out.shape))
        weights = example_weights(x.shape[0], mask)
        counts_sops = spiking and index > 0
        values = spike_counts(x) if counts_sops else jnp.ones_like(x, jnp.float32)
        per_row = jnp.sum(values * record.fan_out, axis=tuple(range(1, x.ndim)))
        kinds[record.name] = "SOP" if counts_sops else "MAC"
        ops[record.name] = jnp.sum(per_row * weights)
    return kinds, ops


def energy_table(student_macs: float, student_sops: float, teacher_macs: float) -> dict:
    """Energy per image (pJ) of the student (MACs at 4.6 pJ, SOPs at 0.9 pJ) and teacher."""
    student = student_macs * PJ_PER_MAC + student_sops * PJ_PER_SOP
    teacher = teacher_macs * PJ_PER_MAC
    return {
        "student_macs": student_macs,
        "student_sops": student_sops,
        "teacher_macs": teacher_macs,
        "student_energy_pj": student,
        "teacher_energy_pj": teacher,
        "energy_ratio": student / teacher if teacher else float("nan"),
    }


def attention_entropy(attention: Array) -> Array:
    """Entropy (nats) over the teacher axis of attention ``(..., K)``."""
    return -jnp.sum(attention * jnp.log(jnp.clip(attention, 1e-12, 1.0)), axis=-1)


# --------------------------------------------------------------------------- a run


def analyze_run(run_dir: str | Path, *, mesh=None) -> dict[str, Any]:
    """Analyse the student of ``run_dir`` over the test split; writes and returns the result."""
    run_dir = Path(run_dir)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    run = train.load_run(run_dir, "latest")  # the student as training left it
    config, student, variables = run.config, run.model, run.variables
    test = train.load_test_split(config, "student", mesh)
    sample = np.zeros((test.batch_size, *test.input_shape), np.float32)
    distillation = train.build_distillation(config, test.num_classes, sample)
    teacher = distillation.teacher or train.build_teacher(config, test.num_classes)
    calibrated = distillation.calibrator is not None
    teacher_vars = None  # the attention needs the trained teacher; its MACs only shapes
    if calibrated:
        teacher_vars, _ = train.load_configured_teacher(
            config, run_dir, teacher, test.num_classes, test.input_shape
        )
        teacher_vars = jax.device_get(teacher_vars)

    layer_kinds: dict[str, str] = {}  # filled while tracing
    student_pass = make_student_pass(student, teacher, distillation.calibrator, layer_kinds)
    totals, attention_sum, entropy_sum, attention_examples = None, 0.0, 0.0, 0
    for batch in test.epoch(0):
        mask = batch["mask"]
        out = jax.device_get(
            student_pass(
                variables,
                param_tree.calibration_params(run.state["params"]),
                teacher_vars,
                batch["image"],
                batch["label"],
                mask,
            )
        )
        attention = out.pop("attention", None)
        entropy = out.pop("entropy", None)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
        if attention is not None and mask.all():
            attention_sum = attention_sum + attention
            entropy_sum = entropy_sum + entropy
            attention_examples += mask.size
    examples = test.num_examples

    result = {
        "run": str(run_dir),
        "method": config.method,
        "examples": examples,
        "accuracy_per_t": (totals["correct_per_t"] / examples).tolist(),
        "firing_rate": firing_rates(totals["firing"]),
        "operations": operations_summary(
            layer_kinds,
            totals["operations"],
            examples,
            teacher_operations(teacher, teacher_vars, test.input_shape),
        ),
        "attention": None,
    }
    if attention_examples:
        result["attention"] = attention_summary(
            np.asarray(attention_sum) / attention_examples,
            np.asarray(entropy_sum) / attention_examples,
            attention_examples,
            run_dir / "attention.png",
        )
    (run_dir / ANALYSIS).write_text(json.dumps(result, indent=2))
    (run_dir / "analysis.md").write_text(analysis_markdown(result))
    return result


def make_student_pass(
    student: nn.Module,
    teacher: nn.Module,
    calibrator: nn.Module | None,
    layer_kinds: dict[str, str],
) -> Callable:
    """The jitted pass over one test batch: ``(variables, calibration_params, teacher_vars,
    images, labels, mask) -> sums`` of operations, firing, correct counts per T and, with
    a ``calibrator``, the attention and its entropy. Variables are arguments, not
    constants, so every seed of a method compiles one program. Tracing fills
    ``layer_kinds`` (layer name -> 'MAC' | 'SOP')."""

    def student_pass(variables, calibration_params, teacher_vars, images, labels, mask):
        def apply():
            return student.apply(
                variables,
                images,
                train=False,
                mutable=["intermediates"],
                capture_intermediates=models.is_lif_call,
            )

        (logits, mutated), records = trace_layer_inputs(apply)
        lif = models.get_lif_outputs(mutated["intermediates"])
        kinds, ops = layer_operations(records, mask, spiking=True)
        layer_kinds.update(kinds)
        out = {
            "operations": ops,
            "firing": step_lib.firing_counts(lif, mask),
            "correct_per_t": step_lib.correct_per_time_steps(logits, labels, mask),
        }
        if calibrator is not None:
            _, teacher_state = teacher.apply(
                teacher_vars, images, train=False, mutable=["intermediates"]
            )
            _, attention = calibrator.apply(
                {"params": calibration_params},
                models.get_taps(mutated),
                models.get_taps(teacher_state),
            )
            out["attention"] = jnp.sum(attention, axis=1)  # (T', S, K)
            out["entropy"] = jnp.sum(attention_entropy(attention), axis=1)  # (T', S)
        return out

    return jax.jit(student_pass)


def teacher_operations(teacher: nn.Module, teacher_vars, input_shape) -> dict[str, float]:
    """MACs per image of every conv and dense layer of the ANN teacher. They depend only
    on shapes: ``teacher_vars`` None initialises it from one zero image."""
    one = np.zeros((1, *input_shape), np.float32)
    variables = teacher_vars or teacher.init(jax.random.key(0), one, train=False)
    _, records = trace_layer_inputs(lambda: teacher.apply(variables, one, train=False))
    _, operations = layer_operations(records, np.ones(1, bool), spiking=False)
    return {name: float(ops) for name, ops in operations.items()}


def operations_summary(
    layer_kinds: dict[str, str],
    student_totals: dict[str, Any],
    examples: int,
    teacher_ops: dict[str, float],
) -> dict[str, Any]:
    """Per-layer operations per image of the student (``student_totals``: summed over
    ``examples``), the teacher's, and the energy table of both."""
    layers = [
        {"name": name, "kind": kind, "ops_per_image": float(student_totals[name]) / examples}
        for name, kind in layer_kinds.items()
    ]
    student_macs = sum(layer["ops_per_image"] for layer in layers if layer["kind"] == "MAC")
    student_sops = sum(layer["ops_per_image"] for layer in layers if layer["kind"] == "SOP")
    return {
        "layers": layers,
        "teacher_layers": teacher_ops,
        **energy_table(student_macs, student_sops, sum(teacher_ops.values())),
    }


def firing_rates(firing: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Spikes / (neurons x T) per LIF layer and over the network, from summed counts."""
    layers = {
        name: float(entry["spikes"]) / float(entry["neuron_steps"])
        for name, entry in firing.items()
    }
    all_spikes = sum(float(entry["spikes"]) for entry in firing.values())
    all_steps = sum(float(entry["neuron_steps"]) for entry in firing.values())
    return {"layers": layers, "network": all_spikes / all_steps}


def attention_summary(mean: np.ndarray, entropy: np.ndarray, examples: int, png: Path) -> dict:
    """The mean attention ``(T', S, K)`` and entropy ``(T', S)`` over ``examples``, with
    the heat map written to ``png``."""
    num_teacher = mean.shape[-1]
    written = plots.plot_attention(
        mean[:, None],
        png,
        [f"student tap {i + 1}" for i in range(mean.shape[1])],
        [f"teacher tap {j + 1}" for j in range(num_teacher)],
    )
    return {
        "examples": examples,
        "mean": mean.tolist(),
        "entropy_per_student_tap": entropy.mean(axis=0).tolist(),
        "max_entropy": math.log(num_teacher),
        "png": written.name,
    }


# --------------------------------------------------------------------------- reports


def analysis_markdown(result: dict[str, Any]) -> str:
    ops = result["operations"]
    lines = [
        f"# Analysis of {result['run']} ({result['method']})",
        "",
        f"Test split, {result['examples']} images.",
        "",
        "| layer | firing rate |",
        "| --- | --- |",
        *(f"| {name} | {rate:.4f} |" for name, rate in result["firing_rate"]["layers"].items()),
        f"| **network** | **{result['firing_rate']['network']:.4f}** |",
        "",
        "| layer | counted as | operations / image |",
        "| --- | --- | --- |",
        *(
            f"| {layer['name']} | {layer['kind']} | {layer['ops_per_image']:.4g} |"
            for layer in ops["layers"]
        ),
        "",
        "| network | MACs / image | SOPs / image | energy / image (nJ) |",
        "| --- | --- | --- | --- |",
        f"| student (SNN) | {ops['student_macs']:.4g} | {ops['student_sops']:.4g} "
        f"| {ops['student_energy_pj'] / 1e3:.4g} |",
        f"| teacher (ANN) | {ops['teacher_macs']:.4g} | 0 | {ops['teacher_energy_pj'] / 1e3:.4g} |",
        "",
        f"Energy ratio student / teacher: {ops['energy_ratio']:.4f} "
        f"({PJ_PER_MAC} pJ per MAC, {PJ_PER_SOP} pJ per SOP).",
        "",
        "Test accuracy by time steps used: "
        + ", ".join(
            f"T={t}: {100 * a:.2f}%" for t, a in enumerate(result["accuracy_per_t"], start=1)
        ),
        "",
    ]
    attention = result["attention"]
    if attention:
        lines += [
            f"Attention entropy per student tap (nats, max {attention['max_entropy']:.3f}): "
            + ", ".join(f"{e:.3f}" for e in attention["entropy_per_student_tap"]),
            "",
            f"![attention]({attention['png']})",
            "",
        ]
    return "\n".join(lines)


def headline_markdown(analyses: dict[str, dict[str, Any]]) -> str:
    """Per run: network firing rate, SOPs, energy ratio, attention entropy, accuracy by T."""
    if not analyses:
        return ""
    lines = [
        "## Analysis of every student (test split)",
        "",
        "| run | firing rate | MACs / image | SOPs / image | energy vs teacher "
        "| attention entropy per student tap (nats) | test acc. by T (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in analyses.items():
        ops, attention = result["operations"], result["attention"]
        entropy = (
            ", ".join(f"{e:.3f}" for e in attention["entropy_per_student_tap"])
            if attention
            else "n/a"
        )
        by_t = ", ".join(f"{100 * a:.2f}" for a in result["accuracy_per_t"])
        lines.append(
            f"| {name} | {result['firing_rate']['network']:.4f} | {ops['student_macs']:.4g} "
            f"| {ops['student_sops']:.4g} | {ops['energy_ratio']:.4f} | {entropy} | {by_t} |"
        )
    teacher_macs = next(iter(analyses.values()))["operations"]["teacher_macs"]
    lines += ["", f"Teacher MACs / image: {teacher_macs:.4g}.", ""]
    return "\n".join(lines)
