"""NIR export: checked by an independent NumPy interpreter of NIR's own equations.

The interpreter below reads the file with ``nir.read`` and runs the graph as NIR
defines it (edges into a node are summed; ``nir.LIF``: ``tau dv/dt = (v_leak - v) + r I``
integrated by forward Euler at the graph's ``dt``, spike where ``v > v_threshold``,
then ``v = v_reset``), in float64, knowing nothing of the Flax model. Its per-step
logits and every hidden LIF layer's spikes are compared with the Flax student's on
real Fashion-MNIST test images.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections import deque
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sastc_jax import checkpoints, data, models, neurons
from sastc_jax.cli import export as export_cli
from sastc_jax.cli import flags as cli_flags
from sastc_jax.data import fashion_mnist
from sastc_jax.interop import nir as export
from sastc_jax.models.layers import LIF

nir = pytest.importorskip("nir", reason="the `nir` extra is not installed")

REAL_FASHION = os.path.isfile(os.path.join(fashion_mnist.DEFAULT_DIR, "t10k-images-idx3-ubyte.gz"))
needs_fashion = pytest.mark.skipif(
    not REAL_FASHION,
    reason=f"Debian package dataset-fashion-mnist not installed ({fashion_mnist.DEFAULT_DIR})",
)
QUICKSTART_WIDTHS = (16, 32, 64)  # configs/quickstart.py's student
NEAR_THRESHOLD = 1e-5  # membranes this close to v_th may flip under float32 rounding
ROOT = Path(__file__).resolve().parents[1]


def load_file(relative: str):
    """A module of the repository (a config, a benchmark) by file path."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ NIR interpreter


def _topological_order(graph) -> list[str]:
    incoming = {name: 0 for name in graph.nodes}
    for _, dst in graph.edges:
        incoming[dst] += 1
    ready = deque(name for name, count in incoming.items() if count == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for src, dst in graph.edges:
            if src == name:
                incoming[dst] -= 1
                if incoming[dst] == 0:
                    ready.append(dst)
    assert len(order) == len(graph.nodes), "the graph has a cycle"
    return order


def _windows(x: np.ndarray, size, stride, padding, pad_value=0.0) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H', W', kh, kw) sliding windows."""
    (ph, pw), (sh, sw) = padding, stride
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    view = np.lib.stride_tricks.sliding_window_view(x, tuple(size), axis=(2, 3))
    return view[:, :, ::sh, ::sw]


def _apply(node, x: np.ndarray) -> np.ndarray:
    kind = type(node).__name__
    if kind in ("Input", "Output"):
        return x
    if kind == "Conv2d":
        assert node.groups == 1 and tuple(node.dilation) == (1, 1)
        weight = np.asarray(node.weight, np.float64)
        patches = _windows(x, weight.shape[2:], node.stride, node.padding)
        out = np.einsum("bchwij,ocij->bohw", patches, weight, optimize=True)
        return out + np.asarray(node.bias, np.float64)[None, :, None, None]
    if kind == "AvgPool2d":
        assert not np.any(node.padding)
        return _windows(x, node.kernel_size, node.stride, (0, 0)).mean(axis=(-2, -1))
    if kind == "Flatten":
        start = int(node.start_dim) % (x.ndim - 1) + 1  # per-example dims, after the batch
        end = int(node.end_dim) % (x.ndim - 1) + 1
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])
    if kind == "Affine":
        return x @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
    raise AssertionError(f"the interpreter does not know nir.{kind}")


def run_nir(graph, images: np.ndarray, time_steps: int, dt: float):
    """Run a NIR graph for ``time_steps`` steps on ``images`` (B, C, H, W), each step.

    Returns ``(outputs (T, B, N), spikes, membranes)``; the last two map each LIF/IF
    node to its (T, B, ...) spikes and pre-reset membrane potentials.
    """
    order = _topological_order(graph)
    sources = {name: [src for src, dst in graph.edges if dst == name] for name in graph.nodes}
    state, outputs = {}, []
    spikes = {
        name: [] for name, node in graph.nodes.items() if type(node).__name__ in ("LIF", "IF")
    }
    membranes = {name: [] for name in spikes}
    for _ in range(time_steps):
        values = {}
        for name in order:
            node = graph.nodes[name]
            if not sources[name]:
                values[name] = images.astype(np.float64)
                continue
            x = sum(values[src] for src in sources[name])
            if name in spikes:
                v = state.get(name, np.zeros_like(x))
                if type(node).__name__ == "LIF":
                    tau, r, leak = (
                        np.asarray(a, np.float64) for a in (node.tau, node.r, node.v_leak)
                    )
                    v = v + dt / tau * (leak - v + r * x)
                else:  # IF: dv/dt = r I
                    v = v + dt * np.asarray(node.r, np.float64) * x
                fired = v > np.asarray(node.v_threshold, np.float64)
                membranes[name].append(v)
                spikes[name].append(fired.astype(np.float64))
                state[name] = np.where(fired, np.asarray(node.v_reset, np.float64), v)
                values[name] = spikes[name][-1]
            else:
                values[name] = _apply(node, x)
            if type(node).__name__ == "Output":
                outputs.append(values[name])
    stack = lambda d: {k: np.stack(v) for k, v in d.items()}  # noqa: E731
    return np.stack(outputs), stack(spikes), stack(membranes)


# ----------------------------------------------------------------------- helpers


@functools.cache
def fashion_test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` normalised Fashion-MNIST test images (B, 28, 28, 1) and labels."""
    dataset = data.get_dataset(
        "fashion_mnist",
        "test",
        batch_size=count,
        train=False,
        process_index=0,
        process_count=1,
        num_devices=1,
        num_threads=0,
    )
    batch = next(iter(dataset.epoch(0)))
    return np.asarray(batch["image"]), np.asarray(batch["label"])


