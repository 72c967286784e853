"""Does the attention find the right layers? A planted-alignment experiment.

    python -m sastc_jax.experiments.alignment_check [--steps=N] [--seed=S,S,...] [--output=DIR]
        [--method=sastc,spatial] [--attention-scale=S] [--learn-attention-scale]
        [--threshold=V[,V,V]]

Teacher taps are fixed random features (random 3x3 convolution, standardised, ReLU)
of synthetic inputs, with the ResNet-19 tap pattern scaled down (16x16x8, 8x8x16,
4x4x32). Every student tap at every time step is a spike map (a threshold) of a fixed
random channel mixing of one *planted* teacher tap, resampled to the student's spatial
size, plus noise; the planted teacher depends on the student tap and on the time step
(:data:`DEFAULT_PAIRING`). Only the calibration module is trained (Adam on
``L_sastc``, a new batch every step) and the attention on the planted pairs is
measured on held-out batches, for ``sastc`` and for ``spatial`` (no time index, so it
cannot follow a pairing that changes with t).

Design choices, and why:

- Each teacher tap is computed from its own independent synthetic input, so teacher
  taps have distinguishable batch relations (similarity-matrix rows, all the
  attention sees), and only the planted teacher tap is predictable from a student's
  spikes: the regression error, which is what the loss rewards, is lowest on the
  planted pair (the run reports the per-pair errors to show it).
- The inputs are generated at the coarsest tap's resolution and upsampled, so that
  average-pooling a large teacher tap down to a small student tap (docs/method.md §5.4) keeps
  its variance; otherwise a heavily pooled teacher tap has a small error with *any*
  student tap, and the loss prefers it whatever was planted.
- Spike maps planted from different teacher taps fire at different rates (one
  threshold per source tap). The query MLP is shared by all time steps and sees one
  similarity row, so it can tell the steps of a student tap apart only through
  statistics of that row; with equal rates (``--threshold 0.5``) nothing in the row
  says which teacher tap it came from, and the attention learns one partner per
  student tap for all steps, as ``spatial`` does.

How high planted attention can go: query and key are unit vectors, so each logit
lies in [-1, 1]. With K = 3, the weight e / (e + 2/e) ~= 0.787 needs both other keys
opposite to the query. One sample's keys are shared by all (t, student tap), so that
is only possible when a single teacher tap is the target everywhere. A pairing that
changes with t targets at least two teacher taps, which caps the weight every planted
pair can get at once at ~0.706; targeting all three (as the default pairing does)
caps it at e / (e + 2 e^-1/2) ~= 0.691 (keys 120 degrees apart).
:func:`attention_ceiling` solves for this bound for a given pairing; the report gives
each planted weight as a fraction of it (the ceiling bounds the smallest planted weight,
so one pair alone can exceed it, up to 0.787 at K = 3). With an attention scale s
(docs/method.md §7.1, logits ``s * <q, k>``; ``--attention-scale``, learned with
``--learn-attention-scale``) the logits lie in [-s, s] and the bound rises towards 1: it
is reported for the scale the run starts from.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sastc_jax.calibration import (
    Calibration,
    calibration_loss,
    calibration_module,
    init_calibration,
)
from sastc_jax.regressors import adaptive_pool

Array = jax.Array

TAP_SHAPES = ((16, 16, 8), (8, 8, 16), (4, 4, 32))
# DEFAULT_PAIRING[t][i] = the teacher tap planted in student tap i at time step t.
DEFAULT_PAIRING = ((1, 2, 0), (2, 0, 0))


@dataclasses.dataclass(frozen=True)
class PlantedTaps:
    """A planted-alignment problem.

    Attributes:
      pairing: ``pairing[t][i]`` is the teacher tap planted in student tap i at step t.
      teacher_shapes: per teacher tap ``(H, W, C)``.
      student_shapes: per student tap ``(H, W, C)``.
      batch_size: B, the calibration batch.
      noise: standard deviation of the noise added before the spike threshold
        (the planted signal has unit variance per channel).
      threshold: per teacher tap j, the spike threshold of student maps planted from j
        (on the standardised signal). Different thresholds give every source its own
        firing rate, hence its own similarity scale: see the module docstring.
      latent_channels: channels of each teacher tap's synthetic input.
      latent_hw: spatial size of that input before it is upsampled to the tap's size
        (the coarsest tap's size, so that average-pooling a teacher tap down to a smaller
        student tap keeps most of its variance).
    """

    pairing: tuple[tuple[int, ...], ...] = DEFAULT_PAIRING
    teacher_shapes: tuple[tuple[int, int, int], ...] = TAP_SHAPES
    student_shapes: tuple[tuple[int, int, int], ...] = TAP_SHAPES
    batch_size: int = 32
    noise: float = 0.5
    threshold: tuple[float, ...] = (0.0, 0.5, 1.0)
    latent_channels: int = 4
    latent_hw: tuple[int, int] = (4, 4)

    @property
    def time_steps(self) -> int:
        return len(self.pairing)

    def __post_init__(self):
        num_student, num_teacher = len(self.student_shapes), len(self.teacher_shapes)
        for t, row in enumerate(self.pairing):
            if len(row) != num_student or not all(0 <= j < num_teacher for j in row):
                raise ValueError(
                    f"pairing[{t}] = {row}: every time step needs one teacher tap index in "
                    f"[0, {num_teacher}) per student tap ({num_student} student taps)."
                )
        if len(self.threshold) != num_teacher:
            raise ValueError(
                f"threshold has {len(self.threshold)} values; give one per teacher tap "
                f"({num_teacher})."
            )


def _standardise(x: Array) -> Array:
    """Zero mean, unit variance per channel over batch and space."""
    mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=(0, 1, 2), keepdims=True) + 1e-6)


def _resample(x: Array, out_hw: tuple[int, int]) -> Array:
    """Average-pool down or nearest-upsample ``(B, H, W, C)`` to ``out_hw``."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(out_hw):
        return x
    if h > out_hw[0]:
        return adaptive_pool(x, out_hw, "avg")
    return jnp.repeat(jnp.repeat(x, out_hw[0] // h, axis=1), out_hw[1] // w, axis=2)


def make_tap_sampler(problem: PlantedTaps, key: Array):
    """Fix the random transforms of ``problem``; return ``sample(key) -> (student, teacher)``.

    ``student`` is S spike maps ``(T, B, H_i, W_i, C_i)`` (0/1 float32), ``teacher``
    K feature maps ``(B, H_j, W_j, C_j)`` (ReLU of standardised random features).
    """
    num_teacher = len(problem.teacher_shapes)
    conv_key, mix_key = jax.random.split(key)
    conv_keys = jax.random.split(conv_key, num_teacher)
    # Fixed random 3x3 convolutions: latent input of teacher tap j -> its C_j channels.
    convs = [
        jax.random.normal(k, (3, 3, problem.latent_channels, c))
        for k, (_, _, c) in zip(conv_keys, problem.teacher_shapes, strict=True)
    ]
    # Fixed random 1x1 channel mixings C_j -> C_i, one per planted (t, i).
    mix_keys = jax.random.split(mix_key, problem.time_steps * len(problem.student_shapes))
    mixes = {}
    for t, row in enumerate(problem.pairing):
        for i, j in enumerate(row):
            c_in, c_out = problem.teacher_shapes[j][-1], problem.student_shapes[i][-1]
            mixes[t, i] = jax.random.normal(mix_keys[len(mixes)], (c_in, c_out)) / np.sqrt(c_in)

    def sample(key: Array) -> tuple[list[Array], list[Array]]:
        latent_key, noise_key = jax.random.split(key)
        latent_keys = jax.random.split(latent_key, num_teacher)
        teacher = []
        for k, conv, (h, w, _) in zip(latent_keys, convs, problem.teacher_shapes, strict=True):
            # A smooth synthetic input: noise at latent_hw, upsampled bilinearly.
            coarse = jax.random.normal(
                k, (problem.batch_size, *problem.latent_hw, problem.latent_channels)
            )
            latent = jax.image.resize(
                coarse, (problem.batch_size, h, w, coarse.shape[-1]), "linear"
            )
            features = jax.lax.conv_general_dilated(
                latent, conv, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            teacher.append(jax.nn.relu(_standardise(features)))
        noise_keys = jax.random.split(noise_key, problem.time_steps * len(problem.student_shapes))
        student = [[] for _ in problem.student_shapes]
        for t, row in enumerate(problem.pairing):
            for i, j in enumerate(row):
                h, w, _ = problem.student_shapes[i]
                signal = _standardise(_resample(teacher[j], (h, w)) @ mixes[t, i])
                noise = problem.noise * jax.random.normal(
                    noise_keys[t * len(row) + i], signal.shape
                )
                student[i].append((signal + noise > problem.threshold[j]).astype(jnp.float32))
        return [jnp.stack(steps) for steps in student], teacher

    return sample


def planted_attention(attention: Array, pairing: Sequence[Sequence[int]]) -> np.ndarray:
    """Batch-mean attention on the planted pairs, ``(T, S)``.

    ``attention`` is ``(T', B, S, K)``; a ``spatial`` attention (T' = 1) is read at
    every step of the pairing (it is the same weight at every t).
    """
    mean = np.asarray(attention).mean(axis=1)
    mean = np.broadcast_to(mean, (len(pairing), *mean.shape[1:]))
    return np.array([[mean[t, i, j] for i, j in enumerate(row)] for t, row in enumerate(pairing)])


def attention_ceiling(
    pairing: Sequence[Sequence[int]],
    num_teacher: int,
    *,
    scale: float = 1.0,
    restarts: int = 8,
    steps: int = 1500,
) -> float:
    """The largest planted weight one sample's attention can give every planted pair.

    A sample has one key per teacher tap, shared by all (t, student tap); each query
    and key is a unit vector. This maximises, over keys and one query per distinct
    planted teacher tap, the smallest planted softmax weight (gradient ascent on a
    soft minimum from several random starts; the exact minimum is returned). With
    K = 3: one distinct target gives e / (e + 2/e) ~= 0.787, two give ~0.706, three
    give e / (e + 2 e^-1/2) ~= 0.691 (keys 120 degrees apart). ``scale`` multiplies the
    logits (docs/method.md §7.1).
    """
    targets = jnp.asarray(sorted({j for row in pairing for j in row}))
    optimizer = optax.adam(0.02)

    def unit(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def planted_weights(vectors):
        keys, queries = unit(vectors["keys"]), unit(vectors["queries"])
        weights = jax.nn.softmax(scale * (queries @ keys.T), axis=-1)
        return weights[jnp.arange(len(targets)), targets]

    def soft_min_loss(vectors):
        return jax.nn.logsumexp(-50.0 * planted_weights(vectors)) / 50.0

    def solve(key):
        key_key, query_key = jax.random.split(key)
        vectors = {
            "keys": jax.random.normal(key_key, (num_teacher, num_teacher)),
            "queries": jax.random.normal(query_key, (len(targets), num_teacher)),
        }

        def update(carry, _):
            vectors, state = carry
            updates, state = optimizer.update(jax.grad(soft_min_loss)(vectors), state)
            return (optax.apply_updates(vectors, updates), state), None

        (vectors, _), _ = jax.lax.scan(
            update, (vectors, optimizer.init(vectors)), None, length=steps
        )
        return jnp.min(planted_weights(vectors))

    starts = jax.random.split(jax.random.key(0), restarts)
    return float(jnp.max(jax.jit(jax.vmap(solve))(starts)))


def train_calibration(
    problem: PlantedTaps,
    method: str,
    *,
    steps: int,
    seed: int,
    learning_rate: float = 3e-3,
    eval_every: int = 25,
    eval_batches: int = 4,
    attention_scale: float = 1.0,
    learn_attention_scale: bool = False,
) -> dict:
    """Train only the calibration module on fresh planted batches; track planted attention.

    ``attention_scale`` / ``learn_attention_scale`` are the :class:`Calibration` options
    (docs/method.md §7.1); a learned scale's final value is returned as ``scale``.

    Returns a dict with ``history`` (``[(step, planted (T, S))]``, every ``eval_every``
    steps and at 0), ``start`` and ``end`` attention ``(T', E*B, S, K)`` on the E
    held-out batches, the held-out regression ``errors`` per pair ``(T', S, K)`` at
    the end, the last training ``loss`` and the training ``seconds`` (compilation
    excluded).
    """
    problem_key, init_key, train_key, eval_key = jax.random.split(jax.random.key(seed), 4)
    sample = make_tap_sampler(problem, problem_key)
    held_out = [sample(key) for key in jax.random.split(eval_key, eval_batches)]
    scale_options = dict(
        attention_scale=attention_scale, learn_attention_scale=learn_attention_scale
    )
    module = calibration_module(*held_out[0], method=method, **scale_options)
    params = init_calibration(init_key, *held_out[0], method=method, **scale_options)["params"]
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    def loss_fn(params, student, teacher):
        return calibration_loss(
            {"params": params}, student, teacher, method=method, **scale_options
        )

    @jax.jit
    def train_step(params, opt_state, key):
        student, teacher = sample(key)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, student, teacher)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def attention_and_errors(params, student, teacher):
        attention = loss_fn(params, student, teacher)[1]
        errors = module.apply({"params": params}, student, teacher, method=Calibration.pair_errors)
        return attention, errors

    def evaluate(params):
        results = [attention_and_errors(params, *batch) for batch in held_out]
        attention = np.concatenate([np.asarray(a) for a, _ in results], axis=1)
        errors = np.concatenate([np.asarray(e) for _, e in results], axis=1)
        return attention, errors.mean(axis=1)

    start, _ = evaluate(params)
    history = [(0, planted_attention(start, problem.pairing))]
    jax.block_until_ready(train_step(params, opt_state, train_key))  # compile outside the clock
    began = time.perf_counter()
    for step in range(1, steps + 1):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(train_key, step))
        if step % eval_every == 0 or step == steps:
            history.append((step, planted_attention(evaluate(params)[0], problem.pairing)))
    seconds = time.perf_counter() - began
    end, errors = evaluate(params)
    return {
        "history": history,
        "start": start,
        "end": end,
        "errors": errors,
        "loss": float(loss),
        "seconds": seconds,
        "scale": float(np.exp(params["log_scale"])) if "log_scale" in params else attention_scale,
    }


def first_step_above(history: Sequence[tuple[int, np.ndarray]], level: float) -> np.ndarray:
    """Per (t, student tap): the first evaluated step whose planted attention is >= level, or -1."""
    first = np.full(history[0][1].shape, -1)
    for step, planted in history:
        first = np.where((first < 0) & (planted >= level), step, first)
    return first


def run_check(
    problem: PlantedTaps,
    *,
    steps: int,
    seeds: Sequence[int],
    methods: Sequence[str] = ("sastc", "spatial"),
    level: float = 0.7,
    learning_rate: float = 3e-3,
    attention_scale: float = 1.0,
    learn_attention_scale: bool = False,
) -> dict:
    """Train every method on every seed; summarise planted attention against chance and ceiling.

    Returns a JSON-ready dict: the set-up, ``chance`` (1/K), ``ceiling``
    (:func:`attention_ceiling`), and per method per seed the planted attention at the
    start and end ``(T, S)``, the first step at or above ``level``, the end regression
    errors ``(T', S, K)``, the planted attention history, the seconds and the final
    attention ``scale``; plus
    ``attention`` (seed ``seeds[0]``'s start and end arrays, for the figure; not JSON).
    """
    num_teacher = len(problem.teacher_shapes)
    summary = {
        "problem": dataclasses.asdict(problem),
        "steps": steps,
        "learning_rate": learning_rate,
        "level": level,
        "chance": 1.0 / num_teacher,
        "ceiling": attention_ceiling(problem.pairing, num_teacher, scale=attention_scale),
        "attention_scale": attention_scale,
        "learn_attention_scale": learn_attention_scale,
        "methods": {},
    }
    attention = {}
    for method in methods:
        runs = []
        for seed in seeds:
            result = train_calibration(
                problem,
                method,
                steps=steps,
                seed=seed,
                learning_rate=learning_rate,
                attention_scale=attention_scale,
                learn_attention_scale=learn_attention_scale,
            )
            runs.append(
                {
                    "seed": seed,
                    "start": planted_attention(result["start"], problem.pairing).tolist(),
                    "end": planted_attention(result["end"], problem.pairing).tolist(),
                    "first_step_above_level": first_step_above(result["history"], level).tolist(),
                    "errors": result["errors"].tolist(),
                    "history": [[step, planted.tolist()] for step, planted in result["history"]],
                    "seconds": result["seconds"],
                    "scale": result["scale"],
                }
            )
            if seed == seeds[0]:
                attention[method] = (result["start"], result["end"])
        summary["methods"][method] = runs
    return summary | {"attention": attention}


def format_report(summary: dict) -> str:
    """Planted attention per (t, student tap) and method: mean (min) over seeds, first steps."""
    pairing = summary["problem"]["pairing"]
    methods = summary["methods"]
    ceiling = summary["ceiling"]
    scale = summary.get("attention_scale", 1.0)
    scale_text = f"attention scale {scale:g}" + (
        " (learned from there)" if summary.get("learn_attention_scale") else ""
    )
    lines = [
        f"chance {summary['chance']:.3f}, ceiling for this pairing {ceiling:.3f} at "
        f"scale {scale:g}, level {summary['level']}; {scale_text}; {summary['steps']} steps, "
        f"seeds {[run['seed'] for run in next(iter(methods.values()))]}",
        "t  student  planted teacher  "
        + "  ".join(
            f"{m + ' end mean (min)':>22} {'/ ceiling':>10} {m + ' first step':>18}"
            for m in methods
        ),
    ]
    for t, row in enumerate(pairing):
        for i, j in enumerate(row):
            cells = []
            for runs in methods.values():
                ends = [run["end"][t][i] for run in runs]
                firsts = [run["first_step_above_level"][t][i] for run in runs]
                # The ceiling is that of the starting scale: no fraction for a learned one.
                learned = summary.get("learn_attention_scale")
                fraction = "" if learned else f"{np.mean(ends) / ceiling:.3f}"
                cells.append(
                    f"{np.mean(ends):>15.3f} ({min(ends):.3f}) {fraction:>10}"
                    f" {','.join(str(f) if f >= 0 else '-' for f in firsts):>18}"
                )
            lines.append(f"{t + 1:<2} {i:<8} {j:<16} " + "  ".join(cells))
    for method, runs in methods.items():
        seconds = [run["seconds"] for run in runs]
        lines.append(
            f"{method}: training seconds per seed {', '.join(f'{s:.1f}' for s in seconds)}"
        )
        if summary.get("learn_attention_scale"):
            scales = ", ".join(f"{run['scale']:.2f}" for run in runs)
            lines.append(f"{method}: learned attention scale at the end per seed {scales}")
    return "\n".join(lines)


def write_results(summary: dict, problem: PlantedTaps, output: str | Path) -> list[Path]:
    """Write ``alignment.json`` (the summary without its attention arrays) and
    ``attention.png`` (the first method's attention at the start and every method's at
    the end, planted pairs outlined) into the directory ``output``; returns both paths."""
    from sastc_jax.plots import plot_attention_panels

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    record = {key: value for key, value in summary.items() if key != "attention"}
    (output / "alignment.json").write_text(json.dumps(record, indent=1))
    first = next(iter(summary["attention"]))
    panels = {f"{first} start": summary["attention"][first][0]}
    panels |= {f"{method} end": ends[1] for method, ends in summary["attention"].items()}
    figure = plot_attention_panels(panels, output / "attention.png", problem.pairing)
    return [output / "alignment.json", Path(figure)]
