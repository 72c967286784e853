"""Check a dataset before training: ``python -m sastc_jax.data verify --config=configs/X.py``
(the command line is :mod:`sastc_jax.cli.data`).

Every split the config's dataset has ('train' and 'test'; 'validation' is a share of
'train') is read the way the trainer reads it (same reader, data_dir and source, e.g.
``--config.dataset.data_dir=DIR``):

- the ImageNet image folder: every file is decoded in full by a thread pool (Pillow
  releases the GIL while decoding), with a progress bar;
- TFDS ImageNet: every record is read and decoded the same way;
- the array readers (CIFAR python archives, IDX files, TFDS CIFAR / Fashion-MNIST,
  framed DVS): the split is loaded, which runs the readers' own checks (sizes, shapes,
  label ranges); a failure is one entry naming what the reader said.

The bad examples are written one JSON object per line (split, index, path, class, reason)
to ``--output`` (default ``bad_files.jsonl`` in the current directory; written, empty,
also when there are none) and summarised on stdout. Exit status: 0 when nothing is bad,
1 when something is, 2 for a usage or config error.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tqdm

from sastc_jax.data.errors import DatasetNotFoundError

VERIFIED_SPLITS = ("train", "test")
DEFAULT_OUTPUT = "bad_files.jsonl"
_CHUNK = 1024  # examples handed to the pool at a time (bounds the pending futures)


def _ordered_map(
    check: Callable[[Any], str | None], items: Sequence, threads: int, progress: Any
) -> Iterator[tuple[int, str | None]]:
    """(position, check(item)) for every item, in order, `threads` at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            for offset, result in enumerate(pool.map(check, chunk)):
                yield start + offset, result
            progress.update(len(chunk))


def _check_record(source: Any) -> Callable[[int], str | None]:
    def check(index: int) -> str | None:
        try:
            record = source[index]
            image = np.asarray(record["image"])
            int(record["label"])
        # Whatever TFDS's decoder raises for a damaged record: this tool reports, never stops.
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        if image.ndim not in (2, 3) or image.size == 0:
            return f"decoded image has shape {image.shape}, not (H, W[, C])"
        return None

    return check


def verify_split(
    config: Any, split: str, *, threads: int, progress_bar: bool = True
) -> dict[str, Any]:
    """Check one split: {'split', 'checked' (examples), 'bad' (list of records), 'seconds'}."""
    from sastc_jax import data
    from sastc_jax.data import image_folder, static

    start = time.perf_counter()
    dataset_config = config.dataset
    try:
        dataset = data.get_dataset(
            dataset_config.name,
            split,
            batch_size=1,
            train=False,
            time_steps=config.time_steps,
            data_dir=dataset_config.data_dir or None,
            source=dataset_config.source,
            process_index=0,
            process_count=1,
            num_devices=1,
            image_size=dataset_config.image_size or None,
            num_threads=0,
        )
    # DatasetNotFoundError is an OSError; EOFError is a gzip file cut short.
    except (ValueError, OSError, EOFError, ImportError) as error:
        what = "not found" if isinstance(error, DatasetNotFoundError) else "unreadable"
        # A damaged file (DataFileError) or a missing one names its path.
        path = getattr(error, "path", None) or getattr(error, "filename", None)
        bad = {"split": split, "index": None, "path": path, "class": None}
        bad["reason"] = f"split {what}: {type(error).__name__}: {error}"
        return {"split": split, "checked": 0, "bad": [bad], "seconds": time.perf_counter() - start}

    loader = dataset.loader
    bad = []
    if isinstance(loader, image_folder.ImageFolderLoader | static.ImageNetLoader):
        folder = isinstance(loader, image_folder.ImageFolderLoader)
        if folder:
            items = [os.path.join(loader.split_dir, path) for path in loader.paths]
            check = image_folder.check_image
        else:
            items, check = range(loader.num_examples), _check_record(loader.source)
        bar = tqdm.tqdm(
            total=len(items),
            desc=f"verify {dataset_config.name}/{split}",
            unit="img",
            file=sys.stderr,
            disable=not progress_bar,
            dynamic_ncols=True,
        )
        with bar:
            for index, reason in _ordered_map(check, items, threads, bar):
                if reason is not None:
                    label = int(loader.labels[index]) if folder else None
                    bad.append(
                        {
                            "split": split,
                            "index": index,
                            "path": items[index] if folder else None,
                            "class": loader.classes[label] if folder else None,
                            "reason": reason,
                        }
                    )
    return {
        "split": split,
        "checked": dataset.num_examples,
        "bad": bad,
        "seconds": time.perf_counter() - start,
    }


def verify_dataset(config: Any, *, output: str, threads: int, progress_bar: bool = True) -> int:
    """Verify every split of :data:`VERIFIED_SPLITS` of ``config``'s dataset, write the bad
    examples to ``output`` (JSON lines; empty when none) and print a summary; returns the
    number of bad examples."""
    reports = [
        verify_split(config, split, threads=threads, progress_bar=progress_bar)
        for split in VERIFIED_SPLITS
    ]
    bad = [record for report in reports for record in report["bad"]]
    with open(output, "w") as stream:
        for record in bad:
            stream.write(json.dumps(record) + "\n")
    where = config.dataset.data_dir or "its default location"
    print(f"{config.dataset.name} ({config.dataset.source}) at {where}:")
    for report in reports:
        print(
            f"  {report['split']}: {report['checked']} examples checked, "
            f"{len(report['bad'])} bad ({report['seconds']:.1f} s)"
        )
    for record in bad[:20]:
        print(f"  bad: {record['path'] or record['split']}: {record['reason']}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    print(f"{len(bad)} bad; listed in {output}" if bad else "no bad examples.")
    return len(bad)
