"""A tiny SASTC run on CIFAR-shaped data for the multi-process tests (seconds per stage).

    python tests/mock_main.py --config=tests/configs/tiny_cifar.py --workdir=DIR

Convnet teacher and student of widths (8, 16, 32), T = 2, global batch 16, three
steps per stage (``max_steps_per_epoch``), one epoch each.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "cifar10"
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (8, 16, 32)
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=1, batch_size=16, schedule="constant"
    )
    config.student.model = "convnet_snn"
    config.student.model_kwargs.widths = (8, 16, 32)
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=1, batch_size=16, schedule="constant"
    )
    config.loss.beta = 100.0
    config.max_steps_per_epoch = 3
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 1
    return config
