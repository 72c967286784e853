"""Time the authors' PyTorch release (ieveresthd/SASTC, folder CIFAR10/) on the same shapes.

``--release-dir`` is a local copy of that folder (keep it in an ignored folder such as
``.release/CIFAR10``; it is never committed here). Its own modules are imported from it:
``models/ann/resnet19.py`` (teacher), ``models/snn/resnetkd.py`` (``resnet18snn``, the
ResNet-19 SNN), ``distiller/`` (KD, the attention module, the SASTC loss). One full step
is its training iteration: teacher forward under ``no_grad``, student forward, CE + KD
(+ beta * SASTC), ``zero_grad``, ``backward``, SGD step (lr 0.01, momentum 0.9, weight
decay 5e-4). The only change is device placement: on a machine without CUDA,
``Tensor.cuda`` returns the tensor itself. The attention MLP input is the batch (the
release's ``--mlp_dim`` must equal it). With CUDA, the models, the attention module and
the batch are moved to the GPU (``loss.item()`` ends each iteration, so the timing is
synchronised). Needs the optional ``torch`` extra.

    python benchmarks/release_step.py --release-dir .release/CIFAR10 --method sastc --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
import types
from pathlib import Path

NUM_CLASSES = 10


def import_release(release_dir: Path) -> dict:
    """The release's builders, imported from ``release_dir`` without its package ``__init__``s."""
    needed = [
        "models/ann/resnet19.py",
        "models/snn/resnetkd.py",
        "models/snn/functions.py",
        "distiller/kd.py",
        "distiller/sastc.py",
        "distiller/self_attention.py",
    ]
    missing = [name for name in needed if not (release_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--release-dir {release_dir} is not a copy of the release's CIFAR10/ folder: "
            f"missing {', '.join(missing)}."
        )
    # Packages with only a search path: the release's own __init__ files import every
    # architecture, of which only these are needed.
    for package, folder in (
        ("release_ann", "models/ann"),
        ("release_snn", "models/snn"),
        ("release_distiller", "distiller"),
    ):
        module = types.ModuleType(package)
        module.__path__ = [str(release_dir / folder)]
        sys.modules[package] = module
    return {
        "resnet19": importlib.import_module("release_ann.resnet19").resnet19,
        "resnet18snn": importlib.import_module("release_snn.resnetkd").resnet18snn,
        "DistillKL": importlib.import_module("release_distiller.kd").DistillKL,
        "SASTCLoss": importlib.import_module("release_distiller.sastc").SASTCLoss,
        "SelfAttentionTime": importlib.import_module(
            "release_distiller.self_attention"
        ).SelfAttentionTime,
    }


def measure(
    release_dir: Path,
    method: str,
    batch: int,
    time_steps: int,
    steps: int = 3,
    warmup: int = 1,
    threads: int | None = None,
) -> dict:
    """Build the release's models and distiller, time full training iterations."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # device placement only
    release = import_release(release_dir)
    torch.manual_seed(0)
    teacher = release["resnet19"](num_classes=NUM_CLASSES).to(device)
    student = release["resnet18snn"]().to(device)
    student.T = time_steps
    teacher.eval()
    student.train()
    criterion_ce, criterion_div = nn.CrossEntropyLoss(), release["DistillKL"](4.0)
    gamma, alpha, beta = 1.0, 1.0, 800.0
    params = list(student.parameters())
    kd_module = criterion_kd = None
    if method == "sastc":
        probe = torch.randn(batch, 3, 32, 32, device=device)
        with torch.no_grad():
            teacher_features, _ = teacher(probe.clone(), get_feature=True)
            student_features, _ = student(probe.clone(), get_feature=True)
        student_channels = [f.shape[2] for f in student_features[1:-1]]
        teacher_channels = [f.shape[1] for f in teacher_features[1:-1]]
        kd_module = release["SelfAttentionTime"](
            len(student_features) - 2,
            len(teacher_features) - 2,
            batch,
            student_channels,
            teacher_channels,
        ).to(device)
        kd_module.train()
        criterion_kd = release["SASTCLoss"]()
        params += list(kd_module.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def iteration() -> float:
        # The student's input encoding unsqueezes its argument in place: pass a copy.
        with torch.no_grad():
            teacher_features, teacher_logits = teacher(images.clone(), get_feature=True)
            teacher_features = [f.detach() for f in teacher_features]
        student_features, student_logits = student(images.clone(), get_feature=True)
        mean_logits = student_logits.mean(1)
        loss = gamma * criterion_ce(mean_logits, labels) + alpha * criterion_div(
            mean_logits, teacher_logits
        )
        if method == "sastc":
            values, targets, weights = kd_module(student_features[1:-1], teacher_features[1:-1])
            loss = loss + beta * criterion_kd(values, targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(warmup):
        iteration()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = iteration()
    step_seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu_start) / steps
    return {
        "implementation": "release (PyTorch)",
        "method": method,
        "batch": batch,
        "time_steps": time_steps,
        "dtype": "float32",
        "steps": steps,
        "step_seconds": step_seconds,
        "images_per_second": batch / step_seconds,
        "cpu_seconds_per_step": cpu_seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": loss,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "peak_device_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release-dir", type=Path, required=True)
    parser.add_argument("--method", default="sastc", choices=["kd", "sastc"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    record = measure(
        args.release_dir,
        args.method,
        args.batch,
        args.time_steps,
        args.steps,
        args.warmup,
        args.threads,
    )
    if args.json:
        print(json.dumps(record), flush=True)
    else:
        print(
            f"release {record['method']} B={args.batch} T={args.time_steps}: "
            f"step {record['step_seconds']:.3f} s ({record['images_per_second']:.1f} img/s), "
            f"peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB"
        )


if __name__ == "__main__":
    main()
