"""Fashion-MNIST, T=2: small ConvNet ANN -> small spiking ConvNet with SASTC.

Sized for a 2-core CPU; reads the Debian ``dataset-fashion-mnist`` IDX files
(``/usr/share/datasets/fashion-mnist``) offline.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.source = "local"
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (32, 64, 128)
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=10, batch_size=128, schedule="cosine"
    )
    config.student.model = "convnet_snn"
    config.student.model_kwargs.widths = (32, 64, 128)
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=20, batch_size=64, schedule="cosine"
    )
    config.loss.beta = 100.0
    config.checkpoint_every_steps = 500
    return config
