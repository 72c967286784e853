"""The Open Neuromorphic SNN-framework benchmark, side by side, plus our conv+LIF block.

Dense rows (the public benchmark): one dense layer N -> N over the merged T*B batch, then
one LIF layer, batch B=16, T time steps; one timed call is the forward pass plus the
backward pass of the spike sum with respect to the layer's weights and bias, returning
the sum and the gradient (``value_and_grad`` in JAX, as ``loss.backward()`` after the
forward in PyTorch): with the gradient alone XLA could skip the forward spikes, whose
cotangent is all ones, which no network feeding its spikes to a next layer can. Conv rows:
a ResNet-19 stage-1 spiking block, conv3x3 128 -> 128 (no bias) at 32x32 + batch norm
(training mode, statistics over T*B) + LIF, batch ``--conv-batch`` (16), input spikes
(T, B, 32, 32, 128) with rate 0.2; backward of the spike sum w.r.t. the conv weight and
the batch-norm scale and bias.

Frameworks, each size in its own process, one after the other:

- ``sastc-jax``: ``models.layers.Dense`` / ``ConvBN`` + ``neurons.lif`` under ``jax.jit``,
  the dense row through ``layers.dense_lif`` as the models compose them (the dense bias
  added inside the LIF loop).
- ``sastc-jax-reference`` (``--reference``): the same with the LIF written as before this
  change, a fully unrolled ``lax.scan`` of ``neurons.lif_step`` differentiated by JAX
  (``--reference-timeout`` per process: at T=500 it does not finish compiling).
- ``sastc-jax-scan`` (``--reference``): that scan as a plain loop (``unroll=1``), JAX's
  autodiff saving ``s_t``, ``u_t`` and the surrogate slope per neuron-step.
- ``floor``: the layer's own matmuls alone in JAX, forward plus weight gradient, same
  shapes (``x @ W`` and ``x^T @ g``; for conv rows the conv and its weight gradient).
- ``spikingjelly``: ``layer.Linear`` / ``layer.Conv2d`` + ``layer.BatchNorm2d`` +
  ``neuron.LIFNode(tau=2, decay_input=False, v_reset=0, detach_reset=False)``, multi-step
  (``step_mode='m'``; SpikingJelly 2.0 has no ``backend`` argument: on CPU it runs its
  torch sequence kernels, a forward loop that keeps ``H`` and a hand-written backward
  loop). That is this project's neuron exactly: ``H = V - V/tau + X = 0.5 V + X``,
  hard reset to 0, reset not detached (only the threshold test differs at equality:
  SpikingJelly spikes at ``H >= v_th``).
- ``snntorch``: ``nn.Linear`` over T*B, then ``snn.Leaky(beta=0.5, threshold=1,
  reset_mechanism='zero')`` stepped over T in Python.
- ``spyx``: ``flax.nnx.Linear`` over T*B, then ``spyx.nn.LIF(beta=0.5)`` scanned by
  ``spyx.nn.run`` under ``nnx.jit`` (Spyx's LIF subtracts the threshold on a spike).
- ``norse``: ``nn.Linear`` over T*B, then ``norse.torch.LIFBoxCell`` (no synaptic current,
  ``dt * tau_mem_inv = 0.5``, ``v_th = 1``, reset to 0) stepped over T in Python.

Each process warms up once (that call's time is the "first call": compile for JAX, the
first eager pass for PyTorch), then times at least ``--repeats`` calls (default 3), and
more until the timed calls add up to ``--min-seconds`` (default 1 s), and reports their
median, and its peak RSS (``ru_maxrss``). A call of 50 ms is thus timed 20 times: its
first few calls after the warm-up are often slower on this machine (fresh buffers being
paged in), and three of them alone measured that, not the steady state a training loop
runs in. With ``--rounds R`` the whole sequence of
processes runs R times, one round after the other, and each cell is the median of its R
process medians (the JSON keeps every round): on this shared 2-core machine the same
process varies by up to 1.5x from one start to the next, more than the gaps the targets
ask about. Output: a markdown table on stdout and ``--json`` (all records). Dense rows
also print the matmul floor and ours / floor.

The peers are not dependencies of this project (optional extra ``peers`` lists them). Put
them in a virtual environment outside the repository and pass its interpreter:

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install 'torch==2.13.0' numpy
    /work/peers-venv/bin/pip install --no-deps spikingjelly snntorch spyx norse
    /work/peers-venv/bin/pip install --no-deps 'jax==0.10.2' 'jaxlib==0.10.2' flax optax \\
        nir nirtorch jax-tqdm loguru tqdm scipy packaging ml_dtypes opt_einsum msgpack rich \\
        typing_extensions PyYAML treescope orbax-checkpoint etils tensorstore chex toolz absl-py
    /work/peers-venv/bin/pip install grain h5py   # imported by spyx.data / spikingjelly

    python benchmarks/snn_frameworks.py --peer-python /work/peers-venv/bin/python \\
        --reference --json /tmp/snn_frameworks.json

Without ``--peer-python`` only the JAX rows run. ``--sizes 512:50`` and ``--conv-steps 2``
pick a subset; ``--frameworks`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BATCH = 16
CONV_CHANNELS = 128
CONV_SIZE = 32
TORCH_FRAMEWORKS = ("spikingjelly", "snntorch", "norse")
PEER_FRAMEWORKS = ("spikingjelly", "snntorch", "spyx", "norse")
REFERENCE_FRAMEWORKS = ("sastc-jax-reference", "sastc-jax-scan")
JAX_FRAMEWORKS = ("sastc-jax", *REFERENCE_FRAMEWORKS, "floor")
CONV_FRAMEWORKS = (*JAX_FRAMEWORKS, "spikingjelly")


# ------------------------------------------------------------------- timing (in the worker)


class Timing(NamedTuple):
    """At least ``repeats`` timed calls, and more until they add up to ``min_seconds``."""

    repeats: int
    min_seconds: float


def time_calls(call, timing: Timing) -> dict:
    """Warm-up call (its time is the first-call time), then the timed calls of ``timing``."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    while len(times) < timing.repeats or sum(times) < timing.min_seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "times_s": times, "median_s": statistics.median(times)}