def random_variables(model: nn.Module, input_shape, seed: int = 0) -> dict:
    """Random variables for ``model`` without compiling its init: Kaiming-scaled kernels,
    dense layers as PyTorch, and batch norms with random running statistics, scales and
    biases (so that folding them is exercised)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
    )
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        shape, last = leaf.shape, path[-1]
        if last == "kernel" and len(shape) == 4:  # conv (kh, kw, in, out), fan-out
            value = rng.normal(0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
        elif last == "kernel":
            bound = 1.0 / np.sqrt(shape[0])
            value = rng.uniform(-bound, bound, shape)
        elif last == "scale":
            value = rng.uniform(0.6, 1.6, shape)
        elif last == "mean":
            value = rng.normal(0, 0.2, shape)
        elif last == "var":
            value = rng.uniform(0.5, 2.0, shape)
        elif path[-2] == "bn":  # biases
            value = rng.normal(0, 0.2, shape)
        else:  # dense biases: lift the hidden dense layer's currents towards the threshold
            value = rng.normal(0.6, 0.5, shape)
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def trees_equal(a, b) -> bool:
    """Same structure and bit-identical arrays."""
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        jax.tree.leaves(jax.tree.map(np.array_equal, a, b))
    )


def flax_run(model: nn.Module, variables, images: np.ndarray):
    """Per-step logits (T, B, N) and each LIF layer's spikes by NIR node name, (T, B, C, H, W)."""

    @jax.jit
    def apply(variables, images):
        return model.apply(
            variables,
            images,
            train=False,
            capture_intermediates=lambda module, _: isinstance(module, LIF),
        )

    logits, state = apply(variables, images)
    spikes = {}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        if path[-1] != "__call__":  # the stage taps the model sows
            continue
        value = np.asarray(value[0] if isinstance(value, tuple) else value)
        if value.ndim == 5:
            value = value.transpose(0, 1, 4, 2, 3)
        spikes[".".join(path[:-1])] = value
    return np.asarray(logits), spikes


def compare_with_interpreter(model, variables, images, path):
    """Export to ``path``, read it back, interpret it; compare with Flax. Returns a report."""
    graph = export.to_nir(model, variables, images.shape[1:])
    export.write(graph, path)
    graph = nir.read(path)
    dt = float(graph.metadata["dt"])
    outputs, nir_spikes, membranes = run_nir(
        graph, images.transpose(0, 3, 1, 2), int(graph.metadata["time_steps"]), dt
    )
    logits, flax_spikes = flax_run(model, variables, images)
    assert set(nir_spikes) == set(flax_spikes)
    report = {}
    for name, spikes in nir_spikes.items():
        threshold = np.asarray(graph.nodes[name].v_threshold)
        near = np.abs(membranes[name] - threshold) < NEAR_THRESHOLD
        differ = spikes != flax_spikes[name]
        report[name] = {
            "disagreements": int(differ.sum()),
            "disagreements_near_threshold": int(np.sum(differ & near)),
            "near_threshold": int(near.sum()),
            "rate": float(spikes.mean()),
        }
    return outputs, logits, report


# -------------------------------------------------------------------- neuron mapping


