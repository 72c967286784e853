"""Models built from their own description (:mod:`sastc_jax.models.architecture`).

A :class:`Network` turns its fields into its layers (``architecture()``) and its
``__call__`` runs exactly those layers, so the description that the NIR export and the
PyTorch import read is the model itself. A :class:`ResidualBlock` does the same for one
residual block (``describe(in_channels, features, stride)``).

Contract of every network (what the runner reads from its fields):

- ``num_classes``, ``dtype`` (compute dtype; parameters stay float32), ``init_scheme``
  (:mod:`sastc_jax.models.layers`), ``ops`` (:mod:`sastc_jax.ops`); ``block_cls`` (a
  :class:`ResidualBlock` class) where the architecture holds blocks;
- an ANN (``spiking = False``): input images ``(B, H, W, C)``, or event frames
  ``(B, T, H, W, C)`` averaged over T; float32 logits ``(B, num_classes)``; taps
  ``(B, H, W, C)``;
- an SNN (``spiking = True``, fields ``time_steps``, ``neuron``, ``remat``): input images
  ``(B, H, W, C)`` (direct encoding, repeated over T) or event frames ``(B, T, H, W, C)``
  with ``T == time_steps``; internally time-major ``(T, B, ...)``, convs, batch norms,
  pooling and dense layers run once on the merged T*B batch, only the LIF is scanned
  over T; float32 logits per time step ``(T, B, num_classes)``; taps ``(T, B, H, W, C)``;
- taps: the outputs of the layers and blocks marked ``tap``, in the compute dtype, sown
  into ``'intermediates'/'taps'`` from the top-level module in depth order.

A static image is repeated over T only where the first LIF (or block, or dense + LIF)
needs it: the encoder's conv + BN runs once on the B images. That is exactly the result
of convolving T repeated copies (the batch-norm statistics of T identical copies are those
of one copy) at 1/T of the cost. A dense layer followed by a LIF runs as
:func:`~sastc_jax.models.layers.dense_lif`.

``remat=True`` recomputes activations in the backward pass instead of keeping them, in the
form of the model's ``ops``: every residual block, or in a network without blocks every
conv + BN. An input that holds spikes by construction (a LIF output, or a max-pool of one)
is saved as int8.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax.models.architecture import Architecture, Block, Layer
from sastc_jax.models.layers import (
    LIF,
    ConvBN,
    Dtype,
    Ops,
    ann_input,
    avg_pool,
    batch_norm,
    conv,
    dense,
    dense_lif,
    global_avg_pool,
    max_pool,
    ops_field,
    repeat_over_time,
    spiking_input,
)
from sastc_jax.models.registry import TAPS_COLLECTION, TAPS_NAME
from sastc_jax.neurons import LIFConfig

Array = jax.Array


def _neuron(module: nn.Module, layer: Layer) -> LIFConfig:
    neuron = getattr(module, "neuron", None)
    if neuron is None:
        raise ValueError(
            f"{type(module).__name__}: the 'lif' layer {layer.name!r} needs a spiking module "
            "(one with a `neuron` field)."
        )
    return neuron


def _pad_channels(x: Array, layer: Layer) -> Array:
    extra = layer.features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"{layer.name}: cannot pad {x.shape[-1]} channels to {layer.features}.")
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _settings(module: nn.Module) -> dict:
    """The settings every conv and block of a network takes from it."""
    return {"dtype": module.dtype, "init_scheme": module.init_scheme, "ops": module.ops}


def run_layer(
    module: nn.Module, layer: Layer, x: Array, train: bool, conv_bn_class: type = ConvBN
) -> Array:
    """Run one described layer inside ``module``'s compact method (which supplies ``dtype``,
    ``init_scheme``, ``ops`` and, for a LIF, ``neuron``); ``conv_bn_class`` builds a
    ``'conv_bn'`` (a rematerialised :class:`ConvBN` under ``remat``)."""
    kind = layer.kind
    if kind in ("conv_bn", "conv"):
        shape = {"kernel_size": layer.kernel, "stride": layer.stride, "padding": layer.padding}
        settings = {**shape, **_settings(module), "name": layer.name}
        if kind == "conv":
            return conv(layer.features, **settings)(x)
        return conv_bn_class(layer.features, **settings)(x, train)
    if kind == "dense":
        dense_layer = dense(
            layer.features, dtype=module.dtype, init_scheme=module.init_scheme, name=layer.name
        )
        return dense_layer(x)
    if kind == "bn":
        return batch_norm(train, dtype=module.dtype, name=layer.name)(x)
    if kind == "lif":
        return LIF(_neuron(module, layer), name=layer.name)(x)
    if kind == "relu":
        return nn.relu(x)
    if kind == "max_pool" and not layer.ceil:
        return max_pool(x, layer.kernel, layer.stride, layer.padding)
    if kind == "avg_pool" and layer.stride == layer.kernel and not layer.padding:
        return avg_pool(x, layer.kernel, ceil_mode=layer.ceil)
    if kind == "global_avg_pool":
        return global_avg_pool(x)
    if kind == "flatten":
        return x.reshape((*x.shape[:-3], -1))
    if kind == "pad_channels":
        return _pad_channels(x, layer)
    raise ValueError(
        f"{type(module).__name__}: no runner for {layer} (pools: max-pools round down, "
        "average pools have no padding and stride = window)."
    )


def run_block(module: nn.Module, block: Block, x: Array, train: bool) -> Array:
    """Run a described residual block inside ``module``'s compact method: the body and the
    shortcut, their sum, then ``after``."""
    outputs = {"": x}
    y = x
    for layer in block.body:
        y = outputs[layer.name] = run_layer(module, layer, y, train)
    shortcut = outputs[block.shortcut_from]
    for layer in block.shortcut:
        shortcut = run_layer(module, layer, shortcut, train)
    y = y + shortcut
    for layer in block.after:
        y = run_layer(module, layer, y, train)
    return y


def _ends_in_spikes(block: Block) -> bool:
    last = (block.after or block.body)[-1]
    return last.kind == "lif"


class ResidualBlock(nn.Module):
    """A residual block built from its description, ``(..., H, W, C_in) -> (..., H/s, W/s,
    features)``.

    A subclass defines :meth:`describe`; its ``__call__`` runs that description for its
    input's channel count. The first argument of ``__call__`` is the one a
    rematerialised block saves as int8 when it holds spikes.
    """

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @classmethod
    def describe(cls, in_channels: int, features: int, stride: int) -> Block:
        """The block's layers for an input of ``in_channels`` channels."""
        raise NotImplementedError(f"{cls.__name__} must define describe().")

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        return run_block(self, self.describe(x.shape[-1], self.features, self.stride), x, train)


