"""The comparison of ``fashion_mnist_compare.py`` sized for one GPU: wider models, more epochs.

    python -m sastc_jax.compare --config=configs/fashion_mnist_compare_gpu.py --workdir=DIR

The same rows, seeds, paired differences, sweeps and doubling check; teacher ConvNet ANN
64/128/256 (30 epochs), student spiking ConvNet 32/64/128 (30 epochs; doubling: 60),
both trained with augmentation (the CPU config's small student trains without it).
Not yet run: its times are those its published run reports.
"""

import importlib.util
from pathlib import Path

EPOCHS = 30


def _cpu_config():
    path = Path(__file__).with_name("fashion_mnist_compare.py")
    spec = importlib.util.spec_from_file_location("fashion_mnist_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _cpu_config()
    config.dataset.augment = True
    config.teacher.model_kwargs.widths = (64, 128, 256)
    config.teacher.optimizer.epochs = 30
    config.student.model_kwargs.widths = (32, 64, 128)
    config.student.optimizer.epochs = EPOCHS
    release = config.compare.variants.sastc_released.overrides.student.optimizer
    release.decay_epochs = tuple(EPOCHS * epoch / 240 for epoch in (150, 180, 210))
    config.checkpoint_every_steps = 1000
    return config
