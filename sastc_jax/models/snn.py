"""The spiking students: the networks of :mod:`sastc_jax.models.ann` with LIF neurons.

Each is its ANN definition with the spiking fields mixed in
(:class:`~sastc_jax.models.network.Spiking`: ``time_steps``, ``neuron``, ``remat``); the
input, output and tap contract and what ``remat`` recomputes are stated in
:mod:`sastc_jax.models.network`. The first conv + BN + LIF is the encoder.

Initialisation: PyTorch's module defaults (``init_scheme='pytorch'``), as the release's
spiking ResNet (``zero_init_residual=False``) keeps them: conv and dense weights
uniform in +-1/sqrt(fan_in), dense biases uniform in +-1/sqrt(fan_in), BN scale 1
and bias 0. ``init_scheme='kaiming_fan_out'`` gives Kaiming-normal fan-out convs and zero
dense biases instead (see :mod:`sastc_jax.models.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from sastc_jax.models.ann import VGG11, BasicBlock, ConvNet, ResNet, ResNet18
from sastc_jax.models.network import ResidualBlock, Spiking, run_block
from sastc_jax.models.registry import register
from sastc_jax.neurons import LIFConfig

Array = jax.Array


class SpikingBasicBlock(BasicBlock):
    """Spiking residual basic block, ``(T, B, H, W, C_in) -> (T, B, H/s, W/s, features)``.

    conv3x3(stride) - BN - LIF - conv3x3 - BN, plus the shortcut (identity, or
    conv1x1(stride) + BN where the shape changes), then LIF after the sum.
    """

    neuron: LIFConfig = LIFConfig()
    init_scheme: str = "pytorch"

    spiking: ClassVar[bool] = True

    @nn.compact
    def __call__(self, spikes: Array, train: bool = True) -> Array:
        block = self.describe(spikes.shape[-1], self.features, self.stride)
        return run_block(self, block, spikes, train)


class SpikingResNet(Spiking, ResNet):
    """Spiking ResNet: :class:`~sastc_jax.models.ann.ResNet` with LIF neurons and, by
    default, a dense 256 + LIF before the classifier. ``remat`` rematerialises every block.
    """

    hidden_features: int | None = 256
    block_cls: type[ResidualBlock] = SpikingBasicBlock


@register("resnet19_snn")
class SpikingResNet19(SpikingResNet):
    """Spiking ResNet-19 of the SASTC release (CIFAR), docs/method.md §4.

    conv3x3 64 + BN + LIF; basic-block stages [3, 3, 2] of widths 128/256/512,
    strides 1/2/2; global average pool; dense 256 + LIF; dense classes.
    12,630,858 parameters at 10 classes. Taps on 32x32 input:
    (T,B,32,32,128), (T,B,16,16,256), (T,B,8,8,512).
    """


@register("resnet18_snn")
class SpikingResNet18(Spiking, ResNet18):
    """Spiking ResNet-18 (ImageNet layout): 7x7/2 stem + max-pool, stages [2, 2, 2, 2].

    Taps on 224x224 input: (T,B,56,56,64), (T,B,28,28,128), (T,B,14,14,256), (T,B,7,7,512).
    """

    block_cls: type[ResidualBlock] = SpikingBasicBlock


@register("resnet34_snn")
class SpikingResNet34(SpikingResNet18):
    """Spiking ResNet-34 (ImageNet layout): 7x7/2 stem + max-pool, stages [3, 4, 6, 3].

    Taps on 224x224 input: (T,B,56,56,64), (T,B,28,28,128), (T,B,14,14,256), (T,B,7,7,512).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)


@register("vgg11_snn")
class SpikingVGG11(Spiking, VGG11):
    """VGG-11-style SNN for event data (DVS-Gesture, CIFAR10-DVS) and CIFAR.

    The 8 conv layers of VGG-11 in the "VGGSNN" arrangement common in the DVS literature
    (TET, Deng et al. 2022), which keeps the first two convs at full resolution and pools
    four times: each conv = conv3x3 (no bias) + BN + LIF, P = 2x2 average pool of the
    spikes (average pooling is the usual choice in SNNs; pooled taps are spike rates in
    {0, 1/4, ..., 1}). Classifier: global average pool per time step + one dense layer.
    Taps: on 48x48 (CIFAR10-DVS): 24x24x128, 12x12x256, 6x6x512, 3x3x512; on 128x128
    (DVS-Gesture): 64, 32, 16, 8 spatial; on 32x32: 16, 8, 4, 2.
    """

    pool: str = "avg"


@register("convnet_snn")
class SpikingConvNet(Spiking, ConvNet):
    """Small CPU-friendly SNN (Fashion-MNIST, quickstart).

    Per stage: conv3x3 (no bias) + BN + LIF, 2x2 average pool (floor); one tap
    per stage — on 28x28: (T,B,14,14,32), (T,B,7,7,64), (T,B,3,3,128); on 32x32:
    16, 8, 4 spatial. Classifier: the last pooled map flattened per time step
    and one dense layer to the classes (the ANN counterpart is ``convnet_ann``).

    The classifier flattens rather than global-average-pools: a global average pool
    leaves a few spike rates per channel, too coarse a code (docs/performance.md has the
    comparison). Its parameter count therefore depends on the input size (104,426 on
    28x28x1 at 10 classes).
    """

    pool: str = "avg"
    head: str = "flatten"
