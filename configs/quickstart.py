"""Quickstart: teacher + SASTC student on the real Fashion-MNIST, <= 10 minutes on 2 CPU cores.

    python -m sastc_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart

The same model pair as ``fashion_mnist_t2.py``, with short schedules.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.source = "local"
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=2, batch_size=128, schedule="cosine"
    )
    config.student.model = "convnet_snn"
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=3, batch_size=64, schedule="cosine"
    )
    config.loss.beta = 100.0
    config.checkpoint_every_steps = 200
    return config
