"""The plan of a NIR export: a spiking student as the ordered list of NIR nodes it becomes
(:func:`plan`, read from the model's description in :mod:`sastc_jax.models.architecture`),
and its evaluation-mode batch norms folded into the convolutions (:func:`fold_batch_norm`).

NIR shapes are per example, channel-first ``(C, H, W)``; parts NIR cannot express raise
:class:`NotExportableError` naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from sastc_jax.models import architecture
from sastc_jax.models.layers import BATCH_NORM_EPSILON


class NotExportableError(ValueError):
    """The model has a part that no NIR node expresses exactly."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """One node of the exported graph, with its Flax location and its NIR shapes.

    ``kind``: 'conv' (conv + BN), 'lif', 'pool' (average), 'flatten' or 'dense'.
    ``path``: the Flax module path of a conv or dense layer's variables.
    ``kernel``, ``stride``, ``padding``: a conv's square kernel size, stride and padding;
    a pool's window (its stride too).
    ``in_shape`` / ``out_shape``: NIR per-example shapes, ``(C, H, W)`` or ``(N,)``.
    ``flattened_map``: for a dense layer fed by a flattened ``(C, H, W)`` map, that shape
    (Flax flattens it in (H, W, C) order, NIR in (C, H, W) order).
    """

    kind: str
    name: str
    inputs: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    path: tuple[str, ...] = ()
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    flattened_map: tuple[int, int, int] | None = None


class _Planner:
    """Collects the layers of a model in execution order, tracking NIR shapes."""

    def __init__(self, input_shape_chw: tuple[int, int, int]):
        self.layers: list[Layer] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": tuple(input_shape_chw)}

    def _add(self, layer: Layer) -> str:
        self.layers.append(layer)
        self.shapes[layer.name] = layer.out_shape
        return layer.name

    def conv(
        self, path: tuple[str, ...], src: str, features: int, kernel: int, stride: int, pad: int
    ):
        channels, height, width = self.shapes[src]
        out = (
            features,
            (height + 2 * pad - kernel) // stride + 1,
            (width + 2 * pad - kernel) // stride + 1,
        )
        name = ".".join(path)
        return self._add(
            Layer("conv", name, (src,), (channels, height, width), out, path, kernel, stride, pad)
        )

    def lif(self, name: str, *srcs: str) -> str:
        shapes = {self.shapes[src] for src in srcs}
        if len(shapes) != 1:
            raise ValueError(f"inputs of {name} have different shapes {sorted(shapes)}")
        shape = shapes.pop()
        return self._add(Layer("lif", name, srcs, shape, shape))

    def avg_pool(self, name: str, src: str, window: int | None = None) -> str:
        """Non-overlapping ``window`` pool (floor); ``None`` pools the whole map."""
        channels, height, width = self.shapes[src]
        if window is None:
            if height != width:
                raise NotExportableError(
                    f"{name}: global average pool of a non-square {height}x{width} map"
                )
            window = height
        out = (channels, height // window, width // window)
        return self._add(
            Layer("pool", name, (src,), self.shapes[src], out, kernel=window, stride=window)
        )

    def flatten(self, name: str, src: str) -> str:
        shape = self.shapes[src]
        return self._add(Layer("flatten", name, (src,), shape, (int(np.prod(shape)),)))

    def dense(self, path: tuple[str, ...], src: str, features: int) -> str:
        layer = next((item for item in self.layers if item.name == src), None)
        flattened = None
        if layer is not None and layer.kind == "flatten" and np.prod(layer.in_shape[1:]) > 1:
            flattened = layer.in_shape
        return self._add(
            Layer(
                "dense",
                ".".join(path),
                (src,),
                self.shapes[src],
                (features,),
                path,
                flattened_map=flattened,
            )
        )


# Why a layer kind of a student's description has no NIR node.
_NOT_EXPRESSIBLE = {
    "max_pool": "NIR 1.0 pools by sum or average only; a SpikingResNet with stem='cifar' "
    "has no max-pool",
    "relu": "the graph holds spiking students only",
    "bn": "only a batch norm right after its conv is folded (conv_bn)",
    "conv": "only a conv with its batch norm (conv_bn) is exported",
    "pad_channels": "NIR has no channel padding",
}


def _not_expressible(model: nn.Module, name: str, layer: architecture.Layer) -> NotExportableError:
    shape = f" {layer.kernel}x{layer.kernel}/{layer.stride}" if layer.kernel else ""
    why = _NOT_EXPRESSIBLE.get(layer.kind, "it has no NIR node")
    return NotExportableError(
        f"{type(model).__name__}: {name} ({layer.kind.replace('_', '-')}{shape}) has no "
        f"NIR node: {why}."
    )


def _plan_layer(
    planner: _Planner,
    model: nn.Module,
    layer: architecture.Layer,
    sources: tuple[str, ...],
    prefix: tuple[str, ...] = (),
) -> str:
    """Add one described layer fed by ``sources`` (more than one: their sum, a LIF only)."""
    path = (*prefix, layer.name)
    name = ".".join(path)
    if len(sources) > 1 and layer.kind != "lif":
        raise _not_expressible(model, name, layer)
    if layer.kind == "conv_bn":
        return planner.conv(
            path, sources[0], layer.features, layer.kernel, layer.stride, layer.padding
        )
    if layer.kind == "lif":
        return planner.lif(name, *sources)
    pooled_apart = layer.stride == layer.kernel and not (layer.padding or layer.ceil)
    if layer.kind == "avg_pool" and pooled_apart:  # non-overlapping windows, floor
        return planner.avg_pool(name, sources[0], layer.kernel)
    if layer.kind == "global_avg_pool":  # no NIR node: a whole-map pool, then a flatten
        return planner.flatten("flatten", planner.avg_pool(name, sources[0]))
    if layer.kind == "flatten":
        return planner.flatten(name, sources[0])
    if layer.kind == "dense":
        return planner.dense(path, sources[0], layer.features)
    raise _not_expressible(model, name, layer)


def _plan_block(planner: _Planner, model: nn.Module, block: architecture.Block, x: str) -> str:
    """A residual block: the body and the shortcut from ``x``, their sum into the first
    ``after`` layer (NIR sums the edges arriving at a node)."""
    prefix = (block.name,)
    outputs = {"": x}
    y = x
    for layer in block.body:
        y = outputs[layer.name] = _plan_layer(planner, model, layer, (y,), prefix)
    shortcut = outputs[block.shortcut_from]
    for layer in block.shortcut:
        shortcut = _plan_layer(planner, model, layer, (shortcut,), prefix)
    if not block.after:
        raise NotExportableError(
            f"{type(model).__name__}: {block.name} ends in a sum with no neuron after it; "
            "NIR sums inputs only at a node."
        )
    x = _plan_layer(planner, model, block.after[0], (y, shortcut), prefix)
    for layer in block.after[1:]:
        x = _plan_layer(planner, model, layer, (x,), prefix)
    return x


def plan(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """The graph's layers for ``model`` on per-example inputs ``input_shape = (H, W, C)``,
    read from its description (:func:`sastc_jax.models.architecture.describe`).

    Raises :class:`NotExportableError` for a model that is not a described student or has
    a part NIR cannot express.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be one example's (H, W, C); got {tuple(input_shape)}.")
    if not getattr(model, "spiking", False) or not architecture.is_described(model):
        raise NotExportableError(
            f"no NIR exporter for {type(model).__name__}; exportable students: "
            "SpikingConvNet (convnet_snn), SpikingVGG11 (vgg11_snn), SpikingResNet with "
            "stem='cifar' (resnet19_snn)."
        )
    height, width, channels = (int(n) for n in input_shape)
    planner = _Planner((channels, height, width))
    x = "input"
    for item in architecture.describe(model):
        if isinstance(item, architecture.Block):
            x = _plan_block(planner, model, item, x)
        else:
            x = _plan_layer(planner, model, item, (x,))
    return planner.layers


