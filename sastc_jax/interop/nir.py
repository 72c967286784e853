"""The trained spiking student as a NIR graph (Neuromorphic Intermediate Representation).

    python -m sastc_jax.interop --workdir=DIR [--checkpoint=best|final] [--output=student.nir]

writes the student of a training run as a NIR file (``nir.write``, HDF5) that NIR
consumers (snnTorch, Norse, Spyx, Sinabs, Rockpool, Lava, chips) load. In Python,
:func:`to_nir` turns a model and its variables into a ``nir.NIRGraph`` and
:func:`from_nir` turns such a graph back into Flax variables for the same model.

What the graph holds (NIR shapes are per example, channel-first ``(C, H, W)``):

- ``input``: ``nir.Input`` with the image shape ``(C, H, W)``;
- every conv + evaluation-mode batch norm as one ``nir.Conv2d`` whose weight and
  bias have the batch norm folded in (:func:`fold_batch_norm`), named by the Flax
  module path (``stage1_conv1``, ``stage2_block1.conv_bn1``, ...);
- every LIF layer as a ``nir.LIF`` (``stage1_conv1_lif``, ``stage2_block1.lif_out``);
- a residual addition as two edges into the block's output LIF node (NIR sums the
  inputs arriving at a node): from ``conv_bn2`` and from the block input (identity
  shortcut) or from the ``shortcut`` conv;
- 2x2 average pools as ``nir.AvgPool2d``; a global average pool as ``nir.AvgPool2d``
  over the whole map followed by ``nir.Flatten``; the ConvNet's flatten as
  ``nir.Flatten`` (the dense weights are permuted from Flax's (H, W, C) order to
  NIR's (C, H, W) order);
- dense layers as ``nir.Affine``; ``output``: ``nir.Output`` with the logits.

The graph runs once per time step; its metadata states the encoding (the same
normalised image is the input at each of the ``time_steps`` steps, or event frame
``t`` at step ``t``), the readout (the mean over the time steps of the per-step
outputs, argmax = prediction), ``dt`` and the discrete neuron it encodes.

Exact neuron mapping
--------------------
Our LIF (:mod:`sastc_jax.neurons`) is discrete, with decay factor ``tau`` in [0, 1)::

    u_t = tau * v_{t-1} + x_t;   s_t = [u_t > v_th];   v_t = u_t * (1 - s_t)

NIR's LIF is continuous, ``tau_n dv/dt = (v_leak - v) + r I``, spike ``z = [v > v_threshold]``,
then ``v = v_reset`` where ``z = 1``. Its forward-Euler update with step ``dt`` is::

    v_t = v_{t-1} + (dt / tau_n) * (v_leak - v_{t-1} + r * I_t)
        = (1 - dt / tau_n) * v_{t-1} + (dt / tau_n) * v_leak + (dt * r / tau_n) * I_t

Matching the coefficients with ``I_t = x_t``: ``1 - dt / tau_n = tau``,
``dt * r / tau_n = 1`` and ``v_leak = 0`` give::

    tau_n = dt / (1 - tau),   r = tau_n / dt = 1 / (1 - tau),   v_leak = 0,
    v_threshold = v_th,       v_reset = 0

and the update becomes ``v_t = tau * v_{t-1} + x_t``: ours, for any ``dt``. This module
writes ``dt = 1e-4`` (:data:`DEFAULT_DT`; stated in the metadata as ``dt``) because
snnTorch's importer fixes its time step to 1e-4 s; with the default ``tau = 0.5`` that
is ``tau_n = 2e-4`` and ``r = 2``, for which ``dt / tau_n`` and ``dt * r / tau_n`` are
exactly 0.5 and 1 in floating point. The neuron constants are stored in float64.
A non-leaky neuron (``tau = 1``) has no finite ``tau_n``; it is written as ``nir.IF``
(``dv/dt = r I``) with ``r = 1 / dt``, whose Euler step ``v + dt * r * I`` is again ours.

Threshold test: NIR's LIF and IF spike where ``v > v_threshold``, strictly, as ours
does: a membrane exactly at the threshold does not spike in either. Nothing about
the threshold is lost. The reset to ``v_reset = 0`` is a hard reset after the spike
test at the same step, as ours.

Parts NIR cannot express raise :class:`NotExportableError` naming them (for example
the max-pool of the ImageNet stem: NIR has sum and average pooling only).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sastc_jax.data.specs import dataset_spec
from sastc_jax.interop.nir_plan import IDENTITY_VARIANCE, fold_batch_norm, plan
from sastc_jax.interop.nir_plan import NotExportableError as NotExportableError
from sastc_jax.models.registry import get_model_class, list_models
from sastc_jax.neurons import LIFConfig

DEFAULT_DT = 1e-4
CHECKPOINTS = ("best", "final")  # --checkpoint: the selected or the last saved step
NIR_INSTALL_HINT = "install the `nir` extra: pip install 'sastc-jax[nir]'"


def _nir():
    try:
        import nir
    except ImportError as err:
        raise ImportError(f"NIR export needs the `nir` package: {NIR_INSTALL_HINT}.") from err
    return nir


# --------------------------------------------------------------------------- neurons


def neuron_parameters(neuron: LIFConfig, dt: float = DEFAULT_DT) -> dict[str, float]:
    """NIR parameters of our discrete LIF at time step ``dt`` (derivation: module docstring).

    ``tau < 1``: ``{'tau', 'r', 'v_leak', 'v_threshold', 'v_reset'}`` of a ``nir.LIF``;
    ``tau == 1``: ``{'r', 'v_threshold', 'v_reset'}`` of a ``nir.IF``.
    """
    if not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}.")
    if neuron.tau == 1.0:
        return {"r": 1.0 / dt, "v_threshold": neuron.v_threshold, "v_reset": 0.0}
    decay = 1.0 - neuron.tau
    return {
        "tau": dt / decay,
        "r": 1.0 / decay,
        "v_leak": 0.0,
        "v_threshold": neuron.v_threshold,
        "v_reset": 0.0,
    }


def _neuron_node(nir, neuron: LIFConfig, shape: tuple[int, ...], dt: float):
    values = {
        key: np.full(shape, value, np.float64)
        for key, value in neuron_parameters(neuron, dt).items()
    }
    return nir.IF(**values) if neuron.tau == 1.0 else nir.LIF(**values)


def _neuron_from_node(node, dt: float, name: str) -> LIFConfig:
    """Our LIF constants for a NIR LIF/IF node at ``dt``; ValueError if it is not one of ours."""

    def uniform(values, what: str) -> float:
        values = np.asarray(values, np.float64)
        if values.size == 0 or not np.all(values == values.flat[0]):
            raise ValueError(f"node {name!r}: {what} differs between neurons; ours share one.")
        return float(values.flat[0])

    kind = type(node).__name__
    if kind not in ("LIF", "IF"):
        raise ValueError(f"node {name!r} is a nir.{kind}; the model has LIF neurons there.")
    if uniform(node.v_reset, "v_reset") != 0.0:
        raise ValueError(f"node {name!r}: v_reset must be 0 (our hard reset); got {node.v_reset}.")
    threshold = uniform(node.v_threshold, "v_threshold")
    if kind == "IF":
        if not np.isclose(dt * uniform(node.r, "r"), 1.0, rtol=1e-12, atol=0):
            raise ValueError(f"node {name!r}: IF needs r = 1/dt = {1 / dt}; got {node.r}.")
        return LIFConfig(tau=1.0, v_threshold=threshold)
    tau_n, r = uniform(node.tau, "tau"), uniform(node.r, "r")
    if uniform(node.v_leak, "v_leak") != 0.0 or not np.isclose(dt * r / tau_n, 1.0, rtol=1e-12):
        raise ValueError(
            f"node {name!r}: v_leak = 0 and r = tau / dt are needed for our discrete LIF at "
            f"dt = {dt}; got v_leak = {node.v_leak.flat[0]}, r = {r}, tau = {tau_n}."
        )
    return LIFConfig(tau=1.0 - dt / tau_n, v_threshold=threshold)


# ---------------------------------------------------------------------- model <-> NIR


def model_name(model: nn.Module) -> str:
    """The registry name of ``model``'s class (e.g. 'convnet_snn')."""
    for name in list_models():
        if get_model_class(name) is type(model):
            return name
    return type(model).__name__


