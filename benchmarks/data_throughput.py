"""Throughput of the Fashion-MNIST training iterator (local IDX files, with augmentation).

    python benchmarks/data_throughput.py [--data_dir DIR] [--epochs 2] [--threads 0 1 2]

Prints images/s for per-host batches of 128 and 256: full epochs of pad-and-crop + flip +
normalisation, batches delivered as float32 NumPy arrays (what the trainer receives).
`--threads 0` prepares batches on the consuming thread; N > 0 uses N grain threads.
"""

from __future__ import annotations

import argparse
import time

from sastc_jax import data


def images_per_second(batch_size: int, epochs: int, threads: int, data_dir: str | None) -> float:
    """Images/s over `epochs` full training epochs (dataset construction not timed)."""
    ds = data.get_dataset(
        "fashion_mnist",
        "train",
        batch_size=batch_size,
        train=True,
        seed=0,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        num_devices=1,
        num_threads=threads,
    )
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in ds.epoch(epoch):
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="IDX directory (default: Debian's)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    print("Fashion-MNIST train iterator, augmentation on (pad-crop + flip + normalise)")
    for threads in args.threads:
        for batch_size in args.batch_sizes:
            rate = images_per_second(batch_size, args.epochs, threads, args.data_dir)
            print(f"batch {batch_size:4d}  threads {threads}: {rate:10,.0f} images/s")


if __name__ == "__main__":
    main()
