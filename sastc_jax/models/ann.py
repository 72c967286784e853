"""The network definitions, as ANN teachers (the spiking variants: :mod:`sastc_jax.models.snn`).

Each family is one :class:`~sastc_jax.models.network.Network`: its fields give the layout,
``architecture()`` the layers, and the runner of :mod:`sastc_jax.models.network` runs
them (the input, output and tap contract is stated there). The spiking students are the
same definitions with the spiking fields (:class:`~sastc_jax.models.network.Spiking`):
LIF neurons where the ANN has ReLU.

Initialisation follows each model's PyTorch source (``init_scheme``, see
:mod:`sastc_jax.models.layers`); batch norm starts at scale 1, bias 0 everywhere:

- ResNet-19 (the release), ResNet-18/34 (torchvision), PyramidNet-20 (the release):
  ``'torchvision'``, Kaiming-normal fan-out convs, PyTorch-default linear layer;
- WRN-28-4 (the release): ``'kaiming_fan_out'``, the same convs, linear bias zero;
- VGG-11 and the ConvNet have no PyTorch source here: ``'kaiming_fan_out'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from sastc_jax.models.architecture import (
    Architecture,
    Block,
    Layer,
    activation,
    check_stages,
    conv,
    conv_bn,
    plain_stages,
    projects,
    residual_stages,
)
from sastc_jax.models.layers import Dtype, Ops, ops_field
from sastc_jax.models.network import Network, ResidualBlock
from sastc_jax.models.registry import register

_GLOBAL_POOL = Layer("global_avg_pool", "global_pool")


def _classifier(num_classes: int, final_bn: bool = False) -> tuple[Layer, ...]:
    """The head: BN + ReLU ``bn_final`` where ``final_bn``, global average pool, dense ``fc``."""
    final = (Layer("bn", "bn_final"), Layer("relu", "relu_final")) if final_bn else ()
    return (*final, _GLOBAL_POOL, Layer("dense", "fc", num_classes))


# -------------------------------------------------------------------------- ResNet


class BasicBlock(ResidualBlock):
    """Post-activation residual basic block (torchvision), the activation ReLU or LIF.

    conv3x3(stride) - BN - act - conv3x3 - BN, plus the shortcut (identity, or
    conv1x1(stride) + BN where the shape changes), the activation after the sum.
    """

    @classmethod
    def describe(cls, in_channels: int, features: int, stride: int) -> Block:
        act = activation(cls.spiking)
        shortcut = (conv_bn("shortcut", features, 1, stride),)
        return Block(
            body=(
                conv_bn("conv_bn1", features, 3, stride),
                Layer(act, f"{act}1"),
                conv_bn("conv_bn2", features, 3, 1),
            ),
            shortcut=shortcut if projects(in_channels, features, stride) else (),
            after=(Layer(act, f"{act}_out"),),
            features=features,
            stride=stride,
        )


class ResNet(Network):
    """ResNet with residual blocks ``block_cls``; the stage layout is given by the fields.

    ``stem='cifar'``: conv3x3 (``stem_width``) + BN + activation at full resolution.
    ``stem='imagenet'``: conv7x7/2 + BN + activation + max-pool 3x3/2 (torchvision).
    Then ``stage_sizes[i]`` blocks of width ``widths[i]``, the first one with stride
    ``strides[i]``; global average pool; optional dense ``hidden_features`` + activation;
    dense to ``num_classes``. Taps: the output of every stage.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 3, 2)
    widths: Sequence[int] = (128, 256, 512)
    strides: Sequence[int] = (1, 2, 2)
    stem: str = "cifar"
    stem_width: int = 64
    hidden_features: int | None = None
    block_cls: type[ResidualBlock] = BasicBlock
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    def architecture(self) -> Architecture:
        act = activation(self.spiking)
        check_stages(self.stage_sizes, self.widths, self.strides)
        stems = {"cifar": (3, 1), "imagenet": (7, 2)}
        if self.stem not in stems:
            raise ValueError(f"Unknown stem {self.stem!r}; choose 'cifar' or 'imagenet'.")
        layers: list[Layer | Block] = [
            conv_bn("stem", self.stem_width, *stems[self.stem]),
            Layer(act, f"stem_{act}"),
        ]
        if self.stem == "imagenet":
            layers.append(Layer("max_pool", "stem_pool", kernel=3, stride=2, padding=1))
        widths = [
            (width,) * size for size, width in zip(self.stage_sizes, self.widths, strict=True)
        ]
        layers += residual_stages(self.stem_width, widths, self.strides, self.block_cls.describe)
        layers.append(_GLOBAL_POOL)
        if self.hidden_features is not None:
            layers += [
                Layer("dense", "fc_hidden", self.hidden_features),
                Layer(act, f"fc_hidden_{act}"),
            ]
        layers.append(Layer("dense", "fc", self.num_classes))
        return tuple(layers)


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
class ResNet34(ResNet18):
    """torchvision ResNet-34 (21,797,672 parameters at 1000 classes).

    Taps on 224x224 input: (B,56,56,64), (B,28,28,128), (B,14,14,256), (B,7,7,512).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)


# ---------------------------------------------------------------------- WideResNet


def _blocks_per_stage(depth: int, other_layers: int, family: str) -> int:
    """Blocks per stage of a three-stage network of ``depth`` layers with two convs per
    block and ``other_layers`` layers outside them."""
    if (depth - other_layers) % 6:
        raise ValueError(f"{family} depth must be 6n + {other_layers}; got {depth}.")
    return (depth - other_layers) // 6


class WideBasicBlock(ResidualBlock):
    """Pre-activation wide basic block (Zagoruyko & Komodakis).

    BN - ReLU - conv3x3(stride) - BN - ReLU - conv3x3, added to the shortcut:
    the input itself when the shape is kept, else a conv1x1(stride) of the
    pre-activated input (as the reference implementation).
    """

    init_scheme: str = "kaiming_fan_out"

    @classmethod
    def describe(cls, in_channels: int, features: int, stride: int) -> Block:
        projected = projects(in_channels, features, stride)
        return Block(
            body=(
                Layer("bn", "bn1"),
                Layer("relu", "relu1"),
                conv("conv1", features, 3, stride),
                Layer("bn", "bn2"),
                Layer("relu", "relu2"),
                conv("conv2", features, 3, 1),
            ),
            shortcut=(conv("shortcut", features, 1, stride),) if projected else (),
            shortcut_from="relu1" if projected else "",
            features=features,
            stride=stride,
        )


class WideResNet(Network):
    """WideResNet-depth-k for CIFAR (no dropout).

    conv3x3 16; three stages of ``(depth - 4) / 6`` pre-activation wide basic
    blocks of widths 16k/32k/64k, strides 1/2/2; BN + ReLU; global average
    pool; dense. Taps: the three stage outputs (before the final BN + ReLU).
    """

    num_classes: int
    depth: int = 28
    widen_factor: int = 4
    block_cls: type[ResidualBlock] = WideBasicBlock
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    def architecture(self) -> Architecture:
        blocks_per_stage = _blocks_per_stage(self.depth, 4, "WideResNet")
        widths = [(16 * scale * self.widen_factor,) * blocks_per_stage for scale in (1, 2, 4)]
        return (
            conv("stem", 16, 3, 1),
            *residual_stages(16, widths, (1, 2, 2), self.block_cls.describe),
            *_classifier(self.num_classes, final_bn=True),
        )


@register("wrn28_4_ann")
class WideResNet28x4(WideResNet):
    """WRN-28-4 (CIFAR): 4 blocks per stage, widths 64/128/256; 5,849,050 parameters at 10 classes.

    Taps on 32x32 input: (B,32,32,64), (B,16,16,128), (B,8,8,256).
    """


# ----------------------------------------------------------------------- PyramidNet


class PyramidBasicBlock(ResidualBlock):
    """PyramidNet basic block (Han et al. 2017), ``features >= C_in``.

    BN - conv3x3(stride) - BN - ReLU - conv3x3 - BN (no ReLU after the sum),
    added to the zero-padded identity shortcut: a stride x stride average pool (ceil mode)
    when downsampling, then zero channels appended up to ``features``.
    """

    @classmethod
    def describe(cls, in_channels: int, features: int, stride: int) -> Block:
        if features < in_channels:
            raise ValueError(f"PyramidNet block cannot shrink {in_channels} -> {features}.")
        shortcut = []
        if stride != 1:
            pool = Layer("avg_pool", "shortcut_pool", kernel=stride, stride=stride, ceil=True)
            shortcut.append(pool)
        if features > in_channels:
            shortcut.append(Layer("pad_channels", "shortcut_pad", features))
        return Block(
            body=(
                Layer("bn", "bn1"),
                conv("conv1", features, 3, stride),
                Layer("bn", "bn2"),
                Layer("relu", "relu"),
                conv("conv2", features, 3, 1),
                Layer("bn", "bn3"),
            ),
            shortcut=tuple(shortcut),
            features=features,
            stride=stride,
        )


class PyramidNet(Network):
    """PyramidNet with basic blocks and additive widening, CIFAR layout.

    conv3x3 16 + BN; three stages of ``(depth - 2) / 6`` blocks, strides 1/2/2;
    the width grows by ``alpha / (3 n)`` per block (rounded), from 16 to
    ``16 + alpha``; BN + ReLU; global average pool; dense. Taps: the three
    stage outputs (before the final BN + ReLU).
    """

    num_classes: int
    depth: int = 20
    alpha: float = 200.0
    block_cls: type[ResidualBlock] = PyramidBasicBlock
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()

    def architecture(self) -> Architecture:
        blocks_per_stage = _blocks_per_stage(self.depth, 2, "PyramidNet (basic blocks)")
        width_step = self.alpha / (3 * blocks_per_stage)
        widths, width = [], 16.0
        for _ in range(3):
            stage_widths = []
            for _ in range(blocks_per_stage):
                width += width_step  # accumulated block by block, for PyTorch's rounding
                stage_widths.append(round(width))
            widths.append(tuple(stage_widths))
        return (
            conv("stem", 16, 3, 1),
            Layer("bn", "stem_bn"),
            *residual_stages(16, widths, (1, 2, 2), self.block_cls.describe),
            *_classifier(self.num_classes, final_bn=True),
        )


@register("pyramidnet20_ann")
class PyramidNet20(PyramidNet):
    """PyramidNet-20, alpha 200 (CIFAR): widths grow 38, 60, 83 | 105, 127, 149 | 172, 194, 216;
    2,933,675 parameters at 10 classes.

    Taps on 32x32 input: (B,32,32,83), (B,16,16,149), (B,8,8,216).
    """


# ----------------------------------------------------------------------- plain CNNs


@register("vgg11_ann")
class VGG11(Network):
    """VGG-11-style network for event data and CIFAR: plain conv stages.

    Layout ``[64, 128, P, 256, 256, P, 512, 512, P, 512, 512, P]`` (conv3x3 +
    BN + activation, P = 2x2 ``pool``: max for the ANN, average for the SNN), global
    average pool, dense. Taps: every pooling stage; on 48x48: 24x24x128, 12x12x256,
    6x6x512, 3x3x512. ``stages`` can give another layout, e.g. the classic VGG-11 "A"
    one ``((64,), (128,), (256, 256), (512, 512), (512, 512))``.
    """

    num_classes: int
    stages: Sequence[Sequence[int]] = ((64, 128), (256, 256), (512, 512), (512, 512))
    pool: str = "max"
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    def architecture(self) -> Architecture:
        return (
            *plain_stages(self.stages, activation(self.spiking), self.pool),
            *_classifier(self.num_classes),
        )


@register("convnet_ann")
class ConvNet(Network):
    """Small CPU-friendly network (Fashion-MNIST, quickstart).

    Per stage: conv3x3 (no bias) + BN + activation, 2x2 ``pool``; one tap per stage —
    on 28x28: (B,14,14,32), (B,7,7,64), (B,3,3,128); on 32x32: 16, 8, 4 spatial. Then
    the classifier input ``head``: ``'global_avg_pool'`` or ``'flatten'`` (the last map
    flattened, so the parameter count depends on the input size); a dense layer.
    """

    num_classes: int
    widths: Sequence[int] = (32, 64, 128)
    pool: str = "max"
    head: str = "global_avg_pool"
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    def architecture(self) -> Architecture:
        heads = {"global_avg_pool": _GLOBAL_POOL, "flatten": Layer("flatten", "flatten")}
        if self.head not in heads:
            raise ValueError(f"head must be one of {sorted(heads)}; got {self.head!r}.")
        stages = tuple((width,) for width in self.widths)
        return (
            *plain_stages(stages, activation(self.spiking), self.pool),
            heads[self.head],
            Layer("dense", "fc", self.num_classes),
        )
