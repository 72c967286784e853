"""The vocabulary a model's layers are described in, and the readers of a description.

Every model of the zoo is a :class:`sastc_jax.models.network.Network`: its
``architecture()`` method turns its fields into its layers in execution order (a tuple of
:class:`Layer` and :class:`Block`, a residual block), and its ``__call__`` runs exactly
those layers. The description is therefore the model, not a second account of it; it says
what each Flax module is and where it lives. Its readers:

- the NIR export (:func:`sastc_jax.interop.nir_plan.plan`) builds its graph from the students'
  descriptions;
- the PyTorch import (:mod:`sastc_jax.interop.pytorch`) takes our module paths of the
  teachers from :func:`parameter_modules` and keeps only the PyTorch-side names.

Layer kinds (:data:`KINDS`) and the Flax modules they hold:

- ``'conv_bn'``: a :class:`~sastc_jax.models.layers.ConvBN`, modules ``name/conv`` (kernel)
  and ``name/bn`` (scale, bias; running mean, var); ``'conv'``: a bare conv ``name``;
  ``'bn'``: a bare batch norm ``name``; ``'dense'``: a dense layer ``name`` (kernel, bias);
- ``'lif'``, ``'relu'``: activations (no variables); a LIF is the Flax module ``name``;
- ``'avg_pool'``, ``'max_pool'`` (``kernel`` window, ``stride``, ``padding``, ``ceil``),
  ``'global_avg_pool'`` (per channel, over the whole map), ``'flatten'``,
  ``'pad_channels'`` (zero channels appended up to ``features``): no variables.

The helpers below (:func:`conv_bn`, :func:`residual_stages`, :func:`plain_stages`) write
the module paths ``stem``, ``stage{s}_block{b}``, ``stage{s}_conv{l}``, ``fc`` once for
every family, students and teachers alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn

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
    ``tap``: the layer's output is a distillation tap (sown by the top-level module).
    """

    kind: str
    name: str
    features: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    ceil: bool = False
    tap: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; choose one of {KINDS}.")


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block, the Flax module ``name`` = ``stage{stage}_block{index}`` (1-based).

    ``body`` runs on the block input; ``shortcut`` (empty: the identity) runs on the block
    input, or on the output of the body layer named ``shortcut_from``; their sum goes
    through ``after`` (empty: the sum is the block output). Layer names are relative to
    the block. ``features`` and ``stride``: the block module's output width and stride.
    """

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    shortcut_from: str = ""
    after: tuple[Layer, ...] = ()
    features: int = 0
    stride: int = 1
    # Set by residual_stages:
    name: str = ""
    stage: int = 0
    index: int = 0
    tap: bool = False


Architecture = tuple[Layer | Block, ...]


def activation(spiking: bool) -> str:
    """The activation kind of a spiking (``'lif'``) or ANN (``'relu'``) network."""
    return "lif" if spiking else "relu"


def conv_bn(name: str, features: int, kernel: int, stride: int) -> Layer:
    """A conv + BN with PyTorch's symmetric padding ``kernel // 2``."""
    return Layer("conv_bn", name, features, kernel, stride, kernel // 2)


def conv(name: str, features: int, kernel: int, stride: int) -> Layer:
    """A bare conv with PyTorch's symmetric padding ``kernel // 2``."""
    return Layer("conv", name, features, kernel, stride, kernel // 2)


def projects(in_channels: int, width: int, stride: int) -> bool:
    """Whether a block changes the shape of its input, so that its shortcut must too."""
    return stride != 1 or in_channels != width


def check_stages(stage_sizes: Sequence[int], widths: Sequence[int], strides: Sequence[int]):
    """Raise unless the per-stage settings of a residual network have one entry per stage."""
    if not len(stage_sizes) == len(widths) == len(strides):
        raise ValueError("stage_sizes, widths and strides must have the same length.")


def residual_stages(
    in_channels: int,
    block_widths: Sequence[Sequence[int]],
    strides: Sequence[int],
    make_block: Callable[[int, int, int], Block],
) -> list[Block]:
    """The blocks ``stage{s}_block{b}`` of residual stages: stage ``s`` has one block per
    width in ``block_widths[s]``, the first with stride ``strides[s]``;
    ``make_block(in_channels, width, stride)`` describes one (this names and numbers it,
    and marks each stage's last block as a tap).
    """
    blocks, channels = [], in_channels
    for stage, (widths, stride) in enumerate(zip(block_widths, strides, strict=True), 1):
        for index, width in enumerate(widths, 1):
            block_stride = stride if index == 1 else 1
            block = make_block(channels, width, block_stride)
            name = f"stage{stage}_block{index}"
            blocks.append(
                dataclasses.replace(
                    block,
                    features=width,
                    stride=block_stride,
                    name=name,
                    stage=stage,
                    index=index,
                    tap=index == len(widths),
                )
            )
            channels = width
    return blocks


def plain_stages(stages: Sequence[Sequence[int]], activation: str, pool: str) -> list[Layer]:
    """Plain conv stages: per stage, conv3x3 + BN ``stage{s}_conv{l}`` and its activation
    ``stage{s}_conv{l}_{activation}`` per width, then a 2x2 ``pool`` pool ``stage{s}_pool``
    (floor), whose output is the stage's tap."""
    if not stages or not all(stages):
        raise ValueError(f"Every stage needs at least one conv width; got {stages!r}.")
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg'; got {pool!r}.")
    layers = []
    for stage, widths in enumerate(stages, 1):
        for index, width in enumerate(widths, 1):
            name = f"stage{stage}_conv{index}"
            layers += [conv_bn(name, width, 3, 1), Layer(activation, f"{name}_{activation}")]
        layers.append(Layer(f"{pool}_pool", f"stage{stage}_pool", kernel=2, stride=2, tap=True))
    return layers


def is_described(model: nn.Module) -> bool:
    """Whether ``model`` describes its layers (it has an ``architecture()`` method, as every
    :class:`~sastc_jax.models.network.Network` does)."""
    return callable(getattr(model, "architecture", None))


def describe(model: nn.Module) -> Architecture:
    """The layers of ``model`` in execution order: ``model.architecture()``, the layers
    its ``__call__`` runs.

    ``ValueError`` for a model without a description, or fields the model rejects.
    """
    if not is_described(model):
        raise ValueError(
            f"no architecture description for {type(model).__name__}: a described model is "
            "a sastc_jax.models.network.Network with an architecture() method."
        )
    return tuple(model.architecture())


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