@pytest.mark.parametrize("tau", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_forward_euler_of_the_nir_neuron_is_our_lif(tau):
    config = neurons.LIFConfig(tau=tau)
    currents = np.random.default_rng(0).uniform(-0.5, 1.5, (12, 1000)).astype(np.float32)
    spikes, membrane = neurons.lif(jnp.asarray(currents), config, return_membrane=True)
    graph = nir.NIRGraph.from_list(export._neuron_node(nir, config, (1000,), export.DEFAULT_DT))
    _, _, nir_membrane = run_nir(graph, currents[0:1], 1, export.DEFAULT_DT)
    v, euler_spikes, euler_membrane = np.zeros(1000), [], []
    node = graph.nodes["lif" if tau < 1 else "if"]
    for x in currents.astype(np.float64):  # NIR's Euler step, one neuron layer
        if tau < 1:
            v = v + export.DEFAULT_DT / node.tau * (node.v_leak - v + node.r * x)
        else:
            v = v + export.DEFAULT_DT * node.r * x
        euler_membrane.append(v)
        euler_spikes.append(v > node.v_threshold)
        v = np.where(euler_spikes[-1], node.v_reset, v)
    np.testing.assert_allclose(euler_membrane, membrane, atol=1e-6)
    np.testing.assert_array_equal(np.array(euler_spikes, np.float32), spikes)
    np.testing.assert_allclose(nir_membrane[next(iter(nir_membrane))][0, 0], membrane[0], atol=0)


def test_default_neuron_coefficients_are_exact():
    params = export.neuron_parameters(neurons.LIFConfig(tau=0.5), export.DEFAULT_DT)
    assert export.DEFAULT_DT / params["tau"] == 0.5  # 1 - dt/tau: our decay, exactly
    assert export.DEFAULT_DT * params["r"] / params["tau"] == 1.0  # input gain, exactly
    assert params["v_leak"] == params["v_reset"] == 0.0 and params["v_threshold"] == 1.0


def test_threshold_is_strict_in_both():
    """A membrane exactly at v_th spikes in neither; one float step above it spikes in both."""
    above = np.nextafter(np.float32(1.0), np.float32(2.0))
    currents = np.array([[1.0, above, 0.999]], np.float32)
    ours = np.asarray(neurons.lif(jnp.asarray(currents), neurons.LIFConfig()))
    graph = nir.NIRGraph.from_list(
        export._neuron_node(nir, neurons.LIFConfig(), (3,), export.DEFAULT_DT)
    )
    _, spikes, _ = run_nir(graph, currents, 1, export.DEFAULT_DT)
    assert ours.tolist() == [[0.0, 1.0, 0.0]]
    assert spikes["lif"].tolist() == [[[0.0, 1.0, 0.0]]]


# ------------------------------------------------------------ graphs vs the interpreter


@needs_fashion
def test_quickstart_convnet_matches_the_interpreter(tmp_path):
    model = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=QUICKSTART_WIDTHS)
    images, _ = fashion_test_images(16)
    variables = random_variables(model, images.shape[1:])
    outputs, logits, report = compare_with_interpreter(
        model, variables, images, tmp_path / "convnet.nir"
    )
    print("convnet spikes vs the NIR interpreter:", json.dumps(report))
    np.testing.assert_allclose(outputs, logits, atol=1e-4, rtol=0)
    assert all(layer["disagreements"] == 0 for layer in report.values()), report
    assert all(0.001 < layer["rate"] < 0.9 for layer in report.values()), report  # not trivial


@needs_fashion
def test_resnet19_matches_the_interpreter(tmp_path):
    model = models.get_model("resnet19_snn", num_classes=10, time_steps=2)
    images, _ = fashion_test_images(2)
    variables = random_variables(model, images.shape[1:], seed=1)
    outputs, logits, report = compare_with_interpreter(
        model, variables, images, tmp_path / "resnet19.nir"
    )
    print("resnet19 spikes vs the NIR interpreter:", json.dumps(report))
    graph = nir.read(tmp_path / "resnet19.nir")
    # Residual additions: two edges into each block's output LIF.
    into_out = [dst for _, dst in graph.edges if dst.endswith(".lif_out")]
    assert len(into_out) == 2 * 8 and len(set(into_out)) == 8
    np.testing.assert_allclose(outputs, logits, atol=1e-4, rtol=0)
    assert all(layer["disagreements"] == 0 for layer in report.values()), report
    assert sum(layer["rate"] > 0 for layer in report.values()) == len(report), report


