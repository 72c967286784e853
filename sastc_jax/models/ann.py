"""ANN teacher networks (docs/method.md §4).

Common contract of every ANN here:

- input: images ``(B, H, W, C)``; event frames ``(B, T, H, W, C)`` are
  averaged over T first (the DVS teacher sees the frames collapsed over time);
  anything else raises ``ValueError``;
- output: float32 logits ``(B, num_classes)``;
- taps: each stage output ``(B, H, W, C)`` in the compute dtype, sown into
  ``'intermediates'/'taps'`` from the top-level module in depth order.

Initialisation follows each model's PyTorch source (``init_scheme``, see
:mod:`sastc_jax.models.layers`); batch norm starts at scale 1, bias 0 everywhere:

- ResNet-19 (the release), ResNet-18/34 (torchvision), PyramidNet-20 (the release):
  ``'torchvision'``, Kaiming-normal fan-out convs, PyTorch-default linear layer;
- WRN-28-4 (the release): ``'kaiming_fan_out'``, the same convs, linear bias zero;
- VGG-11 and the ConvNet have no PyTorch source here: ``'kaiming_fan_out'``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax.models.layers import (
    ConvBN,
    Dtype,
    Ops,
    ann_input,
    avg_pool,
    batch_norm,
    conv,
    dense,
    global_avg_pool,
    max_pool,
    ops_field,
)
from sastc_jax.models.registry import TAPS_COLLECTION, TAPS_NAME, register

Array = jax.Array


def classifier(x: Array, num_classes: int, dtype: Dtype, init_scheme: str) -> Array:
    """Global average pool + dense: ``(B, H, W, C) -> (B, num_classes)`` float32 logits."""
    logits = dense(num_classes, dtype=dtype, init_scheme=init_scheme, name="fc")(global_avg_pool(x))
    return logits.astype(jnp.float32)


# -------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Post-activation residual basic block (torchvision).

    ``(B, H, W, C_in) -> (B, H/s, W/s, features)``.

    conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus the shortcut (identity, or
    conv1x1(stride) + BN where the shape changes), ReLU after the sum.
    """

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv_bn = functools.partial(
            ConvBN, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        y = conv_bn(self.features, 3, self.stride, name="conv_bn1")(x, train)
        y = nn.relu(y)
        y = conv_bn(self.features, 3, 1, name="conv_bn2")(y, train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv_bn(self.features, 1, self.stride, name="shortcut")(x, train)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet with basic blocks; the stage layout is given by the attributes.

    ``stem='cifar'``: conv3x3 (``stem_width``) + BN + ReLU at full resolution.
    ``stem='imagenet'``: conv7x7/2 + BN + ReLU + max-pool 3x3/2 (torchvision).
    Then ``stage_sizes[i]`` basic blocks of width ``widths[i]``, the first one
    with stride ``strides[i]``; global average pool; dense to ``num_classes``.
    Taps: the output of every stage.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 3, 2)
    widths: Sequence[int] = (128, 256, 512)
    strides: Sequence[int] = (1, 2, 2)
    stem: str = "cifar"
    stem_width: int = 64
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv_bn = functools.partial(
            ConvBN, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        if not len(self.stage_sizes) == len(self.widths) == len(self.strides):
            raise ValueError("stage_sizes, widths and strides must have the same length.")
        x = ann_input(x).astype(self.dtype)
        if self.stem == "cifar":
            x = nn.relu(conv_bn(self.stem_width, 3, 1, name="stem")(x, train))
        elif self.stem == "imagenet":
            x = nn.relu(conv_bn(self.stem_width, 7, 2, name="stem")(x, train))
            x = max_pool(x, window=3, stride=2, padding=1)
        else:
            raise ValueError(f"Unknown stem {self.stem!r}; choose 'cifar' or 'imagenet'.")

        for stage, (num_blocks, width, stride) in enumerate(
            zip(self.stage_sizes, self.widths, self.strides, strict=True)
        ):
            for block in range(num_blocks):
                x = BasicBlock(
                    width,
                    stride if block == 0 else 1,
                    self.dtype,
                    self.init_scheme,
                    ops=self.ops,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(TAPS_COLLECTION, TAPS_NAME, x)

        return classifier(x, self.num_classes, self.dtype, self.init_scheme)


@register("resnet19_ann")
class ResNet19(ResNet):
    """ResNet-19 teacher of the SASTC release (CIFAR), docs/method.md §4.

    The ``resnet19_snn`` body with ReLU; global average pool; one dense layer.
    12,502,090 parameters at 10 classes. Taps on 32x32 input:
    (B,32,32,128), (B,16,16,256), (B,8,8,512).
    """


@register("resnet18_ann")
class ResNet18(ResNet):
    """torchvision ResNet-18 (11,689,512 parameters at 1000 classes).

    Taps on 224x224 input: (B,56,56,64), (B,28,28,128), (B,14,14,256), (B,7,7,512).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    strides: Sequence[int] = (1, 2, 2, 2)
    stem: str = "imagenet"


@register("resnet34_ann")
class ResNet34(ResNet):
    """torchvision ResNet-34 (21,797,672 parameters at 1000 classes).

    Taps on 224x224 input: (B,56,56,64), (B,28,28,128), (B,14,14,256), (B,7,7,512).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    strides: Sequence[int] = (1, 2, 2, 2)
    stem: str = "imagenet"


# ---------------------------------------------------------------------- WideResNet


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis).

    ``(B, H, W, C_in) -> (B, H/s, W/s, features)``.

    BN - ReLU - conv3x3(stride) - BN - ReLU - conv3x3, added to the shortcut:
    the input itself when the shape is kept, else a conv1x1(stride) of the
    pre-activated input (as the reference implementation).
    """

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        make_conv = functools.partial(
            conv, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        preact = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        if self.stride == 1 and x.shape[-1] == self.features:
            shortcut = x
        else:
            shortcut = make_conv(self.features, 1, self.stride, name="shortcut")(preact)
        y = make_conv(self.features, 3, self.stride, name="conv1")(preact)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        y = make_conv(self.features, 3, 1, name="conv2")(y)
        return y + shortcut


class WideResNet(nn.Module):
    """WideResNet-depth-k for CIFAR (no dropout).

    conv3x3 16; three stages of ``(depth - 4) / 6`` pre-activation wide basic
    blocks of widths 16k/32k/64k, strides 1/2/2; BN + ReLU; global average
    pool; dense. Taps: the three stage outputs (before the final BN + ReLU).
    """

    num_classes: int
    depth: int = 28
    widen_factor: int = 4
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        make_conv = functools.partial(
            conv, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4; got {self.depth}.")
        blocks_per_stage = (self.depth - 4) // 6
        x = ann_input(x).astype(self.dtype)
        x = make_conv(16, 3, 1, name="stem")(x)
        for stage, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
            for block in range(blocks_per_stage):
                x = WideBasicBlock(
                    width * self.widen_factor,
                    stride if block == 0 else 1,
                    self.dtype,
                    self.init_scheme,
                    ops=self.ops,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(TAPS_COLLECTION, TAPS_NAME, x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_final")(x))
        return classifier(x, self.num_classes, self.dtype, self.init_scheme)


@register("wrn28_4_ann")
class WideResNet28x4(WideResNet):
    """WRN-28-4 (CIFAR): 4 blocks per stage, widths 64/128/256; 5,849,050 parameters at 10 classes.

    Taps on 32x32 input: (B,32,32,64), (B,16,16,128), (B,8,8,256).
    """


# ----------------------------------------------------------------------- PyramidNet


class PyramidBasicBlock(nn.Module):
    """PyramidNet basic block (Han et al. 2017).

    ``(B, H, W, C_in) -> (B, H/s, W/s, features)`` with ``features >= C_in``.

    BN - conv3x3(stride) - BN - ReLU - conv3x3 - BN (no ReLU after the sum),
    added to the zero-padded identity shortcut: 2x2 average pool (ceil mode)
    when downsampling, then zero channels appended up to ``features``.
    """

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        make_conv = functools.partial(
            conv, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        y = batch_norm(train, dtype=self.dtype, name="bn1")(x)
        y = make_conv(self.features, 3, self.stride, name="conv1")(y)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        y = make_conv(self.features, 3, 1, name="conv2")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn3")(y)
        shortcut = avg_pool(x, self.stride, ceil_mode=True) if self.stride != 1 else x
        extra_channels = self.features - shortcut.shape[-1]
        if extra_channels < 0:
            raise ValueError(f"PyramidNet block cannot shrink {x.shape[-1]} -> {self.features}.")
        shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra_channels)))
        return y + shortcut


class PyramidNet(nn.Module):
    """PyramidNet with basic blocks and additive widening, CIFAR layout.

    conv3x3 16 + BN; three stages of ``(depth - 2) / 6`` blocks, strides 1/2/2;
    the width grows by ``alpha / (3 n)`` per block (rounded), from 16 to
    ``16 + alpha``; BN + ReLU; global average pool; dense. Taps: the three
    stage outputs (before the final BN + ReLU).
    """

    num_classes: int
    depth: int = 20
    alpha: float = 200.0
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        make_conv = functools.partial(
            conv, dtype=self.dtype, init_scheme=self.init_scheme, ops=self.ops
        )
        if (self.depth - 2) % 6:
            raise ValueError(f"PyramidNet (basic blocks) depth must be 6n + 2; got {self.depth}.")
        blocks_per_stage = (self.depth - 2) // 6
        width_step = self.alpha / (3 * blocks_per_stage)
        x = ann_input(x).astype(self.dtype)
        x = make_conv(16, 3, 1, name="stem")(x)
        x = batch_norm(train, dtype=self.dtype, name="stem_bn")(x)
        width = 16.0
        for stage, stride in enumerate((1, 2, 2)):
            for block in range(blocks_per_stage):
                width += width_step
                x = PyramidBasicBlock(
                    round(width),
                    stride if block == 0 else 1,
                    self.dtype,
                    self.init_scheme,
                    ops=self.ops,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            self.sow(TAPS_COLLECTION, TAPS_NAME, x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_final")(x))
        return classifier(x, self.num_classes, self.dtype, self.init_scheme)


@register("pyramidnet20_ann")
class PyramidNet20(PyramidNet):
    """PyramidNet-20, alpha 200 (CIFAR): widths grow 38, 60, 83 | 105, 127, 149 | 172, 194, 216;
    2,933,675 parameters at 10 classes.

    Taps on 32x32 input: (B,32,32,83), (B,16,16,149), (B,8,8,216).
    """


# ----------------------------------------------------------------------- plain CNNs


def plain_stages(
    module: nn.Module,
    x: Array,
    stages: Sequence[Sequence[int]],
    pool: str,
    dtype: Dtype,
    init_scheme: str,
    train: bool,
    ops: Ops,
) -> Array:
    """Plain conv stages shared by the VGG-style ANNs; call from ``module``'s compact method.

    Each stage: for every width, conv3x3 (no bias) + BN + ReLU; then a 2x2
    pool (``'max'`` or ``'avg'``, floor); the pooled output is sown as a tap.
    """
    if not stages or not all(stages):
        raise ValueError(f"Every stage needs at least one conv width; got {stages!r}.")
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg'; got {pool!r}.")
    for stage, widths in enumerate(stages):
        for layer, width in enumerate(widths):
            conv_bn = ConvBN(
                width,
                3,
                1,
                dtype,
                init_scheme=init_scheme,
                ops=ops,
                name=f"stage{stage + 1}_conv{layer + 1}",
            )
            x = conv_bn(x, train)
            x = nn.relu(x)
        x = max_pool(x, 2, 2) if pool == "max" else avg_pool(x, 2)
        module.sow(TAPS_COLLECTION, TAPS_NAME, x)
    return x


@register("vgg11_ann")
class VGG11(nn.Module):
    """VGG-11-style ANN teacher for event data and CIFAR: the ``vgg11_snn`` body with ReLU.

    Layout ``[64, 128, P, 256, 256, P, 512, 512, P, 512, 512, P]`` (conv3x3 +
    BN + ReLU, P = 2x2 max-pool by default), global average pool, dense.
    Event frames (B, T, H, W, C) are averaged over T. Taps: every pooling
    stage; on 48x48: 24x24x128, 12x12x256, 6x6x512, 3x3x512.
    """

    num_classes: int
    stages: Sequence[Sequence[int]] = ((64, 128), (256, 256), (512, 512), (512, 512))
    pool: str = "max"
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        x = ann_input(x).astype(self.dtype)
        x = plain_stages(
            self, x, self.stages, self.pool, self.dtype, self.init_scheme, train, self.ops
        )
        return classifier(x, self.num_classes, self.dtype, self.init_scheme)


@register("convnet_ann")
class ConvNet(nn.Module):
    """Small CPU-friendly ANN teacher (Fashion-MNIST, quickstart).

    Per stage: conv3x3 (no bias) + BN + ReLU, 2x2 max-pool; one tap per stage —
    on 28x28: (B,14,14,32), (B,7,7,64), (B,3,3,128); on 32x32: 16, 8, 4
    spatial. Then global average pool and a dense layer to the classes.
    """

    num_classes: int
    widths: Sequence[int] = (32, 64, 128)
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    spiking: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        x = ann_input(x).astype(self.dtype)
        stages = tuple((width,) for width in self.widths)
        x = plain_stages(self, x, stages, "max", self.dtype, self.init_scheme, train, self.ops)
        return classifier(x, self.num_classes, self.dtype, self.init_scheme)
