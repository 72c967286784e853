"""The method comparison at convergence on real Fashion-MNIST, T = 2.

    python -m sastc_jax.compare --config=configs/fashion_mnist_compare.py \
        --workdir=docs/results/fashion_mnist --commit_records

Run from the repository root with that workdir, every finished run's record (no student
checkpoint) and the teacher (with its SHA-256) are committed as they finish, so the table
continues on another machine from the repository alone (docs/comparison.md).

The pair, chosen by pilots on the 2-core CPU (docs/comparison.md has the figures):

- teacher ConvNet ANN 16/32/64, augmented, lr 0.05 cosine, 20 epochs (at 10 epochs it
  measured 89.7% test / 90.8% validation against the student alone's 89.7%: the pair needs at
  least 1 point on validation, and 20 epochs buy margin at a cost paid once);
- student spiking ConvNet 4/8/16, T = 2, 24 epochs of batch 128, cosine, no augmentation
  (at its plateau: 48 epochs changed validation accuracy by -0.17 points);
- the calibrated rows against this teacher run at about 3.6x the images/s of the same
  student against the 32/64/128 teacher (the regressors map onto the teacher's channels);
  a teacher 2 points above the student (32/64/128 and up) costs well over 1.5x as much.

- Sweeps on validation, seed 0: the student learning rate for ``ce`` from (0.05, 0.1,
  0.2, 0.5) and beta for ``sastc`` from (10, 30, 100, 800); the doubling check trains
  ``ce`` and ``sastc`` for 48 epochs on seed 0.
- Rows: five seeds for the cheap ones, ``ce``, ``kd``, ``kd_per_step`` (per-step KD,
  docs/method.md), ``tdkd`` (temporally decoupled logit distillation); three for the
  calibrated ones, ``sastc``, ``sastc_scaled`` (learned attention scale from 1),
  ``layerwise``, ``spatial``, ``sastc_tdkd`` (tdkd's logit terms plus the SASTC
  calibration); one for ``sastc_released`` (the release's SGD lr 0.01, momentum 0.9,
  weight decay 5e-4, beta 800, its step decays at 150/180/210 of 240 epochs scaled to 24).
"""

from sastc_jax.configuration import base_config, optimizer_config

EPOCHS = 24
# The release's step decays (epochs 150, 180, 210 of 240), scaled to EPOCHS.
RELEASE_DECAYS = tuple(EPOCHS * epoch / 240 for epoch in (150, 180, 210))
CHEAP_SEEDS = (0, 1, 2, 3, 4)  # the rows without a calibration; the others: seeds 0-2


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.source = "local"
    config.dataset.augment = False  # the teacher's is on: compare.teacher_overrides
    config.dataset.validation_fraction = 0.1
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (16, 32, 64)
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.05, epochs=20, batch_size=128, schedule="cosine"
    )
    config.student.model = "convnet_snn"
    config.student.model_kwargs.widths = (4, 8, 16)
    config.student.optimizer = optimizer_config(
        learning_rate=0.05, epochs=EPOCHS, batch_size=128, schedule="cosine"
    )
    config.loss.beta = 100.0  # replaced by the beta sweep's choice
    config.checkpoint_every_steps = 200
    config.log_every_steps = 100
    config.compare = dict(
        rows=(
            "ce",
            "kd",
            "kd_per_step",
            "tdkd",
            "layerwise",
            "spatial",
            "sastc",
            "sastc_scaled",
            "sastc_tdkd",
            "sastc_released",
        ),
        variants=dict(
            kd_per_step=dict(method="kd", overrides=dict(loss=dict(kd_target="per_step"))),
            sastc_scaled=dict(
                method="sastc",
                overrides=dict(loss=dict(attention_scale=1.0, learn_attention_scale=True)),
            ),
            sastc_released=dict(
                method="sastc",
                overrides=dict(
                    loss=dict(beta=800.0),
                    student=dict(
                        optimizer=dict(
                            learning_rate=0.01,
                            momentum=0.9,
                            weight_decay=5e-4,
                            schedule="step",
                            decay_epochs=RELEASE_DECAYS,
                        )
                    ),
                ),
            ),
        ),
        seeds=(0, 1, 2),
        row_seeds={
            **{row: CHEAP_SEEDS for row in ("ce", "kd", "kd_per_step", "tdkd")},
            "sastc_released": (0,),
        },
        paired=(
            ("sastc", "kd"),
            ("sastc", "ce"),
            ("kd", "ce"),
            ("kd_per_step", "kd"),
            ("sastc_scaled", "sastc"),
            ("tdkd", "kd"),
            ("tdkd", "sastc"),
            ("sastc_tdkd", "tdkd"),
        ),
        learning_rate_sweep=dict(row="ce", seed=0, candidates=(0.05, 0.1, 0.2, 0.5)),
        beta_sweep=dict(row="sastc", seed=0, candidates=(10.0, 30.0, 100.0, 800.0)),
        doubling=dict(rows=("ce", "sastc"), seed=0, factor=2, tolerance=0.003),
        teacher_overrides=dict(dataset=dict(augment=True)),
        teacher_max_steps_per_epoch=0,
    )
    return config
