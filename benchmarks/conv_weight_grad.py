"""Kernel (weight) gradient of the ResNet-19 3x3 convolutions: XLA's own against
``sastc_jax.ops.cpu``'s one matmul per kernel offset, in one process.

    python benchmarks/conv_weight_grad.py [--batch 128] [--repeats 5]

``--batch`` is the merged T*B batch the student's convolutions see (T=2, B=64 -> 128).
Prints one line per shape: forward, input gradient, and both kernel gradients (best of
``--repeats`` wall-clock times, ms) with their GFLOP/s, and whether the library uses
the matmul form for that shape.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sastc_jax.ops import cpu

NHWC = ("NHWC", "HWIO", "NHWC")
PADS = ((1, 1), (1, 1))
# (map size, channels in, channels out) of the student's stride-1 3x3 convolutions.
SHAPES = [(32, 128, 128), (16, 256, 256), (8, 512, 512)]


def best_time(repeats: int, fn, *args) -> float:
    """Best wall-clock seconds of ``fn(*args)`` over ``repeats`` runs after a warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), PADS, dimension_numbers=NHWC)


@jax.jit
def input_grad(x, kernel, grad):
    return jax.vjp(conv, x, kernel)[1](grad)[0]


@jax.jit
def xla_kernel_grad(x, kernel, grad):
    return jax.vjp(conv, x, kernel)[1](grad)[1]


@jax.jit
def matmul_kernel_grad(x, kernel, grad):
    return cpu.matmul_kernel_gradient(x, grad, kernel.shape, PADS)


def measure(batch: int, size: int, c_in: int, c_out: int, repeats: int) -> str:
    """One printed line for one (map size, channels) shape."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)) * 0.05, jnp.float32)
    grad = jnp.asarray(rng.normal(size=(batch, size, size, c_out)), jnp.float32)
    gflop = 2 * batch * size * size * c_in * c_out * 9 / 1e9
    timings = {
        "forward": best_time(repeats, jax.jit(conv), x, kernel),
        "input grad": best_time(repeats, input_grad, x, kernel, grad),
        "kernel grad XLA": best_time(repeats, xla_kernel_grad, x, kernel, grad),
        "kernel grad matmul": best_time(repeats, matmul_kernel_grad, x, kernel, grad),
    }
    used = cpu.uses_matmul_kernel_gradient(
        x.shape, kernel.shape, (1, 1), PADS, dimension_numbers=NHWC
    )
    figures = ", ".join(
        f"{name} {seconds * 1e3:.0f} ms ({gflop / seconds:.0f} GFLOP/s)"
        for name, seconds in timings.items()
    )
    speedup = timings["kernel grad XLA"] / timings["kernel grad matmul"]
    return (
        f"{size}x{size}, {c_in}->{c_out}: {figures}; matmul/XLA speed-up {speedup:.2f}x; "
        f"used by ops='cpu_matmul': {used}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{jax.devices()[0].device_kind}, batch {args.batch}")
    for size, c_in, c_out in SHAPES:
        print(measure(args.batch, size, c_in, c_out, args.repeats), flush=True)


if __name__ == "__main__":
    main()
