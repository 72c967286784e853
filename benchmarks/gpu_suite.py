"""One prepared GPU run: our training step, the authors' release and the SNN frameworks.

Meant for one short loan of a GPU machine (docs/performance.md, "On a lent GPU"): within
``--budget`` seconds (default 540, 9 minutes) it measures, each part in subprocesses
with their own time limits so that one failure loses one cell, not the table:

- ``ours``: the ResNet-19 -> ResNet-19 training step as ``benchmarks/train_step.py``
  builds it (``train.build_distillation`` + ``step.make_train_step``), kd and sastc,
  per-device batch 64 and 256, T 2 and 4, float32 and bfloat16: images/s, compile
  seconds, peak device memory (one process per configuration) and the model FLOPs
  utilisation, XLA's cost analysis of the compiled step / step time / the device's peak
  (:data:`PEAK_FLOPS`). The configurations are first compiled four at a time into a
  persistent compilation cache (the compile seconds are those, measured four in
  parallel); the timed processes then load them from it;
- ``release``: the authors' PyTorch release on the same shapes (float32) through
  ``benchmarks/release_step.py``, from ``--release-dir`` (a local copy of its
  ``CIFAR10/`` folder, ignored by git); skipped with a line saying so when absent;
- ``frameworks``: ``benchmarks/snn_frameworks.py``'s dense + LIF rows (N 4096 and
  16384, T 500, B 16, value and gradient, synchronised) for sastc-jax, the matmul floor,
  Spyx and SpikingJelly (its CuPy kernels where it has them), each peer skipped with the
  reason when it does not import.

Partial results are written to ``--json`` after every part. ``--smoke`` runs every part
at tiny sizes (convnet pair, B 4, T 2, kd float32 and sastc bfloat16; N 64, T 20) on
whatever backend there is, the CPU here, in under two minutes.

    python benchmarks/gpu_suite.py --json $OUT/gpu_suite.json
    python benchmarks/gpu_suite.py --smoke --json /tmp/gpu_suite_smoke.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import snn_frameworks  # noqa: E402  (a sibling script, importable once HERE is on the path)

# Dense peak FLOP/s by device name (vendor datasheets, without sparsity): float32 steps
# are rated against TF32, which XLA uses for float32 convolutions and dots on these GPUs.
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 495e12},  # SXM (HBM3)
    "H200": {"bfloat16": 989e12, "float32": 495e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float32": 183e12},
}
METHODS = ("kd", "sastc")
FULL_SHAPES = {"batch": (64, 256), "time_steps": (2, 4), "dtype": ("float32", "bfloat16")}
# The smoke run: each method and each dtype once, on the convnet pair.
SMOKE_CONFIGURATIONS = (
    {"method": "kd", "batch": 4, "time_steps": 2, "dtype": "float32"},
    {"method": "sastc", "batch": 4, "time_steps": 2, "dtype": "bfloat16"},
)
FULL_FRAMEWORK_CASES = ("dense:4096:500", "dense:16384:500")
SMOKE_FRAMEWORK_CASES = ("dense:64:20",)
PEERS = ("spyx", "spikingjelly")
PEER_MODULES = {"spyx": "spyx", "spikingjelly": "spikingjelly.activation_based.neuron"}
# Seconds of the budget each part may use at most (the rest of the budget if less).
PART_SHARES = {"ours": 0.58, "release": 0.18, "frameworks": 0.24}
COMPILE_WORKERS = 4


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype``, the longest matching name first."""
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_FLOPS[name][dtype]
    return None


def configurations(smoke: bool) -> list[dict]:
    if smoke:
        return [dict(config) for config in SMOKE_CONFIGURATIONS]
    # Smallest shapes first: the B=64 rows the goals are read from come before any budget cut.
    return [
        {"method": method, "batch": batch, "time_steps": steps, "dtype": dtype}
        for batch, steps, method, dtype in itertools.product(
            FULL_SHAPES["batch"], FULL_SHAPES["time_steps"], METHODS, FULL_SHAPES["dtype"]
        )
    ]


def label(config: dict) -> str:
    return f"{config['method']} B={config['batch']} T={config['time_steps']} {config['dtype']}"


# ------------------------------------------------------------------------ our step (worker)


def build(config: dict, smoke: bool):
    """``(train_step, state, frozen, batch)`` of ``benchmarks/train_step.py`` for ``config``."""
    import train_step

    settings = train_step.benchmark_config(
        config["method"], config["batch"], config["time_steps"], config["dtype"], remat=False
    )
    if smoke:
        for section, model in (
            (settings.teacher, "convnet_ann"),
            (settings.student, "convnet_snn"),
        ):
            section.model = model
            section.model_kwargs = {"widths": (8, 16, 32)}
    _, step, state, frozen, batch = train_step.build_step(settings, config["batch"])
    return step, state, frozen, batch