def graph_metadata(model: nn.Module, dt: float, encoding: str = "direct") -> dict[str, Any]:
    """The graph-level metadata :func:`to_nir` writes (extended by ``extra_metadata``)."""
    if encoding not in ("direct", "event_frames"):
        raise ValueError(f"encoding must be 'direct' or 'event_frames'; got {encoding!r}.")
    inputs = {
        "direct": "direct encoding: the same normalised image (C, H, W) is the input at "
        "every one of the time_steps steps",
        "event_frames": "event frames: frame t (C, H, W) is the input at step t",
    }[encoding]
    return {
        "producer": "sastc_jax.interop.nir",
        "model": model_name(model),
        "time_steps": int(model.time_steps),
        "dt": float(dt),
        "encoding": encoding,
        "input": inputs,
        "readout": "the graph runs once per time step; the logits are the mean over the "
        "time_steps steps of the output node; the prediction is their argmax",
        "neuron": (
            f"discrete LIF u_t = {model.neuron.tau} * v_(t-1) + x_t, spike if u_t > "
            f"{model.neuron.v_threshold}, hard reset to 0; as nir.LIF at dt = {dt} (nir.IF, "
            "r = 1 / dt, for decay 1): tau = "
            "dt / (1 - decay), r = 1 / (1 - decay), v_leak = 0, v_reset = 0"
        ),
        "batch_norm": "evaluation-mode batch norm folded into each Conv2d's weight and bias",
    }


