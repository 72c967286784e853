"""CIFAR-10, T=2: ResNet-19 ANN -> ResNet-19 SNN with SASTC,
the release recipe (docs/method.md §9)."""

from sastc_jax.configuration import base_config


def get_config():
    config = base_config()  # the release defaults: cifar10, resnet19 pair, beta=800
    config.dataset.name = "cifar10"
    config.time_steps = 2
    return config
