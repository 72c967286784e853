"""Agreement of snnTorch running the exported NIR file with our Flax student.

    python benchmarks/nir_agreement.py --workdir=DIR [--checkpoint best|final] [--limit N]

Exports the run's student (``sastc_jax.interop.nir``), loads the file with snnTorch's NIR
importer (``snntorch.import_nir.import_from_nir``, the `nir-snntorch` extra) and runs
both on the Fashion-MNIST test split. Prints the share of images with the same
prediction, the largest per-step logit difference, each side's accuracy, and for the
images whose logits differ by more than 1e-4 (a spike flipped), how close the Flax
student's nearest membrane came to the threshold there. snnTorch runs one image at a
time (see ``snntorch_logits``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np


def load_with_snntorch(path):
    """The NIR file as an snnTorch network (a torch.fx module over snnTorch Leaky neurons)."""
    import nir
    from snntorch.import_nir import import_from_nir

    return import_from_nir(nir.read(path))


def snntorch_logits(network, images: np.ndarray, time_steps: int) -> np.ndarray:
    """Per-step outputs (T, B, N) of an imported snnTorch network on images (B, H, W, C).

    snnTorch maps NIR's ``Flatten(start_dim=0)`` (whose dims are one example's) onto
    torch's batched ``Flatten(0)``, which would merge the batch into the features; so
    each image runs on its own, unbatched (C, H, W), the shape NIR describes. The Leaky
    neurons hold their membrane inside (``init_hidden=True``) and are reset per image.
    """
    import snntorch
    import torch

    leaky = [module for module in network.modules() if isinstance(module, snntorch.Leaky)]
    outputs = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small image at a time: threads only add synchronisation
    try:
        with torch.no_grad():
            for image in images.transpose(0, 3, 1, 2):
                for module in leaky:
                    module.reset_mem()
                x = torch.from_numpy(np.ascontiguousarray(image))
                outputs.append([network(x)[0].numpy() for _ in range(time_steps)])
    finally:
        torch.set_num_threads(threads)
    return np.asarray(outputs, np.float32).transpose(1, 0, 2)


def flax_logits_and_margins(model, variables, images: np.ndarray, batch: int = 500):
    """Per-step logits (T, B, N) of the Flax student and, per image, the smallest
    ``|u_t - v_th|`` over all its LIF neurons and steps (how near a spike flip it came)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from sastc_jax.models.layers import LIF
    from sastc_jax.neurons import lif

    @jax.jit
    def run(images):
        gaps = []

        def record(next_fun, args, kwargs, context):
            module = context.module
            if isinstance(module, LIF) and context.method_name == "__call__":
                _, membrane = lif(args[0], module.config, return_membrane=True)
                gap = jnp.abs(membrane - module.config.v_threshold)
                gaps.append(gap.reshape(*gap.shape[:2], -1).min(axis=(0, 2)))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            logits = model.apply(variables, images, train=False)
        return logits, jnp.stack(gaps).min(axis=0)

    logits, margins = [], []
    for start in range(0, len(images), batch):
        chunk_logits, chunk_margins = run(images[start : start + batch])
        logits.append(np.asarray(chunk_logits))
        margins.append(np.asarray(chunk_margins))
    return np.concatenate(logits, axis=1), np.concatenate(margins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", choices=("best", "final"), default="best")
    parser.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    args = parser.parse_args()

    from sastc_jax import data
    from sastc_jax.interop import nir as export

    model, variables, config, _ = export.load_student(args.workdir, args.checkpoint)
    dataset = data.get_dataset(
        config.dataset.name,
        "test",
        batch_size=1000,
        train=False,
        process_index=0,
        process_count=1,
        num_devices=1,
    )
    images, labels = [], []
    for batch in dataset.epoch(0):
        images.append(batch["image"][batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    images, labels = np.concatenate(images), np.concatenate(labels)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]

    with tempfile.TemporaryDirectory() as directory:
        path = export.export_workdir(
            args.workdir, checkpoint=args.checkpoint, output=Path(directory) / "student.nir"
        )
        start = time.perf_counter()
        network = load_with_snntorch(path)
        theirs = snntorch_logits(network, images, model.time_steps)
        torch_seconds = time.perf_counter() - start
    ours, margins = flax_logits_and_margins(model, variables, images)
    ours_pred, theirs_pred = ours.mean(0).argmax(-1), theirs.mean(0).argmax(-1)
    logit_gap = np.abs(ours - theirs).max(axis=(0, 2))
    off = np.flatnonzero(logit_gap > 1e-4)  # a spike flipped somewhere in these images
    print(
        json.dumps(
            {
                "images": len(images),
                "same_prediction": float(np.mean(ours_pred == theirs_pred)),
                "differing_predictions": int(np.sum(ours_pred != theirs_pred)),
                "max_abs_logit_difference": float(logit_gap.max()),
                "max_abs_logit_difference_elsewhere": float(np.delete(logit_gap, off).max()),
                "images_with_logit_difference_over_1e-4": len(off),
                "their_min_membrane_gap_to_threshold": sorted(margins[off].tolist()),
                "images_with_a_membrane_within_1e-5_of_threshold": int(np.sum(margins < 1e-5)),
                "median_min_membrane_gap_to_threshold": float(np.median(margins)),
                "flax_accuracy": float(np.mean(ours_pred == labels)),
                "snntorch_accuracy": float(np.mean(theirs_pred == labels)),
                "snntorch_seconds": round(torch_seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
