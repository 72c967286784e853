"""CIFAR-100, T=2: ResNet-19 ANN -> ResNet-19 SNN with SASTC,
the release recipe (docs/method.md §9)."""

from sastc_jax.configuration import base_config


def get_config():
    config = base_config()
    config.dataset.name = "cifar100"  # 100 classes: the models read it from the dataset
    config.time_steps = 2
    return config
