"""The bad-examples policy: an example that cannot be decoded stops the run or is replaced.

``config.dataset.bad_examples``:

- ``'error'`` (default): the loader's :class:`UnreadableExampleError` stops the run,
  naming the file, its class and its index (no :class:`BadExamples` is made at all).
- ``'skip'``: :class:`BadExamples` replaces the example with the next one *of the same
  class* in the split's order that decodes (wrapping around inside the class), so the
  epoch keeps its length and every label its count. The substitute is a pure function of
  the files, never of the order they were met in: the same seed gives the same batches,
  also after a resume at any step. A bad example is logged once per stage and process
  (the replacement is remembered), as one JSON line of ``log_path``.

Which readers it applies to: those that decode one example at a time from its own file,
the ImageNet image folder (:mod:`sastc_jax.data.image_folder`). The array readers (CIFAR
python archives, IDX files, TFDS CIFAR / Fashion-MNIST, framed DVS) decode whole files
when the split is built; a file that fails there holds many examples and there is no
"next good one", so it stays an error under either policy. TFDS ImageNet decodes records
lazily, but an undecodable record's label is unknown (the label is in the record), so
the same-class replacement is impossible there: its failures stay errors too.

In a multi-process run each process decodes its own shard, so each writes its own log
(process 0 ``WORKDIR/bad_examples.jsonl``, process p ``bad_examples.process<p>.jsonl``:
no two hosts append to one file) and :func:`count_bad` unions the bad indices of all
processes (one all-gather of a bit mask per split) for the stage summary.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sastc_jax.data.errors import UnreadableExampleError

POLICIES = ("error", "skip")
LOG_NAME = "bad_examples.jsonl"


def check_policy(policy: str) -> None:
    """Raise ValueError unless `policy` is one of POLICIES."""
    if policy not in POLICIES:
        raise ValueError(
            f"bad_examples = {policy!r} is not a policy; allowed: 'error' (an undecodable "
            "example stops the run, naming the file) or 'skip' (it is replaced with the "
            "next good example of its class and logged to WORKDIR/bad_examples.jsonl)."
        )


def log_path(workdir: str | os.PathLike, process_index: int) -> Path:
    """This process's bad-example log in `workdir`."""
    name = LOG_NAME if process_index == 0 else f"bad_examples.process{process_index}.jsonl"
    return Path(workdir) / name


def _is_subset(loader: Any) -> bool:
    return hasattr(loader, "indices") and hasattr(loader, "loader")  # validation.Subset


def _base(loader: Any) -> Any:
    """The reader under any validation subsets."""
    while _is_subset(loader):
        loader = loader.loader
    return loader


def example_path(loader: Any, index: int) -> str | None:
    """The file of example `index` of `loader` (through validation subsets), if it has one."""
    while _is_subset(loader):
        index, loader = int(loader.indices[index]), loader.loader
    paths, split_dir = getattr(loader, "paths", None), getattr(loader, "split_dir", None)
    if paths is None or split_dir is None:
        return None
    return os.path.join(split_dir, paths[index])


