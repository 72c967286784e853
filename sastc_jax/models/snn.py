"""Spiking student networks (docs/method.md §2-§4).

Common contract of every SNN here:

- input: static images ``(B, H, W, C)`` (direct encoding: the image is
  repeated ``time_steps`` times) or event frames ``(B, T, H, W, C)`` with
  ``T == time_steps``; anything else raises ``ValueError``;
- internally time-major ``(T, B, H, W, C)``: convs, batch norms, pooling and
  dense layers run once on the merged T*B batch, only the LIF is scanned over T;
  the first conv + BN + LIF is the encoder;
- output: float32 logits per time step ``(T, B, num_classes)`` from a plain
  dense layer (no neuron); the prediction is their mean over T;
- taps: each stage output, ``(T, B, H, W, C)`` in the compute dtype, sown into
  ``'intermediates'/'taps'`` from the top-level module in depth order.

Initialisation: PyTorch's module defaults (``init_scheme='pytorch'``), as the release's
spiking ResNet (``zero_init_residual=False``) keeps them: conv and dense weights
uniform in +-1/sqrt(fan_in), dense biases uniform in +-1/sqrt(fan_in), BN scale 1
and bias 0. ``init_scheme='kaiming_fan_out'`` gives Kaiming-normal fan-out convs and zero
dense biases instead (see :mod:`sastc_jax.models.layers`).

``remat=True`` recomputes activations in the backward pass instead of keeping them (the
same numbers, less memory, about one more forward pass of compute), in the form of the
model's ``ops`` (:mod:`sastc_jax.ops`): every residual block of the spiking ResNets,
every conv + BN of the VGG and the ConvNet (their LIF states are kept). Block inputs
saved as int8 are spikes by construction: LIF outputs, or a max-pool of them.

For a static input the encoder's conv + BN runs once on the B images and is
broadcast over T before the LIF. That is exactly the result of convolving the
T repeated copies (the batch-norm mean and variance of T identical copies are
those of one copy) at 1/T of the cost.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax.models.layers import (
    LIF,
    ConvBN,
    Dtype,
    Ops,
    avg_pool,
    dense,
    dense_lif,
    global_avg_pool,
    max_pool,
    ops_field,
    repeat_over_time,
    spiking_input,
)
from sastc_jax.models.registry import TAPS_COLLECTION, TAPS_NAME, register
from sastc_jax.neurons import LIFConfig

Array = jax.Array


def spiking_encoder(
    x: Array,
    conv_bn: ConvBN,
    neuron: LIF,
    time_steps: int,
    dtype: Dtype,
    train: bool,
) -> Array:
    """Encode an SNN input with its first conv + BN + LIF; returns spikes ``(T, B, H', W', C')``."""
    x, is_static = spiking_input(x, time_steps)
    currents = conv_bn(x.astype(dtype), train)
    if is_static:
        currents = repeat_over_time(currents, time_steps)
    return neuron(currents)


def spiking_head(
    x: Array,
    hidden_features: int | None,
    num_classes: int,
    neuron: LIFConfig,
    dtype: Dtype,
    init_scheme: str,
) -> Array:
    """Global average pool per time step, optional dense + LIF, dense to the classes.

    ``(T, B, H, W, C) -> (T, B, num_classes)`` float32 logits. Must be called
    from a compact method (it creates the dense layers there).
    """
    x = global_avg_pool(x)
    if hidden_features is not None:
        x = dense_lif(
            dense(hidden_features, dtype=dtype, init_scheme=init_scheme, name="fc_hidden"),
            LIF(neuron, name="fc_hidden_lif"),
            x,
        )
    return dense(num_classes, dtype=dtype, init_scheme=init_scheme, name="fc")(x).astype(
        jnp.float32
    )


class SpikingBasicBlock(nn.Module):
    """Spiking residual basic block, ``(T, B, H, W, C_in) -> (T, B, H/s, W/s, features)``.

    conv3x3(stride) - BN - LIF - conv3x3 - BN, plus the shortcut (identity, or
    conv1x1(stride) + BN where the shape changes), then LIF after the sum.
    """

    features: int
    stride: int = 1
    neuron: LIFConfig = LIFConfig()
    dtype: Dtype = jnp.float32
    init_scheme: str = "pytorch"
    ops: Ops = ops_field()

    @nn.compact
    def __call__(self, spikes: Array, train: bool = True) -> Array:
        conv_bn = functools.partial(
            ConvBN, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        y = conv_bn(self.features, 3, self.stride, name="conv_bn1")(spikes, train)
        y = LIF(self.neuron, name="lif1")(y)
        y = conv_bn(self.features, 3, 1, name="conv_bn2")(y, train)
        shortcut = spikes
        if self.stride != 1 or spikes.shape[-1] != self.features:
            shortcut = conv_bn(self.features, 1, self.stride, name="shortcut")(spikes, train)
        return LIF(self.neuron, name="lif_out")(y + shortcut)


class SpikingResNet(nn.Module):
    """Spiking ResNet with basic blocks; the stage layout is given by the attributes.

    ``stem='cifar'``: conv3x3 (``stem_width``) + BN + LIF, full resolution.
    ``stem='imagenet'``: conv7x7/2 + BN + LIF + max-pool 3x3/2 (per time step).
    Then ``stage_sizes[i]`` basic blocks of width ``widths[i]``, the first one
    with stride ``strides[i]``; global average pool per time step; optional
    dense ``hidden_features`` + LIF; dense to ``num_classes``.
    Taps: the output of every stage. ``remat`` rematerialises every block.
    """

    num_classes: int
    time_steps: int
    stage_sizes: Sequence[int] = (3, 3, 2)
    widths: Sequence[int] = (128, 256, 512)
    strides: Sequence[int] = (1, 2, 2)
    stem: str = "cifar"
    stem_width: int = 64
    hidden_features: int | None = 256
    neuron: LIFConfig = LIFConfig()
    dtype: Dtype = jnp.float32
    init_scheme: str = "pytorch"
    remat: bool = False
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv_bn = functools.partial(
            ConvBN, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        # remat: keep only each block's input spikes (the stem's LIF output, its max-pool
        # or the previous block's LIF output) for the backward pass, recompute the rest.
        block_class = (
            self.ops.remat_module(
                SpikingBasicBlock, static_argnames=("train",), binary_argnames=("spikes",)
            )
            if self.remat
            else SpikingBasicBlock
        )
        if not len(self.stage_sizes) == len(self.widths) == len(self.strides):
            raise ValueError("stage_sizes, widths and strides must have the same length.")
        if self.stem == "cifar":
            stem = conv_bn(self.stem_width, 3, 1, name="stem")
        elif self.stem == "imagenet":
            stem = conv_bn(self.stem_width, 7, 2, name="stem")
        else:
            raise ValueError(f"Unknown stem {self.stem!r}; choose 'cifar' or 'imagenet'.")
        x = spiking_encoder(
            x, stem, LIF(self.neuron, name="stem_lif"), self.time_steps, self.dtype, train
        )
        if self.stem == "imagenet":
            x = max_pool(x, window=3, stride=2, padding=1)

        for stage, (num_blocks, width, stride) in enumerate(
            zip(self.stage_sizes, self.widths, self.strides, strict=True)
        ):
            for block in range(num_blocks):
                x = block_class(
                    width,
                    stride if block == 0 else 1,
                    self.neuron,
                    self.dtype,
                    self.init_scheme,
                    ops=self.ops,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(TAPS_COLLECTION, TAPS_NAME, x)

        return spiking_head(
            x, self.hidden_features, self.num_classes, self.neuron, self.dtype, self.init_scheme
        )


@register("resnet19_snn")
class SpikingResNet19(SpikingResNet):
    """Spiking ResNet-19 of the SASTC release (CIFAR), docs/method.md §4.

    conv3x3 64 + BN + LIF; basic-block stages [3, 3, 2] of widths 128/256/512,
    strides 1/2/2; global average pool; dense 256 + LIF; dense classes.
    12,630,858 parameters at 10 classes. Taps on 32x32 input:
    (T,B,32,32,128), (T,B,16,16,256), (T,B,8,8,512).
    """


@register("resnet18_snn")
class SpikingResNet18(SpikingResNet):
    """Spiking ResNet-18 (ImageNet layout): 7x7/2 stem + max-pool, stages [2, 2, 2, 2].

    Taps on 224x224 input: (T,B,56,56,64), (T,B,28,28,128), (T,B,14,14,256), (T,B,7,7,512).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    strides: Sequence[int] = (1, 2, 2, 2)
    stem: str = "imagenet"
    hidden_features: int | None = None


@register("resnet34_snn")
class SpikingResNet34(SpikingResNet):
    """Spiking ResNet-34 (ImageNet layout): 7x7/2 stem + max-pool, stages [3, 4, 6, 3].

    Taps on 224x224 input: (T,B,56,56,64), (T,B,28,28,128), (T,B,14,14,256), (T,B,7,7,512).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    strides: Sequence[int] = (1, 2, 2, 2)
    stem: str = "imagenet"
    hidden_features: int | None = None


def spiking_plain_stages(
    module: nn.Module,
    x: Array,
    stages: Sequence[Sequence[int]],
    time_steps: int,
    neuron: LIFConfig,
    dtype: Dtype,
    init_scheme: str,
    train: bool,
    ops: Ops,
    remat: bool = False,
) -> Array:
    """Plain conv stages shared by the VGG-style SNNs; call from ``module``'s compact method.

    Each stage: for every width, conv3x3 (no bias) + BN + LIF; then a 2x2
    average pool (floor) of the spikes; the pooled stage output is sown as a tap.
    The very first conv + BN + LIF is the encoder. ``remat``: every conv + BN is
    rematerialised in the form of ``ops``; an input that is a LIF output (every layer's
    but the first of a stage) is saved as int8.
    """
    if not stages or not all(stages):
        raise ValueError(f"Every stage needs at least one conv width; got {stages!r}.")
    conv_bn_class, spiking_conv_bn_class = ConvBN, ConvBN
    if remat:
        conv_bn_class = ops.remat_module(ConvBN, static_argnames=("train",))
        spiking_conv_bn_class = ops.remat_module(
            ConvBN, static_argnames=("train",), binary_argnames=("x",)
        )
    for stage, widths in enumerate(stages):
        for layer, width in enumerate(widths):
            name = f"stage{stage + 1}_conv{layer + 1}"
            conv_bn = (spiking_conv_bn_class if layer else conv_bn_class)(
                width, 3, 1, dtype, init_scheme=init_scheme, ops=ops, name=name
            )
            neuron_layer = LIF(neuron, name=f"{name}_lif")
            if stage == 0 and layer == 0:
                x = spiking_encoder(x, conv_bn, neuron_layer, time_steps, dtype, train)
            else:
                x = neuron_layer(conv_bn(x, train))
        x = avg_pool(x, 2)
        module.sow(TAPS_COLLECTION, TAPS_NAME, x)
    return x


@register("vgg11_snn")
class SpikingVGG11(nn.Module):
    """VGG-11-style SNN for event data (DVS-Gesture, CIFAR10-DVS) and CIFAR.

    Default layout: the 8 conv layers of VGG-11 in the "VGGSNN" arrangement
    common in the DVS literature (TET, Deng et al. 2022), which keeps the first
    two convs at full resolution and pools four times::

        [64, 128, P, 256, 256, P, 512, 512, P, 512, 512, P]

    each conv = conv3x3 (no bias) + BN + LIF, P = 2x2 average pool of the spikes
    (average pooling is the usual choice in SNNs; pooled taps are spike rates
    in {0, 1/4, ..., 1}). Classifier: global average pool per time step + one
    dense layer to the classes. Taps: the output of every pooling stage —
    on 48x48 (CIFAR10-DVS): 24x24x128, 12x12x256, 6x6x512, 3x3x512;
    on 128x128 (DVS-Gesture): 64, 32, 16, 8 spatial; on 32x32: 16, 8, 4, 2.
    ``stages`` can give another layout, e.g. the classic VGG-11 "A" one
    ``((64,), (128,), (256, 256), (512, 512), (512, 512))``.
    """

    num_classes: int
    time_steps: int
    stages: Sequence[Sequence[int]] = ((64, 128), (256, 256), (512, 512), (512, 512))
    neuron: LIFConfig = LIFConfig()
    dtype: Dtype = jnp.float32
    init_scheme: str = "pytorch"
    remat: bool = False
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        x = spiking_plain_stages(
            self,
            x,
            self.stages,
            self.time_steps,
            self.neuron,
            self.dtype,
            self.init_scheme,
            train,
            self.ops,
            self.remat,
        )
        return spiking_head(x, None, self.num_classes, self.neuron, self.dtype, self.init_scheme)


@register("convnet_snn")
class SpikingConvNet(nn.Module):
    """Small CPU-friendly SNN (Fashion-MNIST, quickstart).

    Per stage: conv3x3 (no bias) + BN + LIF, 2x2 average pool (floor); one tap
    per stage — on 28x28: (T,B,14,14,32), (T,B,7,7,64), (T,B,3,3,128); on 32x32:
    16, 8, 4 spatial. Classifier: the last pooled map flattened per time step
    and one dense layer to the classes (the ANN counterpart is ``convnet_ann``).

    The classifier flattens rather than global-average-pools (a few spike rates
    per channel are too coarse a code; docs/performance.md, "Design choices
    measured"), so its parameter count depends on the input size (104,426 on
    28x28x1 at 10 classes).
    """

    num_classes: int
    time_steps: int
    widths: Sequence[int] = (32, 64, 128)
    neuron: LIFConfig = LIFConfig()
    dtype: Dtype = jnp.float32
    init_scheme: str = "pytorch"
    remat: bool = False
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        stages = tuple((width,) for width in self.widths)
        x = spiking_plain_stages(
            self,
            x,
            stages,
            self.time_steps,
            self.neuron,
            self.dtype,
            self.init_scheme,
            train,
            self.ops,
            self.remat,
        )
        x = x.reshape((*x.shape[:2], -1))  # (T, B, H*W*C)
        return dense(self.num_classes, dtype=self.dtype, init_scheme=self.init_scheme, name="fc")(
            x
        ).astype(jnp.float32)
