"""A fixed validation split carved out of a dataset's training split.

    held_out = validation_indices(labels, fraction=0.1)   # sorted example indices
    train_part = Subset(loader, np.setdiff1d(np.arange(len(labels)), held_out))

The split is class-balanced (``round(fraction * n_c)`` examples of every class ``c``)
and depends only on the labels and the fraction, never on the run's seed: every seed,
method and sweep of an experiment selects on the same examples, and never trains on them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.pipeline import BatchLoader

# Fixed on purpose: the validation split must not move with config.seed.
VALIDATION_SEED = 0x5A57C


def validation_indices(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the examples with these labels.

    Each class keeps ``round(fraction * count)`` of its examples (at least one when the
    class has two or more), drawn by a generator seeded with the class alone.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1); got {fraction}.")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}.")
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = round(fraction * members.size)
        if members.size >= 2:
            count = min(max(count, 1), members.size - 1)
        rng = np.random.default_rng([VALIDATION_SEED, int(label)])
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


@dataclasses.dataclass
class Subset:
    """A :class:`BatchLoader` over the examples ``indices`` of another loader.

    Example ``k`` of the subset is example ``indices[k]`` of ``loader``; augmentation
    draws stay keyed by the original index. ``labels`` are the subset's (None when the
    loader holds none in memory).
    """

    loader: BatchLoader
    indices: np.ndarray

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.num_examples = int(self.indices.size)
        self.input_shape = tuple(self.loader.input_shape)
        labels = getattr(self.loader, "labels", None)
        self.labels = None if labels is None else np.asarray(labels)[self.indices]

    def load(self, indices: np.ndarray, rng: ExampleRandom | None) -> tuple[np.ndarray, np.ndarray]:
        return self.loader.load(self.indices[np.asarray(indices)], rng)


def split_off_validation(loader: BatchLoader, fraction: float, part: str) -> Subset:
    """The ``'train'`` (remaining) or ``'validation'`` (held-out) part of a training loader.

    The loader must expose its ``labels`` (in-memory image datasets and framed DVS
    datasets do); others raise ``ValueError``.
    """
    labels = getattr(loader, "labels", None)
    if labels is None:
        raise ValueError(
            f"A validation split needs the labels of the whole training split, which "
            f"{type(loader).__name__} does not hold in memory; set "
            "config.dataset.validation_fraction = 0 for this dataset."
        )
    held_out = validation_indices(labels, fraction)
    if part == "validation":
        return Subset(loader, held_out)
    if part == "train":
        return Subset(loader, np.setdiff1d(np.arange(len(labels)), held_out))
    raise ValueError(f"part must be 'train' or 'validation'; got {part!r}.")