def to_nir(
    model: nn.Module,
    variables: Mapping,
    input_shape: Sequence[int],
    *,
    dt: float = DEFAULT_DT,
    encoding: str = "direct",
    extra_metadata: Mapping[str, Any] | None = None,
):
    """The student ``model`` with ``variables`` ({'params', 'batch_stats'}) as a ``nir.NIRGraph``.

    ``input_shape``: one example's (H, W, C). Batch norms are folded
    (:func:`fold_batch_norm`); weights are float32, neuron constants float64.
    Raises :class:`NotExportableError` naming a part NIR cannot express.
    """
    nir = _nir()
    layers = plan(model, input_shape)
    folded = fold_batch_norm(model, variables, input_shape)
    params = traverse_util.flatten_dict(folded["params"])
    height, width, channels = (int(n) for n in input_shape)
    nodes = {"input": nir.Input(input_type={"input": np.array([channels, height, width])})}
    edges = []
    for layer in layers:
        if layer.kind == "conv":
            kernel = params[(*layer.path, "conv", "kernel")]  # (kh, kw, in, out)
            nodes[layer.name] = nir.Conv2d(
                input_shape=layer.in_shape[1:],
                weight=np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)),
                stride=(layer.stride, layer.stride),
                padding=(layer.padding, layer.padding),
                dilation=(1, 1),
                groups=1,
                bias=params[(*layer.path, "bn", "bias")],
            )
        elif layer.kind == "lif":
            nodes[layer.name] = _neuron_node(nir, model.neuron, layer.out_shape, dt)
        elif layer.kind == "pool":
            window = np.array([layer.kernel, layer.kernel])
            nodes[layer.name] = nir.AvgPool2d(
                kernel_size=window, stride=window, padding=np.array([0, 0])
            )
        elif layer.kind == "flatten":
            nodes[layer.name] = nir.Flatten(
                input_type={"input": np.array(layer.in_shape)}, start_dim=0, end_dim=-1
            )
        else:  # dense
            kernel = params[(*layer.path, "kernel")]  # (in, out), Flax order of the inputs
            if layer.flattened_map is not None:
                c, h, w = layer.flattened_map
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
            nodes[layer.name] = nir.Affine(
                weight=np.ascontiguousarray(kernel.T), bias=params[(*layer.path, "bias")]
            )
        edges += [(src, layer.name) for src in layer.inputs]
    nodes["output"] = nir.Output(output_type={"output": np.array(layers[-1].out_shape)})
    edges.append((layers[-1].name, "output"))
    metadata = {**graph_metadata(model, dt, encoding), **(extra_metadata or {})}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def from_nir(graph, model: nn.Module, input_shape: Sequence[int], *, dt: float | None = None):
    """Flax variables ({'params', 'batch_stats'}) of ``model`` from a graph :func:`to_nir` wrote.

    The graph must have exactly the nodes and edges ``model`` exports to, and LIF
    nodes that are ``model.neuron`` at ``dt`` (default: the graph's ``metadata['dt']``).
    Convs come back with their folded weight and bias (batch norm = ``x + bias``), so
    ``to_nir(model, from_nir(g, ...))`` reproduces ``g``'s arrays bit for bit. Raises
    ``ValueError`` saying what differs.
    """
    dt = float(graph.metadata.get("dt", DEFAULT_DT) if dt is None else dt)
    expected = to_nir(model, _zero_variables(model, input_shape), input_shape, dt=dt)
    _check_same_structure(graph, expected)
    params, stats = {}, {}
    for layer in plan(model, input_shape):
        node = graph.nodes[layer.name]
        if layer.kind == "conv":
            weight = np.asarray(node.weight, np.float32)
            bias = np.asarray(node.bias, np.float32)
            params[(*layer.path, "conv", "kernel")] = weight.transpose(2, 3, 1, 0)
            params[(*layer.path, "bn", "bias")] = bias
            params[(*layer.path, "bn", "scale")] = np.ones_like(bias)
            stats[(*layer.path, "bn", "mean")] = np.zeros_like(bias)
            stats[(*layer.path, "bn", "var")] = np.full_like(bias, IDENTITY_VARIANCE)
        elif layer.kind == "dense":
            kernel = np.asarray(node.weight, np.float32).T
            if layer.flattened_map is not None:
                c, h, w = layer.flattened_map
                kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
            params[(*layer.path, "kernel")] = kernel
            params[(*layer.path, "bias")] = np.asarray(node.bias, np.float32)
        elif layer.kind == "lif":
            neuron = _neuron_from_node(node, dt, layer.name)
            if not (
                np.isclose(neuron.tau, model.neuron.tau, rtol=0, atol=1e-12)
                and neuron.v_threshold == model.neuron.v_threshold
            ):
                raise ValueError(
                    f"node {layer.name!r} holds LIF tau={neuron.tau}, v_th={neuron.v_threshold} "
                    f"at dt={dt}; the model has tau={model.neuron.tau}, "
                    f"v_th={model.neuron.v_threshold}. Build the model with that LIFConfig."
                )
    return {
        "params": traverse_util.unflatten_dict(params),
        "batch_stats": traverse_util.unflatten_dict(stats),
    }