def compile_only(config: dict, smoke: bool) -> dict:
    """Compile ``config``'s step (into the persistent cache of the environment)."""
    step, state, frozen, batch = build(config, smoke)
    start = time.perf_counter()
    step.lower(state, frozen, batch).compile()
    return {**config, "compile_s": time.perf_counter() - start}


def time_step(config: dict, smoke: bool, steps: int) -> dict:
    """Compile (or load) and time ``steps`` back-to-back steps after two warm-up steps."""
    import jax

    step, state, frozen, batch = build(config, smoke)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    load_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    for _ in range(2):
        state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    memory = compiled.memory_analysis()
    peak = peak_flops(device.device_kind, config["dtype"])
    return {
        **config,
        "implementation": "sastc-jax",
        "device": device.device_kind,
        "steps": steps,
        "step_s": step_s,
        "images_per_second": config["batch"] / step_s,
        "load_s": load_s,
        "flops": flops,
        "mfu": flops / step_s / peak if peak and flops else None,
        "peak_flops": peak,
        "peak_device_bytes": stats.get("peak_bytes_in_use"),
        "xla_temp_bytes": memory.temp_size_in_bytes if memory is not None else None,
        "loss": float(metrics["loss"]),
    }


# ---------------------------------------------------------------------------- the driver


