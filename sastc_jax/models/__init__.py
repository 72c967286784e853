"""The model zoo: spiking students and ANN teachers, by registry name (docs/method.md §4).

Usage::

    model = get_model("resnet19_snn", num_classes=10, time_steps=2)
    variables = model.init(key, images)  # 'params' and 'batch_stats'
    logits, mutated = model.apply(
        variables, images, train=True, mutable=["batch_stats", "intermediates"]
    )
    taps = get_taps(mutated)  # stage outputs in depth order

Every model takes an ``ops`` attribute (:func:`sastc_jax.ops.select`; by default
``select('auto')``, resolved when the model is built) and every student ``remat``.

Every model is a :class:`~sastc_jax.models.network.Network`: its ``architecture()`` turns
its fields into its layers (:mod:`sastc_jax.models.architecture`) and its ``__call__`` runs
exactly those; the NIR export and the PyTorch import read the same description
(``architecture.describe(model)``). The ANN and SNN of a family are one definition
(:mod:`sastc_jax.models.ann`), the student with the spiking fields mixed in
(:class:`~sastc_jax.models.network.Spiking`, :mod:`sastc_jax.models.snn`).

A new model is one ``Network`` subclass (its fields and ``architecture()``) decorated
with :func:`register`; see docs/ARCHITECTURE.md.

Pass ``variables`` without an ``'intermediates'`` entry: ``sow`` appends to
whatever is already there, so feeding the mutated taps back in would repeat them.

Registered names: ``resnet19_snn``, ``resnet18_snn``, ``resnet34_snn``,
``vgg11_snn``, ``convnet_snn`` (students); ``resnet19_ann``, ``resnet18_ann``,
``resnet34_ann``, ``wrn28_4_ann``, ``pyramidnet20_ann``, ``vgg11_ann``,
``convnet_ann`` (teachers).
"""

from sastc_jax.models.ann import (
    VGG11,
    ConvNet,
    PyramidNet,
    PyramidNet20,
    ResNet,
    ResNet18,
    ResNet19,
    ResNet34,
    WideResNet,
    WideResNet28x4,
)
from sastc_jax.models.network import Network, ResidualBlock, Spiking
from sastc_jax.models.registry import (
    get_lif_outputs,
    get_model,
    get_model_class,
    get_taps,
    is_lif_call,
    is_spiking,
    list_models,
    register,
    supports_remat,
)
from sastc_jax.models.snn import (
    SpikingConvNet,
    SpikingResNet,
    SpikingResNet18,
    SpikingResNet19,
    SpikingResNet34,
    SpikingVGG11,
)

__all__ = [
    "VGG11",
    "ConvNet",
    "Network",
    "PyramidNet",
    "PyramidNet20",
    "ResNet",
    "ResNet18",
    "ResNet19",
    "ResNet34",
    "ResidualBlock",
    "Spiking",
    "SpikingConvNet",
    "SpikingResNet",
    "SpikingResNet18",
    "SpikingResNet19",
    "SpikingResNet34",
    "SpikingVGG11",
    "WideResNet",
    "WideResNet28x4",
    "get_lif_outputs",
    "get_model",
    "get_model_class",
    "get_taps",
    "is_lif_call",
    "is_spiking",
    "list_models",
    "register",
    "supports_remat",
]