def _zero_variables(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """Variables of ``model`` (all zeros) with the right structure and shapes, cheaply."""
    sample = jnp.zeros((1, *input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)


def _check_same_structure(graph, expected) -> None:
    problems = []
    for name, node in expected.nodes.items():
        if name not in graph.nodes:
            problems.append(f"node {name!r} ({type(node).__name__}) is missing")
        elif type(graph.nodes[name]).__name__ != type(node).__name__:
            problems.append(
                f"node {name!r} is a {type(graph.nodes[name]).__name__}, "
                f"expected {type(node).__name__}"
            )
    problems += [f"unexpected node {name!r}" for name in graph.nodes if name not in expected.nodes]
    have = {(str(a), str(b)) for a, b in graph.edges}
    want = set(expected.edges)
    problems += [f"missing edge {edge}" for edge in sorted(want - have)]
    problems += [f"unexpected edge {edge}" for edge in sorted(have - want)]
    for name, node in expected.nodes.items():
        other = graph.nodes.get(name)
        for field in ("weight", "bias"):
            if other is None or not (hasattr(node, field) and hasattr(other, field)):
                continue
            have, want = np.shape(getattr(other, field)), np.shape(getattr(node, field))
            if have != want:
                problems.append(f"node {name!r}: {field} shape {have}, expected {want}")
    if problems:
        raise ValueError(
            "the NIR graph is not this model's: "
            + "; ".join(problems[:10])
            + (f"; ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
        )


# ------------------------------------------------------------------------------ files


def write(graph, output: str | os.PathLike) -> Path:
    """Write ``graph`` to ``output`` with ``nir.write``, atomically.

    The file is written next to ``output`` under a temporary name and renamed once
    complete, so a failure leaves no partial file. ``OSError`` with the path and the
    reason if the location cannot be written.
    """
    nir = _nir()
    path = Path(output).absolute()
    parent = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the NIR graph to {path}: it is a directory.")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write the NIR graph to {path}: {parent} is not an existing directory."
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise OSError(f"cannot write the NIR graph to {path}: {err.strerror or err}.") from err
    os.close(handle)
    try:
        nir.write(temporary, graph)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would give
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(f"cannot write the NIR graph to {path}: {err}") from err
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read(path: str | os.PathLike):
    """``nir.read`` with a clear error for a missing file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no NIR file at {path}.")
    return _nir().read(path)


# --------------------------------------------------------------------------- workdirs


def input_shape_for(config) -> tuple[int, int, int]:
    """One example's (H, W, C) as the config's dataset pipeline delivers it (one frame of
    an event dataset), from the dataset's spec (:mod:`sastc_jax.data.specs`)."""
    return dataset_spec(config.dataset.name).input_shape(config.dataset.image_size)


def load_student(workdir: str | os.PathLike, checkpoint: str = "best"):
    """``(model, variables, config, record)`` of the student a run saved in ``workdir``
    (:func:`sastc_jax.train.load_run`).

    ``checkpoint``: 'best' (the selected checkpoint: highest validation accuracy, or test
    accuracy without a validation split) or 'final' (the last saved step).
    Raises FileNotFoundError / CheckpointError naming what is missing.
    """
    from sastc_jax import checkpoints, train

    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {sorted(CHECKPOINTS)}; got {checkpoint!r}.")
    try:
        run = train.load_run(workdir, checkpoint)
    except checkpoints.CheckpointError as err:
        raise checkpoints.CheckpointError(
            f"no student checkpoint to export in {Path(workdir)}: {err}"
        ) from err
    return run.model, run.variables, run.config, run.metadata


def export_workdir(
    workdir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    output: str | os.PathLike | None = None,
    dt: float = DEFAULT_DT,
) -> Path:
    """Export the student of a training run to a NIR file; returns the file's path.

    ``output`` defaults to ``WORKDIR/student.nir``. Nothing is written on error.
    """
    model, variables, config, record = load_student(workdir, checkpoint)
    input_shape = input_shape_for(config)
    dataset = config.dataset.name
    metadata = {
        "dataset": dataset,
        "num_classes": int(record["num_classes"]),
        "checkpoint": f"{checkpoint} (step {record.get('step')})",
        "distillation_method": str(record.get("method", "")),
    }
    spec = dataset_spec(dataset)
    if not spec.event_frames:
        metadata["input_normalisation"] = "per channel (pixel / 255 - mean) / std"
        metadata["input_mean"] = np.array(spec.mean, np.float64)
        metadata["input_std"] = np.array(spec.std, np.float64)
    encoding = "event_frames" if spec.event_frames else "direct"
    graph = to_nir(model, variables, input_shape, dt=dt, encoding=encoding, extra_metadata=metadata)
    return write(graph, Path(workdir) / "student.nir" if output is None else output)
