"""Cost of checkpoint integrity on the ResNet-19 SASTC student state (CIFAR-10, T=2).

The state is what the distill stage saves: student and calibration parameters, batch
statistics and the SGD momentum. Times, as medians over ``--repeats`` saves and restores
into a fresh directory (``--dir``, default the system temporary directory):

- save: ``Checkpoints.save`` until it returns (arrays copied off the devices), and until
  ``wait_until_finished`` (written by orbax, then checksummed);
- checksum: ``write_checksums`` alone on the committed step (SHA-256 of its files);
- restore: ``Checkpoints.restore`` (verify, orbax restore, finite check), with
  ``verify_checksums`` and ``nonfinite_leaves`` alone.

    python benchmarks/checkpoint_overhead.py [--repeats 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from sastc_jax import checkpoints, configuration, parallel, train
from sastc_jax.train import step as step_lib


def student_state():
    config = configuration.base_config()  # ResNet-19 SNN student, SASTC, T=2
    sample = np.zeros((config.student.optimizer.batch_size, 32, 32, 3), np.float32)
    parts = train.build_distillation(config, num_classes=10, sample=sample)
    mesh = parallel.make_mesh()
    rng_student, rng_calibration = jax.random.split(jax.random.key(0))
    variables = train.init_variables(parts.student, rng_student, sample, mesh)
    params = {
        "student": variables["params"],
        "calibration": parts.init_calibration(rng_calibration),
    }
    tx, _ = step_lib.make_optimizer(config.student.optimizer, steps_per_epoch=390)
    state = train.new_state(params, variables["batch_stats"], tx, mesh)
    # One non-zero momentum, as after training (zeros would compress to nothing).
    noise = jax.tree.map(
        lambda x: x + 1e-3 * jax.random.normal(jax.random.key(1), x.shape), state.opt_state
    )
    return train.portable(state.replace(opt_state=noise), mesh), mesh


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    jax.block_until_ready(result)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    state, _ = student_state()
    leaves = jax.tree.leaves(state)
    params = sum(x.size for x in jax.tree.leaves(state.params["student"]))
    megabytes = sum(x.size * x.dtype.itemsize for x in leaves) / 2**20
    print(
        f"state: {params / 1e6:.1f}M student parameters, {len(leaves)} arrays, {megabytes:.0f} MiB"
    )
    times: dict[str, list[float]] = collections.defaultdict(list)
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as directory,
        checkpoints.Checkpoints(directory, max_to_keep=2) as ckpts,
    ):
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()
            ckpts.save(step, state, metadata={"step": step})
            times["save returns"].append(time.perf_counter() - start)
            ckpts.wait_until_finished()
            times["save written + checksummed"].append(time.perf_counter() - start)
            step_dir = Path(directory) / "latest" / str(step)
            times["write_checksums"].append(timed(checkpoints.write_checksums, step_dir)[0])
            times["verify_checksums"].append(timed(checkpoints.verify_checksums, step_dir)[0])
            seconds, (restored, _) = timed(ckpts.restore, state, step)
            times["restore (verify + orbax + finite)"].append(seconds)
            times["nonfinite_leaves"].append(timed(checkpoints.nonfinite_leaves, restored)[0])
        on_disk = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file()) / 2**20
    print(f"step directory: {on_disk:.0f} MiB on disk; medians of {args.repeats}:")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"  {name:<36} {value * 1e3:8.1f} ms")
    checksum = median["write_checksums"]
    write = median["save written + checksummed"] - checksum
    checks = median["verify_checksums"] + median["nonfinite_leaves"]
    read = median["restore (verify + orbax + finite)"] - checks
    print(f"save overhead: {checksum * 1e3:.0f} ms = {checksum / write:.0%} of orbax's write")
    print(f"restore overhead: {checks * 1e3:.0f} ms = {checks / read:.0%} of orbax's restore")


if __name__ == "__main__":
    main()