def test_vgg_with_non_leaky_neurons_matches_the_interpreter(tmp_path):
    """The other exporter paths: plain VGG stages, a global average pool, nir.IF (tau = 1)."""
    model = models.get_model(
        "vgg11_snn",
        num_classes=10,
        time_steps=3,
        stages=((8,), (8, 16)),
        neuron=neurons.LIFConfig(tau=1.0),
    )
    images = np.random.default_rng(2).normal(size=(4, 16, 16, 2)).astype(np.float32)
    variables = random_variables(model, images.shape[1:], seed=6)
    outputs, logits, report = compare_with_interpreter(model, variables, images, tmp_path / "v")
    graph = nir.read(tmp_path / "v")
    assert type(graph.nodes["stage2_conv2_lif"]).__name__ == "IF"
    assert graph.nodes["global_pool"].kernel_size.tolist() == [4, 4]
    np.testing.assert_allclose(outputs, logits, atol=1e-4, rtol=0)
    assert all(layer["disagreements"] == 0 for layer in report.values()), report
    assert all(layer["rate"] > 0 for layer in report.values()), report
    assert trees_equal(
        export.from_nir(graph, model, images.shape[1:]),
        export.fold_batch_norm(model, variables, images.shape[1:]),
    )


def test_graph_contents_and_metadata():
    model = models.get_model("convnet_snn", num_classes=10, time_steps=3, widths=(4, 8, 8))
    graph = export.to_nir(model, random_variables(model, (28, 28, 1)), (28, 28, 1))
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        **{f"stage{i}_conv1": "Conv2d" for i in (1, 2, 3)},
        **{f"stage{i}_conv1_lif": "LIF" for i in (1, 2, 3)},
        **{f"stage{i}_pool": "AvgPool2d" for i in (1, 2, 3)},
        "flatten": "Flatten",
        "fc": "Affine",
        "output": "Output",
    }
    assert graph.nodes["input"].input_type["input"].tolist() == [1, 28, 28]
    assert graph.nodes["fc"].weight.shape == (10, 8 * 3 * 3)
    assert graph.metadata["time_steps"] == 3 and graph.metadata["encoding"] == "direct"
    assert "mean over the time_steps" in graph.metadata["readout"]


# ---------------------------------------------------------------------- round trip


def test_round_trip_is_bit_identical(tmp_path):
    """NIR -> Flax gives the folded student exactly: identical arrays and identical outputs."""
    model = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=(8, 8, 16))
    shape = (28, 28, 1)
    variables = random_variables(model, shape, seed=3)
    folded = export.fold_batch_norm(model, variables, shape)
    export.write(export.to_nir(model, variables, shape), tmp_path / "a.nir")
    imported = export.from_nir(nir.read(tmp_path / "a.nir"), model, shape)

    assert trees_equal(imported, folded)
    assert trees_equal(export.fold_batch_norm(model, folded, shape), folded)  # idempotent
    images = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    np.testing.assert_array_equal(
        flax_run(model, imported, images)[0], flax_run(model, folded, images)[0]
    )
    # Flax -> NIR -> Flax -> NIR: every array of the second file equals the first's.
    again = export.to_nir(model, imported, shape)
    first = nir.read(tmp_path / "a.nir")
    for name, node in again.nodes.items():
        for field in ("weight", "bias", "tau", "r", "v_threshold"):
            if hasattr(node, field):
                np.testing.assert_array_equal(
                    getattr(node, field), getattr(first.nodes[name], field)
                )


def test_folding_changes_outputs_by_rounding_only():
    model = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=(8, 8, 16))
    variables = random_variables(model, (28, 28, 1), seed=4)
    images = np.random.default_rng(1).normal(size=(8, 28, 28, 1)).astype(np.float32)
    logits, spikes = flax_run(model, variables, images)
    folded_logits, folded_spikes = flax_run(
        model, export.fold_batch_norm(model, variables, (28, 28, 1)), images
    )
    np.testing.assert_allclose(folded_logits, logits, atol=1e-4)
    assert all(np.array_equal(spikes[name], folded_spikes[name]) for name in spikes)


def test_importer_rejects_another_model():
    shape = (28, 28, 1)
    small = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=(4, 4, 4))
    other = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=(4, 8, 4))
    graph = export.to_nir(small, random_variables(small, shape), shape)
    with pytest.raises(ValueError, match=r"not this model's.*weight shape"):
        export.from_nir(graph, other, shape)
    leaky = models.get_model(
        "convnet_snn",
        num_classes=10,
        time_steps=2,
        widths=(4, 4, 4),
        neuron=neurons.LIFConfig(tau=0.25),
    )
    with pytest.raises(ValueError, match=r"stage1_conv1_lif.*tau=0.5.*tau=0.25"):
        export.from_nir(graph, leaky, shape)


# --------------------------------------------------------------------------- errors


