"""Decoded-and-augmented ImageNet images per second per core from an image folder.

    python benchmarks/image_folder_throughput.py [--images 512] [--threads 0 2]

Writes a temporary ImageFolder tree of 500x375 JPEGs (quality 90; a smooth random colour
field plus pixel noise, about 80 KB a file), then runs whole epochs of the training
iterator (random-resized crop 224 + flip + normalisation, float32 batches of 64) and of
the evaluation iterator (resize 256 + centre crop 224). Reported per setting: images/s
(wall clock), the process's CPU seconds, and images per CPU second = images/s per core
(the figure that does not depend on other load of a shared machine).
`--threads 0` builds batches on the consuming thread; N > 0 uses N grain threads.
`--compare_processes N` also times the training batches built by N grain threads against
N grain worker processes (`mp_prefetch`), wall clock after the first batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import grain
import numpy as np
from PIL import Image

from sastc_jax import data
from sastc_jax.data.augment import ExampleRandom


def write_tree(root: str, images: int, classes: int = 4, seed: int = 0) -> None:
    """`images` JPEGs of 500x375 spread over `classes` class folders, in train/ and val/."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            os.makedirs(os.path.join(root, split, f"class_{c}"))
    for i in range(images):
        field = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        pixels = np.asarray(field.resize((500, 375), Image.Resampling.BICUBIC), np.int16)
        pixels = pixels + rng.integers(-20, 21, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        for split in ("train", "val"):
            path = os.path.join(root, split, f"class_{i % classes}", f"{i:06d}.jpg")
            image.save(path, "JPEG", quality=90)


def measure(root: str, train: bool, threads: int, epochs: int, batch_size: int):
    """(images, wall seconds, process CPU seconds) over `epochs` epochs."""
    ds = data.get_dataset(
        "imagenet2012",
        "train" if train else "test",
        batch_size=batch_size,
        train=train,
        data_dir=root,
        source="folder",
        process_index=0,
        process_count=1,
        num_devices=1,
        num_threads=threads,
    )
    images = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        for batch in ds.epoch(epoch):
            assert batch["image"].shape[1:] == (224, 224, 3)
            images += int(batch["mask"].sum())
    return images, time.perf_counter() - wall, time.process_time() - cpu


class TrainBatch:
    """Training batch `step` of epoch 0 (a picklable callable for grain's processes)."""

    def __init__(self, ds: data.Dataset):
        self.loader, self.indices = ds.loader, ds.host_indices(0)[0]
        self.random = ExampleRandom(ds.seed, 0)

    def __call__(self, step: int) -> np.ndarray:
        return self.loader.load(self.indices[step], self.random)[0]


def threads_or_processes(root: str, workers: int, processes: bool, batch_size: int) -> float:
    """Training images/s over one epoch after its first batch, built by `workers` grain
    threads or worker processes."""
    ds = data.get_dataset(
        "imagenet2012", "train", batch_size=batch_size, train=True, data_dir=root,
        source="folder", process_index=0, process_count=1, num_devices=1,
    )  # fmt: skip
    steps = grain.MapDataset.range(ds.steps_per_epoch).map(TrainBatch(ds))
    if processes:
        options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        mp = grain.MultiprocessingOptions(num_workers=workers)
        batches = iter(steps.to_iter_dataset(options).mp_prefetch(mp))
    else:
        options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=workers)
        batches = iter(steps.to_iter_dataset(options))
    next(batches)
    start = time.perf_counter()
    images = sum(batch.shape[0] for batch in batches)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--compare_processes", type=int, default=0, metavar="N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, args.images)
        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
        ) / (2 * args.images)
        print(
            f"{args.images} JPEGs 500x375 ({size / 1e3:.0f} KB average), batch "
            f"{args.batch_size}, {args.epochs} epochs, {os.cpu_count()} CPUs"
        )
        for train in (True, False):
            for threads in args.threads:
                images, wall, cpu = measure(root, train, threads, args.epochs, args.batch_size)
                print(
                    f"{'train (RRC 224 + flip)' if train else 'eval (256 + centre 224)':24s} "
                    f"threads {threads}: {images / wall:7.0f} images/s wall, "
                    f"{cpu:6.2f} CPU s, {images / cpu:5.0f} images/s per core"
                )
        if args.compare_processes:
            from absl import flags

            flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags
            for _ in range(2):
                for processes in (False, True):
                    rate = threads_or_processes(
                        root, args.compare_processes, processes, args.batch_size
                    )
                    kind = "processes" if processes else "threads"
                    print(f"train, {args.compare_processes} grain {kind:9s}: {rate:5.0f} images/s")


if __name__ == "__main__":
    main()
