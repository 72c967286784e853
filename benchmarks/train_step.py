"""Time the project's real training step: ResNet-19 ANN teacher -> ResNet-19 SNN student.

The step is the one ``train.py`` runs (``step.make_train_step`` over the objective of
``train.build_distillation``): teacher forward, student forward and backward, gradient
averaging, the SGD update (lr 0.01, momentum 0.9, weight decay 5e-4, beta 800) and the
batch-norm state, jitted over a one-device mesh, on CIFAR shapes (32x32x3, 10 classes)
with random data. After ``--warmup`` steps, ``--steps`` steps are timed; one JSON line
(``--json``) or a short text line is printed:

    python benchmarks/train_step.py --method sastc --batch 64 --time-steps 2 --json

``model_flops_per_second`` is XLA's own cost analysis of the compiled step divided by the
step time. ``peak_rss_bytes`` is the process's peak resident memory (compilation included);
``cpu_seconds_per_step`` the process's CPU time per step (all threads: on a shared machine
a steadier measure of the work than the wall-clock time).

``--loop`` also runs the real training loop (``train.run_stage``: the input pipeline on
mock CIFAR-10 data, sharding, the one-step-late metrics, the progress bar) for
``--warmup + --steps`` steps after the isolated timing, and adds
``loop_images_per_second`` (over the steps after the warm-up, from the times at which
the loop wrote each step's metrics) and ``loop_to_step_ratio``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from sastc_jax import configuration, metrics, parallel, train
from sastc_jax.train import step as step_lib

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)


def benchmark_config(method: str, batch: int, time_steps: int, dtype: str, remat: bool):
    """The release's CIFAR-10 ResNet-19 pair at this method, batch, T and dtype."""
    config: ml_collections.ConfigDict = configuration.base_config()
    config.method, config.time_steps, config.dtype = method, time_steps, dtype
    config.remat = remat
    config.student.optimizer.batch_size = batch
    configuration.validate(config, device_count=jax.device_count())
    return config


def build_step(config: ml_collections.ConfigDict, batch: int):
    """``(student, train_step, state, frozen, batch_data)`` placed on a one-device mesh."""
    mesh = parallel.make_mesh()
    sample = np.zeros((batch, *IMAGE_SHAPE), np.float32)
    parts = train.build_distillation(config, NUM_CLASSES, sample)
    key_student, key_teacher, key_calibration = jax.random.split(jax.random.key(0), 3)
    variables = train.init_variables(parts.student, key_student, sample, mesh)
    params = {"student": variables["params"]}
    if parts.calibrator is not None:
        params["calibration"] = parallel.replicate(parts.init_calibration(key_calibration), mesh)
    frozen = {}
    if parts.teacher is not None:
        frozen = train.init_variables(parts.teacher, key_teacher, sample, mesh)
    tx, schedule = step_lib.make_optimizer(config.student.optimizer, steps_per_epoch=1000)
    state = train.new_state(params, variables["batch_stats"], tx, mesh)
    rng = np.random.default_rng(0)
    batch_data = parallel.shard_batch(
        {
            "image": rng.normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32),
            "mask": np.ones(batch, bool),  # as the input pipeline's batches
        },
        mesh,
    )
    train_step = step_lib.make_train_step(parts.objective, tx, schedule, mesh)
    return parts.student, train_step, state, frozen, batch_data