# ------------------------------------------------------------------------ JAX workers


def jax_dense(framework: str, n: int, steps: int, timing: Timing) -> dict:
    import jax
    import jax.numpy as jnp

    inputs = jax.random.uniform(jax.random.key(0), (steps, BATCH, n), jnp.float32)
    if framework == "floor":
        weight = jax.random.normal(jax.random.key(1), (n, n), jnp.float32) / n**0.5
        flat = inputs.reshape(steps * BATCH, n)
        cotangent = jax.random.normal(jax.random.key(2), (steps * BATCH, n), jnp.float32)

        # The two matmuls a dense layer's forward + weight gradient cost: x @ W and x^T @ g.
        def matmuls(weight, flat, cotangent):
            return flat @ weight, flat.T @ cotangent

        return compile_and_time(matmuls, (weight, flat, cotangent), timing)

    import flax.linen as nn

    from sastc_jax.models import layers

    spiking = spiking_function(framework)

    class DenseSpiking(nn.Module):
        @nn.compact
        def __call__(self, x):
            if framework == "sastc-jax":  # as the models compose them
                return layers.dense_lif(layers.Dense(n), layers.LIF(), x)
            return spiking(layers.Dense(n)(x))

    model = DenseSpiking()
    params = model.init(jax.random.key(1), inputs[:1])

    def spike_sum(params, inputs):
        return jnp.sum(model.apply(params, inputs))

    return compile_and_time(jax.value_and_grad(spike_sum), (params, inputs), timing)


