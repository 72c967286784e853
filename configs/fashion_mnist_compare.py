"""The method comparison on real Fashion-MNIST, sized for a shared 2-core CPU.

    python -m sastc_jax.compare --config=configs/fashion_mnist_compare.py --workdir=DIR

One ConvNet ANN teacher (widths 16/32/64, two epochs) shared by every run; a spiking
ConvNet student of half its width (8/16/32, T=2, three taps each) trained with ce, kd,
layerwise, spatial and sastc for seeds 0, 1, 2, each for 200 batches of 128 (25,600
images, cosine schedule). The teacher is made clearly stronger than the student gets
alone, so that distillation has something to transfer; its widths are kept small
because the nine SASTC regressors map student taps onto teacher channels and dominate
the cost of a step. 10% of the training split (class-balanced, fixed) is the validation
split that selects the "best" checkpoint; the test split is only reported.

Measured on the shared 2-core CPU machine (load average 11-19 from other jobs): the
teacher 360 s, a student run 107-500 s (ce fastest, sastc slowest), the whole table
53 min of wall-clock with two comparison processes side by side for its second half.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.source = "local"
    config.dataset.augment = False  # short schedules converge faster without it
    config.dataset.validation_fraction = 0.1
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (16, 32, 64)
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.1, epochs=2, batch_size=128, schedule="cosine"
    )
    config.student.model = "convnet_snn"
    config.student.model_kwargs.widths = (8, 16, 32)
    config.student.optimizer = optimizer_config(
        learning_rate=0.1, epochs=1, batch_size=128, schedule="cosine"
    )
    config.loss.beta = 100.0
    # The students' budget: 200 steps of their one epoch; the teacher trains whole epochs.
    config.max_steps_per_epoch = 200
    config.checkpoint_every_steps = 100
    config.log_every_steps = 50
    config.compare = dict(
        methods=("ce", "kd", "layerwise", "spatial", "sastc"),
        seeds=(0, 1, 2),
        teacher_max_steps_per_epoch=0,
    )
    return config
