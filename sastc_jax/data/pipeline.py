"""The per-split dataset object the trainer iterates, epoch by epoch.

A :class:`Dataset` combines a :class:`BatchLoader` (which turns example indices into a
normalised float32 batch) with the sharding plan of :mod:`sastc_jax.data.sharding`, and runs
the loader on grain's thread pool so batches are prepared ahead of the training step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import grain
import numpy as np

from sastc_jax.data import sharding
from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.errors import BatchLargerThanSplitError


class BatchLoader(Protocol):
    """Turns example indices of one split into a batch.

    `load(indices, rng)` returns float32 images (B, *input_shape) and int32 labels (B,);
    `rng` is None when no augmentation is wanted (evaluation, or augment=False).
    """

    num_examples: int
    input_shape: tuple[int, ...]

    def load(
        self, indices: np.ndarray, rng: ExampleRandom | None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class Dataset:
    """One split of one dataset, sharded for this host.

    Attributes:
      num_examples: examples in the whole split (all hosts together).
      num_classes: number of label classes.
      input_shape: per-example shape of `batch['image']` (without the batch axis).
      steps_per_epoch: batches per epoch, the same on every host. Training:
        num_examples // (batch_size * process_count). Evaluation:
        ceil(ceil(num_examples / process_count) / batch_size).
      bad_examples: the :class:`~sastc_jax.data.bad_examples.BadExamples` that replaces
        undecodable examples of `loader` (policy 'skip'), or None (policy 'error').
    """

    def __init__(
        self,
        loader: BatchLoader,
        *,
        name: str,
        split: str,
        num_classes: int,
        batch_size: int,
        seed: int,
        train: bool,
        augment: bool,
        process_index: int,
        process_count: int,
        num_threads: int,
        prefetch: int,
        bad_examples: Any = None,
    ):
        self.loader = loader
        self.bad_examples = bad_examples
        self.name = name
        self.split = split
        self.num_classes = num_classes
        self.num_examples = loader.num_examples
        self.input_shape = tuple(loader.input_shape)
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.augment = augment
        self.process_index = process_index
        self.process_count = process_count
        self.num_threads = num_threads
        self.prefetch = prefetch
        if train:
            self.steps_per_epoch = sharding.train_steps(
                self.num_examples, batch_size, process_count
            )
            if self.steps_per_epoch == 0:
                raise BatchLargerThanSplitError(
                    f"{name}/{split}: {self.num_examples} examples give each of "
                    f"{process_count} host(s) {self.num_examples // process_count}, fewer than "
                    f"one training batch of {batch_size}. Lower the batch size."
                )
        else:
            self.steps_per_epoch = sharding.eval_steps(self.num_examples, batch_size, process_count)

    def host_indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps_per_epoch, batch_size) example indices and mask this host reads in `epoch`."""
        if self.train:
            indices = sharding.train_host_indices(
                self.num_examples,
                self.batch_size,
                self.seed,
                epoch,
                self.process_index,
                self.process_count,
            )
            return indices, np.ones(indices.shape, dtype=bool)
        return sharding.eval_host_indices(
            self.num_examples, self.batch_size, self.process_index, self.process_count
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `epoch`, from batch `start_step` on (skipped batches cost nothing).

        Each batch: {'image': float32 (B, *input_shape), 'label': int32 (B,),
        'mask': bool (B,)}; the mask is all True in training. The order and the
        augmentation depend only on (seed, epoch), never on `start_step`.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(
                f"start_step must be in [0, {self.steps_per_epoch}] for {self.name}/{self.split}, "
                f"got {start_step}."
            )
        indices, mask = self.host_indices(epoch)
        rng = ExampleRandom(self.seed, epoch) if (self.train and self.augment) else None

        def make_batch(step: int) -> dict[str, np.ndarray]:
            if self.bad_examples is None:
                images, labels = self.loader.load(indices[step], rng)
            else:
                images, labels = self.bad_examples.load(indices[step], rng, epoch=epoch, batch=step)
            return {"image": images, "label": labels, "mask": mask[step].copy()}

        steps = grain.MapDataset.range(start_step, self.steps_per_epoch).map(make_batch)
        options = grain.ReadOptions(
            num_threads=self.num_threads, prefetch_buffer_size=max(1, self.prefetch)
        )
        return iter(steps.to_iter_dataset(options))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name}/{self.split}, n={self.num_examples}, "
            f"classes={self.num_classes}, input_shape={self.input_shape}, "
            f"batch={self.batch_size}, steps={self.steps_per_epoch}, train={self.train}, "
            f"host={self.process_index}/{self.process_count})"
        )