def compile_and_time(function, args: tuple, timing: Timing) -> dict:
    """``jax.jit`` compile time (counted into the first call), then :func:`time_calls`."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    compile_s = time.perf_counter() - start
    record = time_calls(lambda: jax.block_until_ready(compiled(*args)), timing)
    record["compile_s"] = compile_s
    record["first_call_s"] += compile_s
    memory = compiled.memory_analysis()
    if memory is not None:
        record["xla_temp_bytes"] = memory.temp_size_in_bytes
    return record


def spiking_function(framework: str):
    import functools

    import jax
    import jax.numpy as jnp

    from sastc_jax import neurons

    if framework == "sastc-jax":
        return neurons.lif

    unroll = framework == "sastc-jax-reference"

    def reference_lif(currents):  # neurons.lif as it was: an unrolled scan of lif_step
        step = functools.partial(neurons.lif_step, config=neurons.LIFConfig())
        v0 = jnp.zeros_like(currents[0], dtype=jnp.float32)
        _, (spikes, _) = jax.lax.scan(step, v0, currents.astype(jnp.float32), unroll=unroll)
        return spikes.astype(currents.dtype)

    return reference_lif


def jax_conv(framework: str, steps: int, batch: int, timing: Timing) -> dict:
    import jax
    import jax.numpy as jnp

    from sastc_jax import ops
    from sastc_jax.models import layers

    shape = (steps, batch, CONV_SIZE, CONV_SIZE, CONV_CHANNELS)
    inputs = (jax.random.uniform(jax.random.key(0), shape) < 0.2).astype(jnp.float32)
    if framework == "floor":
        images = inputs.reshape(steps * batch, CONV_SIZE, CONV_SIZE, CONV_CHANNELS)
        kernel = jax.random.normal(jax.random.key(1), (3, 3, CONV_CHANNELS, CONV_CHANNELS))
        cotangent = jax.random.normal(jax.random.key(2), images.shape)

        def conv(kernel, images):
            return ops.select("auto").conv_general_dilated(
                images,
                kernel,
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )

        # The conv's forward and its weight gradient (no input gradient: the input is data).
        def forward_and_weight_grad(kernel, images, cotangent):
            out, pullback = jax.vjp(lambda k: conv(k, images), kernel)
            return out, pullback(cotangent)[0]

        return compile_and_time(forward_and_weight_grad, (kernel, images, cotangent), timing)

    block = layers.ConvBN(CONV_CHANNELS, init_scheme="pytorch")
    variables = block.init(jax.random.key(1), inputs)
    params, state = variables["params"], variables["batch_stats"]
    spiking = spiking_function(framework)

    def spike_sum(params, state, inputs):
        currents, _ = block.apply(
            {"params": params, "batch_stats": state}, inputs, mutable=["batch_stats"]
        )
        return jnp.sum(spiking(currents))

    return compile_and_time(jax.value_and_grad(spike_sum), (params, state, inputs), timing)


def spyx_dense(n: int, steps: int, timing: Timing) -> dict:
    import jax
    import jax.numpy as jnp
    import spyx
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(n, n, rngs=rngs)
            self.lif = spyx.nn.LIF((n,), beta=0.5, threshold=1.0, rngs=rngs)

        def __call__(self, inputs):
            currents = self.linear(inputs)  # over the merged (T, B) batch
            spikes, _ = spyx.nn.run(self.lif, currents)
            return spikes

    model = Model(nnx.Rngs(0))
    inputs = jax.random.uniform(jax.random.key(0), (steps, BATCH, n), jnp.float32)

    @nnx.jit
    def step(model, inputs):
        return nnx.value_and_grad(lambda m: jnp.sum(m(inputs)))(model)

    record = time_calls(lambda: jax.block_until_ready(step(model, inputs)), timing)
    record["version"] = spyx.__version__
    return record


# ---------------------------------------------------------------------- torch workers


def torch_dense(framework: str, n: int, steps: int, timing: Timing) -> dict:
    import torch
    from torch import nn

    device = torch_device()
    torch.manual_seed(0)
    inputs = torch.rand(steps, BATCH, n, device=device)
    linear = nn.Linear(n, n).to(device)
    backend = "torch"
    if framework == "spikingjelly":
        import spikingjelly
        from spikingjelly.activation_based import functional, layer, neuron

        linear = layer.Linear(n, n, step_mode="m").to(device)
        lif, backend = sj_lif_node(neuron, device)
        version = getattr(spikingjelly, "__version__", package_version("spikingjelly"))

        def forward():
            functional.reset_net(lif)
            return lif(linear(inputs))

        params = list(linear.parameters())
    elif framework == "snntorch":
        import snntorch
        from snntorch import surrogate

        lif = snntorch.Leaky(
            beta=0.5, threshold=1.0, reset_mechanism="zero", spike_grad=surrogate.atan()
        )
        version = snntorch.__version__

        def forward():
            currents = linear(inputs)
            mem = lif.init_leaky()
            spikes = []
            for t in range(steps):
                spike, mem = lif(currents[t], mem)
                spikes.append(spike)
            return torch.stack(spikes)

        params = list(linear.parameters())
    elif framework == "norse":
        import norse
        from norse.torch import LIFBoxCell, LIFBoxParameters

        lif = LIFBoxCell(
            p=LIFBoxParameters(
                tau_mem_inv=torch.tensor(500.0),
                v_leak=torch.tensor(0.0),
                v_th=torch.tensor(1.0),
                v_reset=torch.tensor(0.0),
            ),
            dt=1e-3,
        )
        version = getattr(norse, "__version__", package_version("norse"))

        def forward():
            currents = linear(inputs)
            state, spikes = None, []
            for t in range(steps):
                spike, state = lif(currents[t], state)
                spikes.append(spike)
            return torch.stack(spikes)

        params = list(linear.parameters())
    else:
        raise ValueError(f"Unknown torch framework {framework!r}; one of {TORCH_FRAMEWORKS}.")

    def call():
        for p in params:
            p.grad = None
        total = forward().sum()
        total.backward()
        return total.item()

    record = time_calls(call, timing)
    record.update(version=version, backend=backend, device=str(device))
    record["torch_threads"] = torch.get_num_threads()
    return record


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sj_lif_node(neuron, device) -> tuple:
    """This project's neuron in SpikingJelly: H = 0.5 V + X, hard reset to 0, not detached.

    Returns ``(node, backend)``: on CUDA its CuPy kernels where this SpikingJelly has a
    ``backend`` argument and CuPy imports, else its torch form ('torch').
    """
    import inspect

    settings = dict(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=False)
    backend = "torch"
    if device.type == "cuda" and "backend" in inspect.signature(neuron.LIFNode).parameters:
        try:
            import cupy  # noqa: F401

            backend = "cupy"
        except ImportError:
            pass
        settings["backend"] = backend
    return neuron.LIFNode(step_mode="m", **settings).to(device), backend


def torch_conv(steps: int, batch: int, timing: Timing) -> dict:
    import torch
    from spikingjelly.activation_based import functional, layer, neuron

    device = torch_device()
    torch.manual_seed(0)
    shape = (steps, batch, CONV_CHANNELS, CONV_SIZE, CONV_SIZE)
    inputs = (torch.rand(shape, device=device) < 0.2).float()
    conv = layer.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1, bias=False, step_mode="m")
    conv = conv.to(device)
    bn = layer.BatchNorm2d(CONV_CHANNELS, step_mode="m").to(device)
    lif, backend = sj_lif_node(neuron, device)
    params = list(conv.parameters()) + list(bn.parameters())

    def call():
        for p in params:
            p.grad = None
        functional.reset_net(lif)
        total = lif(bn(conv(inputs))).sum()
        total.backward()
        return total.item()

    record = time_calls(call, timing)
    record.update(version=package_version("spikingjelly"), backend=backend, device=str(device))
    record["torch_threads"] = torch.get_num_threads()
    return record


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def worker(framework: str, case: str, timing: Timing, conv_batch: int) -> dict:
    kind, *numbers = case.split(":")
    if kind == "dense":
        n, steps = map(int, numbers)
        if framework in JAX_FRAMEWORKS:
            record = jax_dense(framework, n, steps, timing)
        elif framework == "spyx":
            record = spyx_dense(n, steps, timing)
        else:
            record = torch_dense(framework, n, steps, timing)
    elif kind == "conv":
        (steps,) = map(int, numbers)
        if framework in JAX_FRAMEWORKS:
            record = jax_conv(framework, steps, conv_batch, timing)
        elif framework == "spikingjelly":
            record = torch_conv(steps, conv_batch, timing)
        else:
            raise ValueError(f"Conv rows run for {CONV_FRAMEWORKS}; got {framework!r}.")
    else:
        raise ValueError(f"Unknown case {case!r}; expected dense:N:T or conv:T.")
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return record


# ---------------------------------------------------------------------------- driver


def run_one(
    framework: str, case: str, args: argparse.Namespace, python: str, timeout: float
) -> dict:
    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        framework,
        case,
        "--repeats",
        str(args.repeats),
        "--min-seconds",
        str(args.min_seconds),
        "--conv-batch",
        str(args.conv_batch),
    ]
    env = os.environ.copy()
    if framework in JAX_FRAMEWORKS:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print("$", framework, case, file=sys.stderr, flush=True)
    base = {"framework": framework, "case": case}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return {**base, "error": f"exit {result.returncode}: {tail[0][:200]}"}
    record = {**base, **json.loads(result.stdout.strip().splitlines()[-1])}
    print(json.dumps(record), file=sys.stderr, flush=True)
    return record


def across_rounds(records: list[dict]) -> list[dict]:
    """One record per (framework, case): the median over rounds of the process medians.

    First-call time is the median too, peak RSS and XLA temp the largest; a case that
    failed in any round keeps that round's error.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["framework"], record["case"]), []).append(record)
    combined = []
    for (framework, case), group in groups.items():
        failed = [r for r in group if "error" in r]
        if failed:
            combined.append(failed[0])
            continue
        merged = {
            "framework": framework,
            "case": case,
            "median_s": statistics.median(r["median_s"] for r in group),
            "round_medians_s": [r["median_s"] for r in group],
            "first_call_s": statistics.median(r["first_call_s"] for r in group),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in group),
        }
        if "xla_temp_bytes" in group[0]:
            merged["xla_temp_bytes"] = max(r["xla_temp_bytes"] for r in group)
        combined.append(merged)
    return combined