def measure(
    method: str,
    batch: int,
    time_steps: int,
    dtype: str = "float32",
    remat: bool = False,
    steps: int = 3,
    warmup: int = 1,
    loop: bool = False,
) -> dict:
    """Compile, warm up and time the training step (and the loop); returns the JSON record."""
    config = benchmark_config(method, batch, time_steps, dtype, remat)
    student, train_step, state, frozen, batch_data = build_step(config, batch)
    start = time.perf_counter()
    compiled = train_step.lower(state, frozen, batch_data).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    for _ in range(warmup):
        state, metrics = compiled(state, frozen, batch_data)
    jax.block_until_ready(state)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        state, metrics = compiled(state, frozen, batch_data)
    jax.block_until_ready(state)
    step_seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu_start) / steps
    record = {
        "implementation": "sastc-jax",
        "method": method,
        "batch": batch,
        "time_steps": time_steps,
        "dtype": dtype,
        "remat": remat,
        "steps": steps,
        "step_seconds": step_seconds,
        "images_per_second": batch / step_seconds,
        "cpu_seconds_per_step": cpu_seconds,
        "compile_seconds": compile_seconds,
        "model_flops": flops,
        "model_flops_per_second": flops / step_seconds,
        "loss": float(metrics["loss"]),
        "device": jax.devices()[0].device_kind,
    }
    if jax.default_backend() == "cpu":
        record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        stats = jax.devices()[0].memory_stats() or {}
        record["peak_device_bytes"] = stats.get("peak_bytes_in_use")
    if loop:
        record["loop_images_per_second"] = measure_loop(
            config, student, compiled, state, frozen, steps, max(warmup, 1)
        )
        record["loop_to_step_ratio"] = (
            record["loop_images_per_second"] / record["images_per_second"]
        )
    return record


class TimedLogger(metrics.MetricsLogger):
    """A metrics logger that notes when each training step's record was written."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, progress_bars=False)
        self.step_times: dict[int, float] = {}

    def write(self, record: dict) -> None:
        if record.get("split") == "train":
            self.step_times[record["step"]] = time.perf_counter()
        super().write(record)


def measure_loop(config, student, train_step, state, frozen, steps: int, warmup: int) -> float:
    """Images/s of ``train.run_stage`` on mock CIFAR-10 over the steps after ``warmup``.

    A step's record is written when the loop reads its metrics (one step late, after
    the next step was dispatched), so the interval between two records is the loop's
    time per step, input pipeline and host work included. ``state`` restarts at step 0.
    """
    import tensorflow_datasets as tfds

    batch = config.student.optimizer.batch_size
    total = warmup + steps
    config.max_steps_per_epoch, config.log_every_steps = total, 1
    config.checkpoint_every_steps = 10 * total
    config.student.optimizer.epochs = 1
    mesh = parallel.make_mesh()
    state = state.replace(step=parallel.replicate(np.zeros((), np.int32), mesh))
    with tfds.testing.mock_data(num_examples=batch * (total + 1)):
        train_data, validation_data, eval_data = train.load_datasets(config, "student", mesh)
        stage = train.Stage(
            name="student",
            model=student,
            train_data=train_data,
            eval_data=eval_data,
            validation_data=validation_data,
            optim=config.student.optimizer,
            state=state,
            frozen=frozen,
            train_step=train_step,
            eval_step=step_lib.make_eval_step(student, mesh),
            record={"model": config.student.model},
        )
        with tempfile.TemporaryDirectory() as workdir:
            logger = TimedLogger(Path(workdir))
            train.run_stage(stage, config, Path(workdir), mesh, logger)
    times = logger.step_times
    return steps * batch / (times[total] - times[warmup])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="sastc", choices=["ce", "kd", "sastc"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time-steps", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=list(configuration.DTYPES))
    parser.add_argument("--remat", action="store_true", help="set config.remat")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--loop", action="store_true", help="also time the real training loop")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    record = measure(
        args.method,
        args.batch,
        args.time_steps,
        args.dtype,
        args.remat,
        args.steps,
        args.warmup,
        loop=args.loop,
    )
    if args.json:
        print(json.dumps(record), flush=True)
    else:
        print(
            f"{record['method']} B={args.batch} T={args.time_steps} {args.dtype}: "
            f"step {record['step_seconds']:.3f} s ({record['images_per_second']:.1f} img/s), "
            f"compile {record['compile_seconds']:.1f} s, "
            f"{record['model_flops_per_second'] / 1e9:.0f} GFLOP/s, "
            f"peak RSS {record.get('peak_rss_bytes', 0) / 2**30:.2f} GiB"
            + (f", loop {record['loop_images_per_second']:.1f} img/s" if args.loop else ""),
            file=sys.stdout,
        )


if __name__ == "__main__":
    main()
