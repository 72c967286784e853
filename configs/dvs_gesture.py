"""DVS-Gesture (11 classes): VGG-11 ANN on time-collapsed frames -> VGG-11 SNN, T=10.

Needs tonic (``pip install 'sastc-jax[dvs]'``) and the DVSGesture files under
``dataset.data_dir`` in tonic's layout.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "dvs_gesture"
    config.dataset.data_dir = "~/data/dvs"
    config.dataset.image_size = 64
    config.time_steps = 10
    config.teacher.model = "vgg11_ann"
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=100, batch_size=32, schedule="cosine"
    )
    config.student.model = "vgg11_snn"
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=200, batch_size=32, schedule="cosine"
    )
    config.checkpoint_every_steps = 200
    config.log_every_steps = 10
    return config
