"""Which examples each host reads, batch by batch, in every epoch.

Training: one global permutation of the split per epoch, a pure function of (seed, epoch),
cut into global batches of batch_size * process_count examples (the last incomplete one is
dropped); in global batch k, host p takes the p-th slice of batch_size examples. The global
batches, and the number of steps, are therefore the same for every process count: every
host runs the same number of steps, and a run resumed on another number of hosts (or a
single-process run) sees exactly the same global batches.

Evaluation: fixed order; host p takes its contiguous part of the split (sizes differ by at
most one) and pads it with masked copies of an example up to `eval_steps * batch_size`, so
every host yields the same number of batches and every example appears exactly once with
mask True across all hosts.
"""

from __future__ import annotations

import numpy as np

_MASK63 = (1 << 63) - 1


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Global shuffle of the split for `epoch`: int64 permutation of range(num_examples)."""
    rng = np.random.default_rng([seed & _MASK63, epoch & _MASK63, 0x5A57C])
    return rng.permutation(num_examples).astype(np.int64)


def train_steps(num_examples: int, batch_size: int, process_count: int) -> int:
    """Batches per epoch on every host: num_examples // (batch_size * process_count)."""
    return num_examples // (batch_size * process_count)


def eval_host_range(num_examples: int, process_index: int, process_count: int) -> range:
    """The contiguous part of the split evaluated by one host."""
    start = num_examples * process_index // process_count
    stop = num_examples * (process_index + 1) // process_count
    return range(start, stop)


def eval_steps(num_examples: int, batch_size: int, process_count: int) -> int:
    """Batches per evaluation pass on every host: ceil(largest host share / batch_size)."""
    largest = -(-num_examples // process_count)
    return max(1, -(-largest // batch_size))


def train_host_indices(
    num_examples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
    """(steps, batch_size) example indices of this host's training batches for `epoch`."""
    steps = train_steps(num_examples, batch_size, process_count)
    permutation = epoch_permutation(num_examples, seed, epoch)
    global_batches = permutation[: steps * batch_size * process_count]
    return global_batches.reshape(steps, process_count, batch_size)[:, process_index]


def eval_host_indices(
    num_examples: int, batch_size: int, process_index: int, process_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, batch_size) example indices and bool mask of this host's evaluation batches.

    Padding slots repeat example 0 (any valid index) and carry mask False.
    """
    steps = eval_steps(num_examples, batch_size, process_count)
    own = eval_host_range(num_examples, process_index, process_count)
    indices = np.zeros(steps * batch_size, dtype=np.int64)
    mask = np.zeros(steps * batch_size, dtype=bool)
    indices[: len(own)] = np.arange(own.start, own.stop)
    mask[: len(own)] = True
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)