class BadExamples:
    """Loads batches of `loader`, replacing examples that raise UnreadableExampleError.

    `loader` must hold its labels (`loader.labels`, int (N,)). `split` and `process_index`
    go into the log records; `log_path` (None = not written) can be set before the first
    batch. Thread-safe: grain's threads call :meth:`load` concurrently.
    """

    def __init__(
        self,
        loader: Any,
        *,
        split: str,
        process_index: int = 0,
        log_path: str | os.PathLike | None = None,
    ):
        labels = getattr(loader, "labels", None)
        if labels is None:
            raise ValueError(
                f"bad_examples='skip' replaces an example with another of its class, which "
                f"needs the split's labels; {type(loader).__name__} does not hold them."
            )
        self.loader = loader
        self.split = split
        self.process_index = process_index
        self.log_path = None if log_path is None else Path(log_path)
        self.labels = np.asarray(labels)
        order = np.argsort(self.labels, kind="stable")
        bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
        # Each class's example indices, ascending (the split's order inside the class).
        self._members = {int(self.labels[m[0]]): m for m in np.split(order, bounds) if m.size}
        self._lock = threading.Lock()
        self._substitutes: dict[int, int] = {}  # bad index -> the good example used instead
        self._bad: dict[int, dict[str, Any]] = {}  # bad index -> its log record

    @property
    def count(self) -> int:
        """Distinct bad examples met (and replaced) so far by this process."""
        with self._lock:
            return sum("substitute_index" in r for r in self._bad.values())

    @property
    def records(self) -> list[dict[str, Any]]:
        """The log records of the bad examples replaced so far, in the order they were met."""
        with self._lock:
            return [dict(r) for r in self._bad.values() if "substitute_index" in r]

    def bad_mask(self) -> np.ndarray:
        """bool (N,): True at the bad examples met (and replaced) so far."""
        mask = np.zeros(self.labels.shape[0], dtype=bool)
        with self._lock:
            mask[[i for i, r in self._bad.items() if "substitute_index" in r]] = True
        return mask

    def load(
        self, indices: np.ndarray, rng: Any, *, epoch: int | None = None, batch: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The loader's batch for `indices`, bad examples replaced; `epoch` and `batch`
        (the batch's position in the epoch) go into the log records."""
        indices = np.asarray(indices)
        with self._lock:
            known = [self._substitutes.get(int(i), int(i)) for i in indices]
        try:
            return self.loader.load(np.asarray(known, dtype=indices.dtype), rng)
        except UnreadableExampleError:
            pass  # some example of the batch is newly bad: find it one example at a time
        images, labels = [], []
        for index in known:
            image, label = self._load_one(index, rng, {"epoch": epoch, "batch": batch})
            images.append(image)
            labels.append(label)
        return np.concatenate(images), np.concatenate(labels)

    def _load_one(self, index: int, rng: Any, where: dict) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.loader.load(np.asarray([index]), rng)
        except UnreadableExampleError as error:
            self._remember_bad(index, error, where)
        members = self._members[int(self.labels[index])]
        position = int(np.searchsorted(members, index))
        # The next examples of the class after `index`, wrapping around. Each one failing
        # on the way is bad too, and the good one found is also the next good one after it.
        failed = [index]
        for candidate in np.concatenate([members[position + 1 :], members[:position]]):
            candidate = int(candidate)
            with self._lock:
                if candidate in self._bad:
                    failed.append(candidate)
                    continue
            try:
                loaded = self.loader.load(np.asarray([candidate]), rng)
            except UnreadableExampleError as error:
                self._remember_bad(candidate, error, where)
                failed.append(candidate)
                continue
            substitute_path = example_path(self.loader, candidate)
            with self._lock:
                for bad in failed:
                    self._substitutes[bad] = candidate
                    record = self._bad[bad]
                    if "substitute_index" not in record:  # not logged yet
                        record["substitute_index"] = candidate
                        record["substitute_path"] = substitute_path
                        self._write(record)
            return loaded
        first = self._bad[int(members[0])]["path"]
        label = int(self.labels[index])
        classes = getattr(_base(self.loader), "classes", None)
        name = f"{label} ({classes[label]!r})" if classes else str(label)
        raise UnreadableExampleError(
            f"All {members.size} examples of class {name} in the {self.split} split are "
            f"undecodable (e.g. {first}); bad_examples='skip' has no example of that class "
            "to use instead. Replace the files.",
            self._bad[index]["path"],
            index,
        )

    def _remember_bad(self, index: int, error: UnreadableExampleError, where: dict) -> None:
        cause = error.__cause__ or error
        path = error.path if error.path is not None else example_path(self.loader, index)
        with self._lock:
            self._bad.setdefault(
                index,
                {
                    "split": self.split,
                    **where,
                    "index": index,
                    "label": int(self.labels[index]),
                    "path": path,
                    "reason": f"{type(cause).__name__}: {cause}",
                    "process": self.process_index,
                },
            )

    def _write(self, record: dict[str, Any]) -> None:
        """Log one replaced example (called under the lock, so lines never interleave)."""
        logging.warning(
            "bad example skipped (%s split): %s (%s); using %s instead",
            record["split"],
            record["path"],
            record["reason"],
            record["substitute_path"] or f"example {record['substitute_index']}",
        )
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")


def count_bad(
    policies: Sequence[BadExamples | None],
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
) -> int:
    """Distinct bad examples met by all processes, summed over the splits of `policies`.

    `gather`: `multihost_utils.process_allgather` in a multi-process run (every process
    must call this at the same point), None in a single process.
    """
    total = 0
    for policy in policies:
        if policy is None:
            continue
        mask = policy.bad_mask()
        if gather is not None:
            packed = np.asarray(gather(np.packbits(mask)))
            mask = np.unpackbits(packed.reshape(-1, packed.shape[-1]), axis=-1, count=mask.size)
            mask = mask.any(axis=0)
        total += int(np.count_nonzero(mask))
    return total
