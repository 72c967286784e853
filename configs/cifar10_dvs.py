"""CIFAR10-DVS (10 classes, 48x48): VGG-11 ANN on time-collapsed frames -> VGG-11 SNN, T=10.

Needs tonic (``pip install 'sastc-jax[dvs]'``) and the CIFAR10DVS files under
``dataset.data_dir`` in tonic's layout; the 9:1 train/test split is deterministic.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "cifar10_dvs"
    config.dataset.data_dir = "~/data/dvs"
    config.dataset.image_size = 48
    config.time_steps = 10
    config.teacher.model = "vgg11_ann"
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=100, batch_size=64, schedule="cosine"
    )
    config.student.model = "vgg11_snn"
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=200, batch_size=64, schedule="cosine"
    )
    config.checkpoint_every_steps = 200
    config.log_every_steps = 20
    return config