def test_parts_nir_cannot_express_are_named():
    resnet18 = models.get_model("resnet18_snn", num_classes=10, time_steps=2)
    with pytest.raises(export.NotExportableError, match=r"SpikingResNet18.*max-pool"):
        export.plan(resnet18, (64, 64, 3))
    teacher = models.get_model("convnet_ann", num_classes=10)
    with pytest.raises(export.NotExportableError, match="no NIR exporter for ConvNet"):
        export.plan(teacher, (28, 28, 1))


def quickstart_workdir(directory, *, with_student: bool = True):
    """A run directory like sastc_jax.main's: config.json and a student checkpoint."""
    config = load_file("configs/quickstart.py").get_config()
    (directory / "config.json").write_text(config.to_json_best_effort())
    model = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=QUICKSTART_WIDTHS)
    variables = random_variables(model, (28, 28, 1), seed=5)
    if with_student:
        state = {
            "step": np.int32(7),
            "params": {"student": variables["params"]},
            "batch_stats": variables["batch_stats"],
        }
        with checkpoints.Checkpoints(directory / "student") as ckpts:
            ckpts.save(
                7,
                state,
                metadata={
                    "model": "convnet_snn",
                    "num_classes": 10,
                    "dataset": "fashion_mnist",
                    "method": "sastc",
                    "step": 7,
                },
                metrics={"accuracy": 0.5},
            )
    return model, variables


def export_command(*args: str) -> int:
    """``python -m sastc_jax.interop ARGS`` in this process; returns its exit status."""
    return cli_flags.call(export_cli.main, args)


def test_export_command_writes_the_student(tmp_path, capsys):
    model, variables = quickstart_workdir(tmp_path)
    assert export_command(f"--workdir={tmp_path}", "--checkpoint=final") == 0
    assert f"wrote {tmp_path / 'student.nir'}" in capsys.readouterr().out
    mode = (tmp_path / "student.nir").stat().st_mode & 0o777
    assert mode == 0o666 & ~export._umask()  # as any new file, not the temporary's 0600
    graph = nir.read(tmp_path / "student.nir")
    assert graph.metadata["dataset"] == "fashion_mnist"
    assert graph.metadata["checkpoint"] == "final (step 7)"
    np.testing.assert_allclose(graph.metadata["input_mean"], [0.2860])
    imported = export.from_nir(graph, model, (28, 28, 1))
    folded = export.fold_batch_norm(model, variables, (28, 28, 1))
    assert trees_equal(imported, folded)
    assert export_command(f"--workdir={tmp_path}", f"--output={tmp_path / 'best.nir'}") == 0
    assert (tmp_path / "best.nir").is_file()


def test_export_command_errors_leave_no_file(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "untrained"
    empty.mkdir()
    quickstart_workdir(empty, with_student=False)
    assert export_command(f"--workdir={empty}") == 1
    assert "no student checkpoint to export" in capsys.readouterr().err
    assert export_command(f"--workdir={tmp_path / 'nowhere'}") == 1
    assert "no config.json" in capsys.readouterr().err

    run = tmp_path / "run"
    run.mkdir()
    quickstart_workdir(run)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for output, message in [
        (blocker / "student.nir", "is not an existing directory"),
        (tmp_path / "missing_dir" / "student.nir", "is not an existing directory"),
        (run, "it is a directory"),
    ]:
        assert export_command(f"--workdir={run}", f"--output={output}") == 1
        assert message in capsys.readouterr().err

    def failing_write(path, graph, **kwargs):  # a write that dies half-way
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nir, "write", failing_write)
    assert export_command(f"--workdir={run}", f"--output={tmp_path / 'out.nir'}") == 1
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "run", "untrained"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "student"]


# ---------------------------------------------------------------- snnTorch, a consumer


@needs_fashion
def test_snntorch_runs_the_file_like_flax(tmp_path):
    """snnTorch's importer (dt fixed at 1e-4, reset to zero without delay) on the same file."""
    pytest.importorskip("nirtorch", reason="the `nir-snntorch` extra is not installed")
    pytest.importorskip("snntorch", reason="the `nir-snntorch` extra is not installed")
    agreement = load_file("benchmarks/nir_agreement.py")
    model = models.get_model("convnet_snn", num_classes=10, time_steps=2, widths=QUICKSTART_WIDTHS)
    images, _ = fashion_test_images(16)
    variables = random_variables(model, images.shape[1:])
    export.write(export.to_nir(model, variables, images.shape[1:]), tmp_path / "s.nir")
    network = agreement.load_with_snntorch(tmp_path / "s.nir")
    logits, _ = flax_run(model, variables, images)
    np.testing.assert_allclose(agreement.snntorch_logits(network, images, 2), logits, atol=1e-4)
