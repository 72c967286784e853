"""ImageNet, T=4: ResNet-34 ANN -> spiking ResNet-34 with SASTC.

``dataset.data_dir`` is either a folder holding ``train/`` and ``val/`` with one
sub-folder per class (torchvision's ImageFolder layout, read as JPEG/PNG files; the class
count is the number of class folders) or the TFDS manual-download layout of imagenet2012;
``dataset.source='auto'`` tells them apart (``'folder'`` or ``'tfds'`` forces one).
For the cheaper pair use ``--config.teacher.model=resnet18_ann
--config.student.model=resnet18_snn``.
"""

from sastc_jax.configuration import base_config, optimizer_config


def get_config():
    config = base_config()
    config.dataset.name = "imagenet2012"
    config.dataset.data_dir = "~/tensorflow_datasets"  # or the folder holding train/ and val/
    config.dataset.source = "auto"
    config.time_steps = 4
    config.dtype = "bfloat16"
    config.teacher.model = "resnet34_ann"
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.1, epochs=90, batch_size=256, decay_epochs=(30, 60, 80), weight_decay=1e-4
    )
    config.student.model = "resnet34_snn"
    config.student.optimizer = optimizer_config(
        learning_rate=0.1,
        epochs=120,
        batch_size=256,
        schedule="cosine",
        weight_decay=1e-4,
        warmup_epochs=1,
    )
    config.checkpoint_every_steps = 2000
    config.log_every_steps = 100
    # 0 = whole epochs (5,005 steps at batch 256). A first try on a new machine or folder:
    # --config.max_steps_per_epoch=20 runs every stage end to end in minutes.
    config.max_steps_per_epoch = 0
    return config