def run_json_lines(command: list[str], timeout: float, env: dict | None = None) -> list[dict]:
    """The JSON lines a child printed; one ``{'error': ...}`` record more if it failed."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=max(timeout, 1), env=env
        )
        stdout, failure = result.stdout, None
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            failure = f"exit {result.returncode}: {tail[:300]}"
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        failure = f"timed out after {timeout:.0f} s"
    records = [json.loads(line) for line in (stdout or "").splitlines() if line.startswith("{")]
    return records + ([{"error": failure}] if failure else [])


def worker_command(mode: str, configs: list[dict], smoke: bool) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode]
    command += ["--configs", json.dumps(configs)]
    return command + (["--smoke"] if smoke else [])


def jax_environment(cache_dir: str, preallocate: bool) -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        XLA_PYTHON_CLIENT_PREALLOCATE="true" if preallocate else "false",
    )
    return env


def run_ours(args: argparse.Namespace, deadline: float) -> list[dict]:
    configs = configurations(args.smoke)
    with tempfile.TemporaryDirectory() as cache_dir:
        compile_env = jax_environment(cache_dir, preallocate=False)
        workers = min(COMPILE_WORKERS, len(configs), os.cpu_count() or 1)
        groups = [configs[i::workers] for i in range(workers)]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(
                    run_json_lines,
                    worker_command("compile", group, args.smoke),
                    (deadline - time.monotonic()) * 0.5,
                    compile_env,
                )
                for group in groups
            ]
            compiled = [record for future in futures for record in future.result()]
        compile_s = {label(r): r["compile_s"] for r in compiled if "compile_s" in r}
        errors = [r["error"] for r in compiled if "error" in r]
        records = []
        for config in configs:
            remaining = deadline - time.monotonic()
            if remaining < 5:
                records.append({**config, "error": "skipped: the part's budget is spent"})
                continue
            command = worker_command("time", [config], args.smoke)
            found = run_json_lines(command, remaining, jax_environment(cache_dir, True))
            record = found[0] if found and "error" not in found[0] else {**config, **found[-1]}
            record["compile_s"] = compile_s.get(label(config))
            if record["compile_s"] is None and errors:
                record["compile_error"] = errors[0]
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
    return records


def run_release(args: argparse.Namespace, deadline: float) -> list[dict]:
    release_dir = Path(args.release_dir)
    if not (release_dir / "distiller").is_dir():
        return [{"skipped": f"no copy of the release's CIFAR10/ folder at {release_dir}"}]
    records = []
    for config in configurations(args.smoke):
        if config["dtype"] != "float32":  # the release trains in float32 only
            continue
        remaining = deadline - time.monotonic()
        if remaining < 5:
            records.append({**config, "error": "skipped: the part's budget is spent"})
            continue
        command = [sys.executable, str(HERE / "release_step.py"), "--json"]
        command += ["--release-dir", str(release_dir), "--method", config["method"]]
        command += ["--batch", str(config["batch"]), "--time-steps", str(config["time_steps"])]
        command += ["--steps", "2" if args.smoke else "5", "--warmup", "1"]
        found = run_json_lines(command, remaining)
        record = {**config, **found[-1]}
        if "step_seconds" in record:
            record["step_s"] = record["step_seconds"]
        records.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
    return records


def missing_peers(python: str) -> dict[str, str]:
    """``{peer: reason}`` for each peer that does not import under ``python``."""
    missing = {}
    for peer in PEERS:
        command = [python, "-c", f"import {PEER_MODULES[peer]}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            missing[peer] = f"skipped: not importable under {python} ({tail[:120]})"
    return missing


def run_frameworks(args: argparse.Namespace, deadline: float) -> tuple[list[dict], list[str]]:
    cases = list(SMOKE_FRAMEWORK_CASES if args.smoke else FULL_FRAMEWORK_CASES)
    peer_python = args.peer_python or sys.executable
    missing = missing_peers(peer_python)
    frameworks = ["sastc-jax", "floor", *PEERS]
    timing = argparse.Namespace(
        repeats=3, min_seconds=0.0 if args.smoke else 1.0, conv_batch=snn_frameworks.BATCH
    )
    records = []
    for case, framework in itertools.product(cases, frameworks):
        if framework in missing:
            records.append({"framework": framework, "case": case, "error": missing[framework]})
            continue
        remaining = deadline - time.monotonic()
        if remaining < 5:
            records.append({"framework": framework, "case": case, "error": "skipped: budget spent"})
            continue
        python = sys.executable if framework in snn_frameworks.JAX_FRAMEWORKS else peer_python
        records.append(snn_frameworks.run_one(framework, case, timing, python, remaining))
    return records, cases


# ----------------------------------------------------------------------------- the table


def gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.2f} GiB"


def steps_table(ours: list[dict], release: list[dict]) -> str:
    lines = [
        "| implementation | method | B | T | dtype | images/s | compile s | peak device memory "
        "| MFU | ours / release |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    release_speed = {label(r): r["images_per_second"] for r in release if "step_s" in r}
    for record in ours + [r for r in release if "method" in r]:
        name = record.get("implementation", "release (PyTorch)")
        cells = [name, record["method"], record["batch"], record["time_steps"], record["dtype"]]
        if "error" in record:
            lines.append("| " + " | ".join(map(str, cells)) + f" | {record['error']} |||||")
            continue
        mfu = record.get("mfu")
        ratio = ""
        if name == "sastc-jax" and label(record) in release_speed:
            ratio = f"{record['images_per_second'] / release_speed[label(record)]:.2f}x"
        compile_s = record.get("compile_s")
        cells += [
            f"{record['images_per_second']:.0f}",
            "" if compile_s is None else f"{compile_s:.1f}",
            gib(record.get("peak_device_bytes")),
            "" if mfu is None else f"{100 * mfu:.1f}%",
            ratio,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    skipped = [r["skipped"] for r in release if "skipped" in r]
    if skipped:
        lines.append(f"\nRelease: {skipped[0]}.")
    return "\n".join(lines)


def write(path: str, results: dict) -> None:
    Path(path).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, minutes on the CPU")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all parts")
    parser.add_argument("--json", default="gpu_suite.json", help="results (after every part)")
    parser.add_argument("--release-dir", default=str(REPO / ".release" / "CIFAR10"))
    parser.add_argument("--peer-python", help="interpreter with Spyx / SpikingJelly")
    parser.add_argument("--parts", default="ours,release,frameworks")
    parser.add_argument("--worker", choices=["compile", "time"], help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        for config in json.loads(args.configs):
            if args.worker == "compile":
                record = compile_only(config, args.smoke)
            else:
                record = time_step(config, args.smoke, steps=2 if args.smoke else 10)
            print(json.dumps(record), flush=True)
        return

    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PART_SHARES))
    if unknown:
        parser.error(f"unknown --parts {unknown}; choose from {list(PART_SHARES)}")
    start = time.monotonic()
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "smoke": args.smoke,
        "budget_s": args.budget,
    }
    for part in parts:
        end = start + args.budget
        deadline = min(end, time.monotonic() + PART_SHARES[part] * args.budget)
        print(f"# part {part}: {deadline - time.monotonic():.0f} s", file=sys.stderr, flush=True)
        try:
            if part == "ours":
                results["ours"] = run_ours(args, deadline)
            elif part == "release":
                results["release"] = run_release(args, deadline)
            else:
                records, cases = run_frameworks(args, deadline)
                results["frameworks"] = {"cases": cases, "records": records}
        except Exception as error:  # the other parts still run
            results[part] = [{"error": f"{type(error).__name__}: {error}"}]
        part_seconds = results.setdefault("part_seconds", {})
        part_seconds[part] = time.monotonic() - start - sum(part_seconds.values())
        results["elapsed_s"] = time.monotonic() - start
        write(args.json, results)

    tables = [f"GPU suite, started {results['started']}, {results['elapsed_s']:.0f} s."]
    if "ours" in results or "release" in results:
        tables.append(steps_table(results.get("ours", []), results.get("release", [])))
    if isinstance(results.get("frameworks"), dict):
        frameworks = results["frameworks"]
        combined = snn_frameworks.across_rounds(frameworks["records"])
        names = ["sastc-jax", "floor", *PEERS]
        tables.append(snn_frameworks.markdown(combined, frameworks["cases"], names, "Frameworks:"))
    results["table"] = "\n\n".join(tables)
    write(args.json, results)
    print(results["table"])


if __name__ == "__main__":
    main()
