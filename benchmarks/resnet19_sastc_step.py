"""Compile and run one jitted value-and-grad of the total SASTC loss in the release setting.

ResNet-19 ANN teacher -> ResNet-19 SNN student, CIFAR shapes (32x32x3), B=64, T=2,
beta=800. Prints the compile time and the mean time of the following steps, with the
same for plain KD (``--method=kd``) for the SASTC/KD cost ratio (docs/method.md §5.6: about
1.8x by MAC count).

    python benchmarks/resnet19_sastc_step.py [--batch 64] [--time-steps 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sastc_jax import configuration, train


def measure(method: str, batch: int, time_steps: int, steps: int, dtype: str) -> dict:
    config: ml_collections.ConfigDict = configuration.base_config()
    config.method, config.time_steps, config.dtype = method, time_steps, dtype
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    parts = train.build_distillation(config, num_classes=10, sample=np.zeros(images.shape))
    key = jax.random.key(0)
    student_vars = parts.student.init(key, images, train=False)
    teacher_vars = parts.teacher.init(key, images, train=False)
    params = {"student": student_vars["params"]}
    if parts.calibrator is not None:
        params["calibration"] = parts.init_calibration(key)
    batch_data = {"image": images, "label": labels}

    @jax.jit
    def value_and_grad(params, batch_stats, teacher_vars, batch_data):
        return jax.value_and_grad(parts.objective, has_aux=True)(
            params, batch_stats, teacher_vars, batch_data
        )

    args = (params, student_vars["batch_stats"], teacher_vars, batch_data)
    start = time.perf_counter()
    compiled = value_and_grad.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        (loss, _), grads = compiled(*args)
    jax.block_until_ready(grads)
    step_seconds = (time.perf_counter() - start) / steps
    return {
        "method": method,
        "loss": float(loss),
        "compile_s": compile_seconds,
        "step_s": step_seconds,
        "images_per_s": batch / step_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--methods", default="sastc,kd")
    args = parser.parse_args()
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"B={args.batch}, T={args.time_steps}, dtype={args.dtype}"
    )
    results = [
        measure(m, args.batch, args.time_steps, args.steps, args.dtype)
        for m in args.methods.split(",")
    ]
    for r in results:
        print(
            f"{r['method']:>6}: compile {r['compile_s']:.1f} s, step {r['step_s']:.3f} s "
            f"({r['images_per_s']:.1f} img/s), loss {r['loss']:.4f}"
        )
    by_method = {r["method"]: r for r in results}
    if "sastc" in by_method and "kd" in by_method:
        ratio = by_method["sastc"]["step_s"] / by_method["kd"]["step_s"]
        print(f"SASTC / KD step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
