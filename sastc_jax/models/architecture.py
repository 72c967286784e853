"""One declarative description of each model family's layers, derived from the model's fields.

:func:`describe` turns a model (its stage sizes, widths, strides, stem, ...) into its
layers in execution order: a tuple of :class:`Layer` and :class:`Block` (a residual
block). It says what each Flax module is and where it lives, nothing about how it
computes (that is the model's ``__call__``). Its readers:

- the NIR export (:func:`sastc_jax.interop.nir_plan.plan`) builds its graph from the students'
  descriptions;
- the PyTorch import (:mod:`sastc_jax.interop.pytorch`) takes our module paths of the
  teachers from :func:`parameter_modules` and keeps only the PyTorch-side names;
- ``tests/test_architecture.py`` checks that every registered model's description lists
  exactly the module paths of its initialised variables.

Layer kinds (:data:`KINDS`) and the Flax modules they hold:

- ``'conv_bn'``: a :class:`~sastc_jax.models.layers.ConvBN`, modules ``name/conv`` (kernel)
  and ``name/bn`` (scale, bias; running mean, var); ``'conv'``: a bare conv ``name``;
  ``'bn'``: a bare batch norm ``name``; ``'dense'``: a dense layer ``name`` (kernel, bias);
- ``'lif'``, ``'relu'``: activations (no variables); a LIF is the Flax module ``name``;
- ``'avg_pool'``, ``'max_pool'`` (``kernel`` window, ``stride``, ``padding``, ``ceil``),
  ``'global_avg_pool'`` (per channel, over the whole map), ``'flatten'``,
  ``'pad_channels'`` (zero channels appended up to ``features``): no variables.

The SNN and ANN ResNets share one description (:func:`resnet`, the activation aside), as
do the SNN and ANN plain conv stages (:func:`plain_stages`): the module paths
``stem``, ``stage{s}_block{b}/{conv_bn1,conv_bn2,shortcut}``, ``stage{s}_conv{l}``,
``fc`` are written once for students and teachers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn

from sastc_jax.models.ann import VGG11, ConvNet, PyramidNet, ResNet, WideResNet
from sastc_jax.models.snn import SpikingConvNet, SpikingResNet, SpikingVGG11

KINDS = (
    "conv_bn",
    "conv",
    "bn",
    "dense",
    "lif",
    "relu",
    "avg_pool",
    "max_pool",
    "global_avg_pool",
    "flatten",
    "pad_channels",
)
# The Flax modules with variables of each kind, relative to the layer's own path.
_VARIABLE_MODULES = {"conv_bn": (("conv",), ("bn",)), "conv": ((),), "bn": ((),), "dense": ((),)}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: its ``kind`` (one of :data:`KINDS`) and ``name`` (its Flax module name,
    or for a layer without variables the name its readers give it).

    ``features``: a conv's or dense layer's output width, a channel pad's target width;
    ``kernel``, ``stride``, ``padding``: a conv's square kernel, stride and symmetric
    padding, or a pool's window, stride and padding; ``ceil``: a pool rounds up.
    """

    kind: str
    name: str
    features: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    ceil: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; choose one of {KINDS}.")


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block, the Flax module ``name`` = ``stage{stage}_block{index}`` (1-based).

    ``body`` runs on the block input; ``shortcut`` (empty: the identity) runs on the block
    input, or on the output of the body layer named ``shortcut_from``; their sum goes
    through ``after`` (empty: the sum is the block output). Layer names are relative to
    the block.
    """

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    shortcut_from: str = ""
    after: tuple[Layer, ...] = ()
    # Set by residual_stages:
    name: str = ""
    stage: int = 0
    index: int = 0


Architecture = tuple[Layer | Block, ...]


def _conv_bn(name: str, features: int, kernel: int, stride: int) -> Layer:
    return Layer("conv_bn", name, features, kernel, stride, kernel // 2)


def _conv(name: str, features: int, kernel: int, stride: int) -> Layer:
    return Layer("conv", name, features, kernel, stride, kernel // 2)


def residual_stages(
    in_channels: int,
    block_widths: Sequence[Sequence[int]],
    strides: Sequence[int],
    make_block: Callable[[int, int, int], Block],
) -> list[Block]:
    """The blocks ``stage{s}_block{b}`` of residual stages: stage ``s`` has one block per
    width in ``block_widths[s]``, the first with stride ``strides[s]``;
    ``make_block(in_channels, width, stride)`` describes one (this names and numbers it).
    """
    blocks, channels = [], in_channels
    for stage, (widths, stride) in enumerate(zip(block_widths, strides, strict=True), 1):
        for index, width in enumerate(widths, 1):
            block = make_block(channels, width, stride if index == 1 else 1)
            name = f"stage{stage}_block{index}"
            blocks.append(dataclasses.replace(block, name=name, stage=stage, index=index))
            channels = width
    return blocks


def _projects(in_channels: int, width: int, stride: int) -> bool:
    """Whether a block changes the shape of its input, so that its shortcut must too."""
    return stride != 1 or in_channels != width


def resnet(model: SpikingResNet | ResNet) -> Architecture:
    """The spiking (LIF) or ANN (ReLU) ResNet with basic blocks, from one set of fields."""
    activation = "lif" if model.spiking else "relu"
    if not len(model.stage_sizes) == len(model.widths) == len(model.strides):
        raise ValueError("stage_sizes, widths and strides must have the same length.")
    stems = {"cifar": (3, 1), "imagenet": (7, 2)}
    if model.stem not in stems:
        raise ValueError(f"Unknown stem {model.stem!r}; choose 'cifar' or 'imagenet'.")
    layers: list[Layer | Block] = [
        _conv_bn("stem", model.stem_width, *stems[model.stem]),
        Layer(activation, f"stem_{activation}"),
    ]
    if model.stem == "imagenet":
        layers.append(Layer("max_pool", "stem_pool", kernel=3, stride=2, padding=1))

    def block(in_channels: int, width: int, stride: int) -> Block:
        projects = _projects(in_channels, width, stride)
        return Block(
            body=(
                _conv_bn("conv_bn1", width, 3, stride),
                Layer(activation, f"{activation}1"),
                _conv_bn("conv_bn2", width, 3, 1),
            ),
            shortcut=(_conv_bn("shortcut", width, 1, stride),) if projects else (),
            after=(Layer(activation, f"{activation}_out"),),
        )

    widths = [(width,) * size for size, width in zip(model.stage_sizes, model.widths, strict=True)]
    layers += residual_stages(model.stem_width, widths, model.strides, block)
    layers.append(Layer("global_avg_pool", "global_pool"))
    if getattr(model, "hidden_features", None) is not None:
        layers += [
            Layer("dense", "fc_hidden", model.hidden_features),
            Layer("lif", "fc_hidden_lif"),
        ]
    layers.append(Layer("dense", "fc", model.num_classes))
    return tuple(layers)


def plain_stages(stages: Sequence[Sequence[int]], activation: str, pool: str) -> list[Layer]:
    """Plain conv stages: per stage, conv3x3 + BN ``stage{s}_conv{l}`` and its activation
    ``stage{s}_conv{l}_{activation}`` per width, then a 2x2 ``pool`` pool ``stage{s}_pool``."""
    if not stages or not all(stages):
        raise ValueError(f"Every stage needs at least one conv width; got {stages!r}.")
    layers = []
    for stage, widths in enumerate(stages, 1):
        for index, width in enumerate(widths, 1):
            name = f"stage{stage}_conv{index}"
            layers += [_conv_bn(name, width, 3, 1), Layer(activation, f"{name}_{activation}")]
        layers.append(Layer(f"{pool}_pool", f"stage{stage}_pool", kernel=2, stride=2))
    return layers


def vgg11(model: SpikingVGG11 | VGG11) -> Architecture:
    """The spiking or ANN VGG-11: plain stages, global average pool, ``fc``."""
    activation, pool = ("lif", "avg") if model.spiking else ("relu", model.pool)
    return (
        *plain_stages(model.stages, activation, pool),
        Layer("global_avg_pool", "global_pool"),
        Layer("dense", "fc", model.num_classes),
    )


def convnet(model: SpikingConvNet | ConvNet) -> Architecture:
    """The small ConvNet: one conv per stage; the SNN flattens, the ANN global-average-pools."""
    stages = tuple((width,) for width in model.widths)
    if model.spiking:
        head = (Layer("flatten", "flatten"),)
        layers = plain_stages(stages, "lif", "avg")
    else:
        head = (Layer("global_avg_pool", "global_pool"),)
        layers = plain_stages(stages, "relu", "max")
    return (*layers, *head, Layer("dense", "fc", model.num_classes))


def wide_resnet(model: WideResNet) -> Architecture:
    """WideResNet-depth-k: conv ``stem``; pre-activation wide blocks (BN-ReLU-conv twice,
    a conv ``shortcut`` of the pre-activated input where the shape changes); ``bn_final``."""
    if (model.depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n + 4; got {model.depth}.")
    blocks_per_stage = (model.depth - 4) // 6

    def block(in_channels: int, width: int, stride: int) -> Block:
        projects = _projects(in_channels, width, stride)
        return Block(
            body=(
                Layer("bn", "bn1"),
                Layer("relu", "relu1"),
                _conv("conv1", width, 3, stride),
                Layer("bn", "bn2"),
                Layer("relu", "relu2"),
                _conv("conv2", width, 3, 1),
            ),
            shortcut=(_conv("shortcut", width, 1, stride),) if projects else (),
            shortcut_from="relu1" if projects else "",
        )

    widths = [(16 * scale * model.widen_factor,) * blocks_per_stage for scale in (1, 2, 4)]
    return (
        _conv("stem", 16, 3, 1),
        *residual_stages(16, widths, (1, 2, 2), block),
        Layer("bn", "bn_final"),
        Layer("relu", "relu_final"),
        Layer("global_avg_pool", "global_pool"),
        Layer("dense", "fc", model.num_classes),
    )


def pyramidnet(model: PyramidNet) -> Architecture:
    """PyramidNet (basic blocks, additive widening): conv ``stem`` + ``stem_bn``; blocks
    BN-conv-BN-ReLU-conv-BN with a zero-padded (average-pooled where strided) identity
    shortcut; ``bn_final``."""
    if (model.depth - 2) % 6:
        raise ValueError(f"PyramidNet (basic blocks) depth must be 6n + 2; got {model.depth}.")
    blocks_per_stage = (model.depth - 2) // 6
    width_step = model.alpha / (3 * blocks_per_stage)
    widths = []
    width = 16.0
    for _ in range(3):
        stage_widths = []
        for _ in range(blocks_per_stage):
            width += width_step  # accumulated as the model does, for the same rounding
            stage_widths.append(round(width))
        widths.append(tuple(stage_widths))

    def block(in_channels: int, width: int, stride: int) -> Block:
        shortcut = []
        if stride != 1:
            shortcut.append(Layer("avg_pool", "shortcut_pool", kernel=2, stride=2, ceil=True))
        if width < in_channels:
            raise ValueError(f"PyramidNet block cannot shrink {in_channels} -> {width}.")
        if width > in_channels:
            shortcut.append(Layer("pad_channels", "shortcut_pad", width))
        return Block(
            body=(
                Layer("bn", "bn1"),
                _conv("conv1", width, 3, stride),
                Layer("bn", "bn2"),
                Layer("relu", "relu"),
                _conv("conv2", width, 3, 1),
                Layer("bn", "bn3"),
            ),
            shortcut=tuple(shortcut),
        )

    return (
        _conv("stem", 16, 3, 1),
        Layer("bn", "stem_bn"),
        *residual_stages(16, widths, (1, 2, 2), block),
        Layer("bn", "bn_final"),
        Layer("relu", "relu_final"),
        Layer("global_avg_pool", "global_pool"),
        Layer("dense", "fc", model.num_classes),
    )


# Each family's description, by the model class it describes (and its subclasses).
FAMILIES: tuple[tuple[type[nn.Module], Callable[..., Architecture]], ...] = (
    (SpikingResNet, resnet),
    (ResNet, resnet),
    (SpikingVGG11, vgg11),
    (VGG11, vgg11),
    (SpikingConvNet, convnet),
    (ConvNet, convnet),
    (WideResNet, wide_resnet),
    (PyramidNet, pyramidnet),
)


def is_described(model: nn.Module) -> bool:
    """Whether ``model``'s class (or a base) has a description here."""
    return any(isinstance(model, family) for family, _ in FAMILIES)