def _block_module(model: nn.Module, block: Block, remat: bool, binary: bool) -> nn.Module:
    """The module of ``model.block_cls`` that runs ``block`` (rematerialised under
    ``remat``, its input saved as int8 where ``binary``)."""
    block_class = model.block_cls
    if remat:
        input_name = list(inspect.signature(block_class.__call__).parameters)[1]
        block_class = model.ops.remat_module(
            block_class,
            static_argnames=("train",),
            binary_argnames=(input_name,) if binary else (),
        )
    spiking = {"neuron": model.neuron} if model.spiking else {}
    return block_class(block.features, block.stride, **_settings(model), **spiking, name=block.name)


def _conv_bn_class(model: nn.Module, remat: bool, binary: bool) -> type:
    if not remat:
        return ConvBN
    return model.ops.remat_module(
        ConvBN, static_argnames=("train",), binary_argnames=("x",) if binary else ()
    )


def run_network(model: nn.Module, items: Architecture, x: Array, train: bool) -> Array:
    """Run ``items`` (``model``'s description) on ``x`` inside ``model``'s compact method;
    float32 logits (see the module docstring for the layouts)."""
    if model.spiking:
        x, static = spiking_input(x, model.time_steps)
    else:
        x, static = ann_input(x), False
    x = x.astype(model.dtype)
    remat = getattr(model, "remat", False)
    remat_blocks = remat and any(isinstance(item, Block) for item in items)
    binary = False  # whether x holds only 0 and 1 by construction
    position = 0
    while position < len(items):
        item = items[position]
        following = items[position + 1] if position + 1 < len(items) else None
        fused = (
            isinstance(item, Layer)
            and item.kind == "dense"
            and isinstance(following, Layer)
            and following.kind == "lif"
        )
        if static and (isinstance(item, Block) or item.kind == "lif" or fused):
            x, static = repeat_over_time(x, model.time_steps), False
        if isinstance(item, Block):
            x = _block_module(model, item, remat_blocks, binary)(x, train)
            binary = _ends_in_spikes(item)
        elif fused:
            dense_layer = dense(
                item.features, dtype=model.dtype, init_scheme=model.init_scheme, name=item.name
            )
            x = dense_lif(dense_layer, LIF(_neuron(model, following), name=following.name), x)
            item, binary, position = following, True, position + 1
        else:
            conv_bn_class = _conv_bn_class(model, remat and not remat_blocks, binary)
            x = run_layer(model, item, x, train, conv_bn_class)
            binary = item.kind == "lif" or (binary and item.kind == "max_pool")
        if item.tap:
            model.sow(TAPS_COLLECTION, TAPS_NAME, x)
        position += 1
    if static:
        x = repeat_over_time(x, model.time_steps)
    return x.astype(jnp.float32)


class Network(nn.Module):
    """A model built from its description: a subclass defines its fields and
    :meth:`architecture`; ``__call__(x, train=True)`` runs those layers (module docstring).
    """

    spiking: ClassVar[bool] = False

    def architecture(self) -> Architecture:
        """The model's layers in execution order, from its fields; ``ValueError`` for
        fields it cannot be built from."""
        raise NotImplementedError(f"{type(self).__name__} must define architecture().")

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        return run_network(self, tuple(self.architecture()), x, train)


class Spiking(nn.Module):
    """The fields that make a :class:`Network` a spiking student, mixed in first:
    ``class SpikingResNet(Spiking, ResNet)`` is the ResNet with LIF neurons.

    ``time_steps`` (required): T; ``neuron``: the LIF parameters; ``init_scheme``: PyTorch's
    module defaults, as the release's spiking ResNet keeps them; ``remat``: rematerialise
    (module docstring). All keyword-only, so that the network's own fields keep their order.
    """

    time_steps: int = dataclasses.field(kw_only=True)
    neuron: LIFConfig = dataclasses.field(default=LIFConfig(), kw_only=True)
    init_scheme: str = dataclasses.field(default="pytorch", kw_only=True)
    remat: bool = dataclasses.field(default=False, kw_only=True)

    spiking: ClassVar[bool] = True