def cell(record: dict | None) -> str:
    if record is None:
        return ""
    if "error" in record:
        return record["error"]
    rss = record["peak_rss_bytes"] / 2**30
    temp = record.get("xla_temp_bytes")
    temp_text = "" if temp is None else f", XLA temp {temp / 2**20:.0f} MiB"
    first = record["first_call_s"]
    return f"{seconds(record['median_s'])} ({first:.1f} s; {rss:.1f} GiB{temp_text})"


def seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def markdown(records: list[dict], cases: list[str], frameworks: list[str], header: str) -> str:
    by_key = {(r["framework"], r["case"]): r for r in records}
    names = [f for f in frameworks if any((f, c) in by_key for c in cases)]
    lines = [
        header,
        "",
        "| case | " + " | ".join(names) + " | speed-up vs fastest peer | ours / floor |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for case in cases:
        row = [cell(by_key.get((name, case))) for name in names]
        ours = by_key.get(("sastc-jax", case), {}).get("median_s")
        floor = by_key.get(("floor", case), {}).get("median_s")
        peers = [
            by_key[(f, case)]["median_s"]
            for f in PEER_FRAMEWORKS
            if "median_s" in by_key.get((f, case), {})
        ]
        speedup = f"{min(peers) / ours:.2f}x" if ours and peers else ""  # peer time / ours
        over_floor = f"{ours / floor:.2f}" if ours and floor else ""
        lines.append(f"| {label(case)} | " + " | ".join(row) + f" | {speedup} | {over_floor} |")
    lines += [
        "",
        "Cells: median of the timed calls, over rounds the median of the process medians "
        "(first call, i.e. compile or first eager pass; "
        "peak RSS of that process; for JAX, XLA's temporary buffers). `floor`: the layer's "
        "own forward + weight-gradient matmuls (conv rows: the conv) alone in JAX.",
    ]
    return "\n".join(lines)


def label(case: str) -> str:
    kind, *numbers = case.split(":")
    if kind == "dense":
        return f"dense N={numbers[0]}, T={numbers[1]}"
    return f"conv block T={numbers[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", help="interpreter of the venv with the peers")
    parser.add_argument("--sizes", default="512:50,4096:50,512:500,4096:500", help="N:T,...")
    parser.add_argument("--conv-steps", default="2,4,10", help="T of the conv rows ('' for none)")
    parser.add_argument("--conv-batch", type=int, default=BATCH)
    parser.add_argument("--frameworks", default="", help="comma-separated subset (default all)")
    parser.add_argument("--reference", action="store_true", help="also the LIF as it was")
    parser.add_argument(
        "--reference-timeout", type=float, default=60.0, help="seconds per reference process"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls, at least")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="more timed calls until they add up to this (0: exactly --repeats)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every process this many times (median)"
    )
    parser.add_argument("--json", help="write all records here")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        timing = Timing(args.repeats, args.min_seconds)
        print(json.dumps(worker(*args.worker, timing, args.conv_batch)))
        return

    wanted = [f for f in args.frameworks.split(",") if f]
    known = JAX_FRAMEWORKS + PEER_FRAMEWORKS
    unknown = [f for f in wanted if f not in known]
    if unknown:
        parser.error(f"unknown --frameworks {unknown}; choose from {list(known)}")
    frameworks = wanted or [f for f in known if f not in REFERENCE_FRAMEWORKS or args.reference]
    if not args.peer_python:
        frameworks = [f for f in frameworks if f in JAX_FRAMEWORKS]
    dense_cases = [f"dense:{size}" for size in args.sizes.split(",") if size]
    conv_cases = [f"conv:{t}" for t in args.conv_steps.split(",") if t]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    records = []
    for round_index in range(args.rounds):
        for case in dense_cases + conv_cases:
            for framework in frameworks:
                if case.startswith("conv") and framework not in CONV_FRAMEWORKS:
                    continue
                python = sys.executable if framework in JAX_FRAMEWORKS else args.peer_python
                reference = framework == "sastc-jax-reference"
                timeout = args.reference_timeout if reference else args.timeout
                record = run_one(framework, case, args, python, timeout)
                records.append({**record, "round": round_index})
    header = (
        f"Run started {started}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; B={BATCH} (conv rows B={args.conv_batch}); load average "
        f"{os.getloadavg()[0]:.1f} at the end."
    )
    table = markdown(across_rounds(records), dense_cases + conv_cases, frameworks, header)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"started": started, "records": records, "table": table}, indent=1)
        )


if __name__ == "__main__":
    main()