def describe(model: nn.Module) -> Architecture:
    """The layers of ``model`` in execution order, from its fields.

    ``ValueError`` for a model class without a description, or fields the model rejects.
    """
    for family, description in FAMILIES:
        if isinstance(model, family):
            return description(model)
    described = ", ".join(family.__name__ for family, _ in FAMILIES)
    raise ValueError(
        f"no architecture description for {type(model).__name__}; described: {described}."
    )


def parameter_modules(architecture: Architecture) -> list[tuple[Block | None, tuple[str, ...]]]:
    """``(block, path)`` of every Flax module with variables, in order: ``path`` is relative
    to ``block`` (``None``: a top-level module, ``path`` is then the full path)."""
    found = []
    for item in architecture:
        block, layers = (
            (item, (*item.body, *item.shortcut, *item.after))
            if isinstance(item, Block)
            else (None, (item,))
        )
        for layer in layers:
            found += [(block, (layer.name, *sub)) for sub in _VARIABLE_MODULES.get(layer.kind, ())]
    return found


def module_paths(architecture: Architecture) -> list[tuple[str, ...]]:
    """The full Flax path of every module with variables, in order
    (e.g. ``('stage1_block1', 'conv_bn1', 'conv')``)."""
    return [
        path if block is None else (block.name, *path)
        for block, path in parameter_modules(architecture)
    ]


def classifier(architecture: Architecture) -> str:
    """The module name of the last dense layer (the classifier)."""
    return next(
        item.name
        for item in reversed(architecture)
        if isinstance(item, Layer) and item.kind == "dense"
    )
