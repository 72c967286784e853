"""``python -m sastc_jax.experiments.alignment_check [--steps=N] [--seed=0,1,2] ...``:
the planted-alignment experiment (:mod:`sastc_jax.experiments.alignment_check`). Prints the report;
with ``--output``, writes ``alignment.json`` and ``attention.png`` into that directory.
Flags of its own: ``--steps``, ``--seed``, ``--method``, ``--learning-rate``,
``--attention-scale``, ``--learn-attention-scale``, ``--threshold``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from absl import app, flags

from sastc_jax.cli import flags as shared
from sastc_jax.experiments import alignment_check

METHODS = ("sastc", "spatial")

STEPS = flags.DEFINE_integer("steps", 600, "Training steps per run (>= 1).", lower_bound=1)
SEEDS = flags.DEFINE(
    shared.NumberListParser(int),
    "seed",
    [0, 1, 2],
    "Seeds to run, comma-separated.",
    serializer=flags.CsvListSerializer(","),
)
METHOD = flags.DEFINE_list(
    "method", list(METHODS), f"Methods to train, comma-separated: of {', '.join(METHODS)}."
)
flags.register_validator(
    METHOD.name,
    lambda methods: bool(methods) and set(methods) <= set(METHODS),
    message=f"--method takes a comma-separated subset of {', '.join(METHODS)}.",
)
LEARNING_RATE = flags.DEFINE_float("learning-rate", 3e-3, "Adam's learning rate (> 0).")
ATTENTION_SCALE = flags.DEFINE_float(
    "attention-scale",
    1.0,
    "Attention logits scale * <q, k> (docs/method.md §7.1; 1 = the paper; > 0).",
)
flags.register_validator(
    LEARNING_RATE.name, lambda value: value > 0, message="--learning-rate must be > 0."
)
flags.register_validator(
    ATTENTION_SCALE.name, lambda value: value > 0, message="--attention-scale must be > 0."
)
LEARN_ATTENTION_SCALE = flags.DEFINE_bool(
    "learn-attention-scale",
    False,
    "Learn the scale (log-parametrised), starting at --attention-scale.",
)
THRESHOLD = flags.DEFINE(
    shared.NumberListParser(float),
    "threshold",
    None,
    "Spike threshold per planted teacher tap: one value for all, or one per teacher tap "
    "(comma-separated); unset = the problem's defaults.",
    serializer=flags.CsvListSerializer(","),
)


def problem_from_flags() -> alignment_check.PlantedTaps:
    """The planted problem, with ``--threshold`` applied."""
    problem = alignment_check.PlantedTaps()
    if THRESHOLD.value is None:
        return problem
    count = len(problem.teacher_shapes)
    if len(THRESHOLD.value) not in (1, count):
        raise app.UsageError(
            f"--threshold takes 1 or {count} values (one per teacher tap); got "
            f"{len(THRESHOLD.value)}: {THRESHOLD.value}",
            exitcode=shared.USAGE_ERROR,
        )
    thresholds = THRESHOLD.value * (count if len(THRESHOLD.value) == 1 else 1)
    return dataclasses.replace(problem, threshold=tuple(thresholds))


def check() -> dict:
    """Run the experiment the parsed flags describe, print the report, write ``--output``;
    returns :func:`sastc_jax.experiments.alignment_check.run_check`'s summary."""
    problem = problem_from_flags()
    summary = alignment_check.run_check(
        problem,
        steps=STEPS.value,
        seeds=SEEDS.value,
        methods=METHOD.value,
        learning_rate=LEARNING_RATE.value,
        attention_scale=ATTENTION_SCALE.value,
        learn_attention_scale=LEARN_ATTENTION_SCALE.value,
    )
    print(alignment_check.format_report(summary))
    if shared.OUTPUT.value:
        record, figure = alignment_check.write_results(summary, problem, shared.OUTPUT.value)
        print(f"wrote {record} and {figure}")
    return summary


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    shared.check_positional(argv)
    check()
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(
        main,
        [
            STEPS,
            SEEDS,
            shared.OUTPUT,
            METHOD,
            LEARNING_RATE,
            ATTENTION_SCALE,
            LEARN_ATTENTION_SCALE,
            THRESHOLD,
        ],
        __doc__,
    )