# ------------------------------------------------------------------------ batch norm


def _identity_variance(epsilon: float) -> np.float32:
    """The float32 variance ``v`` with ``v + epsilon == 1`` exactly (BN becomes ``x + bias``)."""
    var = np.float32(1.0) - np.float32(epsilon)
    while var + np.float32(epsilon) != np.float32(1.0):
        var = np.nextafter(var, np.float32(2.0) if var + np.float32(epsilon) < 1 else 0)
    return var


IDENTITY_VARIANCE = _identity_variance(BATCH_NORM_EPSILON)


def fold_batch_norm(model: nn.Module, variables: Mapping, input_shape: Sequence[int]) -> dict:
    """Variables of the same model with each evaluation-mode batch norm folded into its conv.

    For ``y = (conv(x, W) - mean) * scale / sqrt(var + eps) + bias`` (Flax ``BatchNorm``
    with running averages) the conv kernel becomes ``W * m`` with ``m = scale / sqrt(var +
    eps)`` per output channel and the batch norm becomes ``x + (bias - mean * m)``: scale 1,
    mean 0 and the variance :data:`IDENTITY_VARIANCE` that makes ``1 / sqrt(var + eps)``
    exactly 1. Computed in float32 like Flax, so folding folded variables changes nothing;
    the folded network differs from the original only by float32 rounding.
    """
    params = traverse_util.flatten_dict(jax.device_get(dict(variables["params"])))
    stats = traverse_util.flatten_dict(jax.device_get(dict(variables["batch_stats"])))
    params = {key: np.asarray(value, np.float32) for key, value in params.items()}
    stats = {key: np.asarray(value, np.float32) for key, value in stats.items()}
    eps = np.float32(BATCH_NORM_EPSILON)
    for layer in plan(model, input_shape):
        if layer.kind != "conv":
            continue
        conv, bn = (*layer.path, "conv"), (*layer.path, "bn")
        multiplier = params[(*bn, "scale")] / np.sqrt(stats[(*bn, "var")] + eps)
        params[(*conv, "kernel")] = params[(*conv, "kernel")] * multiplier
        params[(*bn, "bias")] = params[(*bn, "bias")] - stats[(*bn, "mean")] * multiplier
        params[(*bn, "scale")] = np.ones_like(multiplier)
        stats[(*bn, "mean")] = np.zeros_like(multiplier)
        stats[(*bn, "var")] = np.full_like(multiplier, IDENTITY_VARIANCE)
    return {
        "params": traverse_util.unflatten_dict(params),
        "batch_stats": traverse_util.unflatten_dict(stats),
    }
