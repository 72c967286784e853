"""The experiment configuration: defaults shared by every ``configs/*.py`` and validation.

A config names the dataset, the teacher (architecture + checkpoint), the student,
T, the neuron, the method, the loss weights, one optimiser block per stage, the
batch, epochs, the eval/checkpoint cadence and the seed. Every field can be
overridden on the command line as ``--config.a.b=value``.

``config.method`` is a registered method (:mod:`sastc_jax.methods`). ``config.loss``
holds the shared weights (gamma, alpha_kd, temperature, kd_target, beta) and, for each
method with weights of its own, the section ``config.loss.<section>`` with the defaults
its module declares (``config.loss.tdkd``: alpha 0.2, beta_self 0.5, temperature 3), so
``method='tdkd'`` alone trains with tdkd's defaults while ``kd`` and ``sastc`` keep
theirs (tau 4, alpha_kd 1).
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from sastc_jax import data, methods, models, neurons, ops
from sastc_jax.checkpoints import is_torch_checkpoint
from sastc_jax.methods.terms import KD_TARGETS
from sastc_jax.models.layers import INIT_SCHEMES

STAGES = ("teacher", "distill", "all", "evaluate")
EVALUATED = ("teacher", "student", "student_best")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("step", "cosine", "constant")
BAD_EXAMPLES = data.bad_examples.POLICIES  # config.dataset.bad_examples
DATASETS = data.DATASET_NAMES  # the names of the dataset specs (sastc_jax.data.specs)


def optimizer_config(
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    decay_epochs: tuple[int, ...] = (),
    schedule: str = "step",
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    warmup_epochs: float = 0.0,
    clip_grad_norm: float = 0.0,
) -> ml_collections.ConfigDict:
    """One stage's optimiser: SGD + momentum + weight decay, step or cosine schedule.

    ``batch_size`` is the GLOBAL batch (all devices of all processes). ``clip_grad_norm``
    > 0 clips the gradients' global norm to it first (``optax.clip_by_global_norm``);
    0 = off, as in the release.
    """
    return ml_collections.ConfigDict(
        dict(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=False,
            weight_decay=weight_decay,
            schedule=schedule,
            decay_epochs=decay_epochs,
            decay_factor=0.1,
            warmup_epochs=warmup_epochs,
            epochs=epochs,
            batch_size=batch_size,
            clip_grad_norm=clip_grad_norm,
        )
    )


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the release's CIFAR-10 ResNet-19 -> ResNet-19 SASTC run (docs/method.md §9)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stage = "all"  # 'teacher' | 'distill' | 'all' | 'evaluate'
    # Stage 'evaluate' reports the test accuracy of: 'teacher' (config.teacher.checkpoint),
    # 'student' (WORKDIR/student, latest checkpoint) or 'student_best' (its best one).
    config.evaluate = "student"
    config.dtype = "float32"  # compute dtype; 'bfloat16' for GPU/TPU runs
    # Rematerialise every spiking block (ResNets) or conv + BN (VGG, ConvNet) and every
    # regressor group in the backward pass: the same numbers, about half the memory
    # (ResNet-19), a slower step.
    config.remat = False
    # The convolution / remat forms (sastc_jax/ops): 'auto' = the CPU matmul forms on the
    # CPU backend only, 'xla' = XLA's own everywhere, 'cpu_matmul' = the CPU forms anywhere.
    config.ops = "auto"

    config.dataset = ml_collections.ConfigDict(
        dict(
            name="cifar10",
            data_dir="",  # '' = the dataset's default location
            # the reader, data.SOURCES[name]: 'tfds', 'local' (Fashion-MNIST IDX files),
            # 'cifar_python', 'folder' (ImageNet); 'auto' detects it from data_dir
            source="auto",
            image_size=0,  # DVS frame size, ImageNet crop size; 0 = the dataset's default
            augment=True,
            # > 0: hold out this class-balanced share of the training split as the
            # validation split that picks the "best" checkpoint; 0 = select on test.
            validation_fraction=0.0,
            # An undecodable example (image folder): 'error' stops the run naming the
            # file; 'skip' uses the next good one of its class and logs it to
            # WORKDIR/bad_examples.jsonl (sastc_jax/data/bad_examples.py).
            bad_examples="error",
        )
    )
    config.time_steps = 2
    config.neuron = ml_collections.ConfigDict(
        dict(tau=0.5, v_threshold=1.0, surrogate="triangle", width=1.0)
    )

    config.teacher = ml_collections.ConfigDict(
        dict(
            model="resnet19_ann",
            # '' = train it first (stage 'teacher') into WORKDIR/teacher/final. Else an
            # orbax teacher directory, or a PyTorch (.pth, .pt, .pth.tar) / .safetensors
            # file to import (see sastc_jax/interop/pytorch.py).
            checkpoint="",
            # Each teacher initialises as its PyTorch source (models/ann.py); a config
            # file may set model_kwargs.init_scheme to another scheme of models.layers.
            model_kwargs=ml_collections.ConfigDict(),
            optimizer=optimizer_config(
                learning_rate=0.1, epochs=300, batch_size=128, decay_epochs=(150, 225)
            ),
        )
    )
    config.student = ml_collections.ConfigDict(
        dict(
            model="resnet19_snn",
            # init_scheme: 'pytorch' (the release's student: PyTorch's module defaults) or
            # 'kaiming_fan_out' (Kaiming-normal fan-out convs, zero dense biases).
            model_kwargs=ml_collections.ConfigDict(dict(init_scheme="pytorch")),
            optimizer=optimizer_config(
                learning_rate=0.01, epochs=240, batch_size=64, decay_epochs=(150, 180, 210)
            ),
        )
    )

    # A registered method (sastc_jax.methods): 'ce' | 'kd' | 'layerwise' | 'spatial' |
    # 'sastc' | ...
    config.method = "sastc"
    # The shared weights: gamma (cross-entropy), alpha_kd and temperature (tau_kd) of the
    # KD term, beta (the calibration term). A method whose terms need weights of their own
    # reads them from its section config.loss.<section> (sastc_jax.methods.WeightSection),
    # filled below with the defaults its module declares; the shared weights keep theirs.
    config.loss = ml_collections.ConfigDict(
        dict(gamma=1.0, alpha_kd=1.0, beta=800.0, temperature=4.0)
    )
    # docs/method.md §7, off by default: KD on every time step's logits ('per_step') instead of
    # the time-mean ('mean'); attention logits scale * <q, k>, the scale fixed or learned.
    config.loss.kd_target = "mean"
    config.loss.attention_scale = 1.0
    config.loss.learn_attention_scale = False
    for section in methods.weight_sections():
        config.loss[section.name] = ml_collections.ConfigDict(section.defaults())
    config.calibration = ml_collections.ConfigDict(dict(embed_dim=0))  # 0 = B // 4
    # Blow-ups that stay finite (train.TrainLog; docs/running.md, "Guards").
    config.guards = ml_collections.ConfigDict(
        dict(
            # Warn when the first step's beta * calibration exceeds this multiple of
            # gamma * CE (0 = never). Measured first steps: quickstart 41x, the CIFAR-10
            # release pair (beta 800, random teacher) 685x.
            max_calibration_ratio=1000.0,
            # Stop when the parameter norm grows by more than this factor within one
            # logging interval (0 = off). Measured healthy: x4.9 over the quickstart
            # student's first 50 steps (36.8 -> 180), x1.14 for its teacher; the blow-up
            # this catches went x16 in one step (docs/running.md, "Guards").
            max_param_norm_growth=10.0,
        )
    )

    config.eval_every_epochs = 1
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.log_every_steps = 50
    # TensorBoard scalars in WORKDIR/tensorboard/ (tensorboardX, a dependency); without
    # tensorboardX importable, one info line and no event files.
    config.tensorboard = True
    # 0 = whole epochs; a positive value cuts every epoch short (smoke tests only).
    config.max_steps_per_epoch = 0
    return config


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(
            f"config.{field} = {value!r} is not supported; allowed: {', '.join(map(str, allowed))}."
        )


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ``ValueError`` naming the field, the value and what is allowed.

    ``device_count``: the devices of this run, when known (batch divisibility checks).
    """
    _validate_choices(config)
    _validate_models(config)
    _validate_loss(config)
    _validate_optimizers(config, device_count)
    _validate_optimizer_numbers(config)
    _validate_loss_numbers(config)
    _validate_sizes(config)
    _validate_guards_and_intervals(config)


def _validate_choices(config: ml_collections.ConfigDict) -> None:
    """The enumerated fields, the dataset and the teacher file against the stage."""
    _choice("stage", config.stage, STAGES)
    _choice("evaluate", config.evaluate, EVALUATED)
    if config.stage == "teacher" and is_torch_checkpoint(config.teacher.checkpoint):
        raise ValueError(
            f"config.teacher.checkpoint = {config.teacher.checkpoint!r} is a PyTorch file to "
            "import; the `teacher` stage trains and saves an orbax teacher directory. Use "
            "stage `distill`, `all` or `evaluate` with this file, or name a directory."
        )
    _choice("dtype", config.dtype, DTYPES)
    _choice("ops", config.get("ops", "auto"), ops.NAMES)
    _choice("method", config.method, methods.method_names())
    _choice("dataset.name", config.dataset.name, DATASETS)
    _choice("dataset.source", config.dataset.source, data.SOURCES[config.dataset.name])
    _choice("dataset.bad_examples", config.dataset.get("bad_examples", "error"), BAD_EXAMPLES)
    if not 0.0 <= config.dataset.validation_fraction < 1.0:
        raise ValueError(
            f"config.dataset.validation_fraction = {config.dataset.validation_fraction}; "
            "allowed: 0 (no validation split) or a share in (0, 1)."
        )


def _validate_models(config: ml_collections.ConfigDict) -> None:
    """Registered models, a teacher ANN and a spiking student, remat support, neurons."""
    _choice("teacher.model", config.teacher.model, models.list_models())
    _choice("student.model", config.student.model, models.list_models())
    for role in ("teacher", "student"):
        if "init_scheme" in config[role].model_kwargs:
            scheme = config[role].model_kwargs.init_scheme
            _choice(f"{role}.model_kwargs.init_scheme", scheme, INIT_SCHEMES)
    if models.is_spiking(config.teacher.model):
        raise ValueError(
            f"config.teacher.model = {config.teacher.model!r} is a spiking "
            "model; the teacher must be an ANN (a *_ann model)."
        )
    if not models.is_spiking(config.student.model):
        raise ValueError(
            f"config.student.model = {config.student.model!r} is an ANN; "
            "the student must be a spiking model (a *_snn model)."
        )
    if config.get("remat", False) and not models.supports_remat(config.student.model):
        supported = [name for name in models.list_models() if models.supports_remat(name)]
        raise ValueError(
            f"config.remat = True, but the student {config.student.model!r} has no remat "
            f"option; the students that support it: {', '.join(supported)}."
        )
    if config.time_steps < 1:
        raise ValueError(f"config.time_steps = {config.time_steps}; an SNN needs T >= 1.")
    neurons.LIFConfig(**config.neuron.to_dict())  # raises on a bad surrogate / tau / width


def _validate_loss(config: ml_collections.ConfigDict) -> None:
    """The fields of ``config.loss``: the shared weights, the attention scale and the
    sections of the registered methods' own weights."""
    shared = [field for field in methods.LossWeights._fields if field != "sections"]
    sections = {section.name: section for section in methods.weight_sections()}
    loss_fields = (*shared, "attention_scale", "learn_attention_scale", *sections)
    if unknown := sorted(set(config.loss) - set(loss_fields)):
        raise ValueError(
            f"config.loss has unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(loss_fields)}."
        )
    for name, section in sections.items():
        if name in config.loss:
            _validate_weight_section(name, config.loss[name], section.defaults())
    _choice("loss.kd_target", config.loss.get("kd_target", "mean"), KD_TARGETS)
    scale = config.loss.get("attention_scale", 1.0)
    if not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
        raise ValueError(
            f"config.loss.attention_scale = {scale!r}; allowed: a finite number > 0 "
            "(1 = the paper's unscaled attention)."
        )


def _validate_weight_section(name: str, values, defaults: dict) -> None:
    """A method's own weights: known fields, each a finite number >= 0 (a temperature > 0)."""
    if not isinstance(values, ml_collections.ConfigDict):
        raise ValueError(
            f"config.loss.{name} = {values!r}; allowed: a section with the fields "
            f"{', '.join(defaults)}."
        )
    if unknown := sorted(set(values) - set(defaults)):
        raise ValueError(
            f"config.loss.{name} has unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(defaults)}."
        )
    for field, value in values.items():
        lowest = "> 0" if field == "temperature" else ">= 0"
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        valid = valid and math.isfinite(value) and (value > 0 if lowest == "> 0" else value >= 0)
        if not valid:
            raise ValueError(
                f"config.loss.{name}.{field} = {value!r}; allowed: a finite number {lowest}."
            )


def _validate_optimizers(config: ml_collections.ConfigDict, device_count: int | None) -> None:
    """Each stage's optimiser, its batch against the devices, the calibration batch."""
    for stage in ("teacher", "student"):
        optim = config[stage].optimizer
        _choice(f"{stage}.optimizer.schedule", optim.schedule, SCHEDULES)
        if optim.epochs < 1 or optim.batch_size < 1 or optim.learning_rate <= 0:
            raise ValueError(
                f"config.{stage}.optimizer needs epochs >= 1, batch_size >= 1 and "
                f"learning_rate > 0; got epochs={optim.epochs}, "
                f"batch_size={optim.batch_size}, lr={optim.learning_rate}."
            )
        if optim.get("clip_grad_norm", 0.0) < 0:
            raise ValueError(
                f"config.{stage}.optimizer.clip_grad_norm = {optim.clip_grad_norm}; allowed: "
                "0 (no clipping) or a positive maximum global gradient norm."
            )
        if device_count and optim.batch_size % device_count:
            raise ValueError(
                f"config.{stage}.optimizer.batch_size = {optim.batch_size} does not divide by "
                f"the {device_count} devices of this run; use a multiple of {device_count}."
            )
    if device_count and methods.get_method(config.method).calibrated:
        per_device = config.student.optimizer.batch_size // device_count
        if per_device < 4 and not config.calibration.embed_dim:
            raise ValueError(
                f"The calibration batch is the per-device batch: "
                f"{config.student.optimizer.batch_size} / {device_count} devices = "
                f"{per_device}, but SASTC needs at least 4 (d = B // 4). Raise "
                "config.student.optimizer.batch_size or set config.calibration.embed_dim."
            )


def _validate_guards_and_intervals(config: ml_collections.ConfigDict) -> None:
    """The training guards and the logging / evaluation / checkpoint intervals."""
    if config.guards.max_calibration_ratio < 0:
        raise ValueError(
            f"config.guards.max_calibration_ratio = {config.guards.max_calibration_ratio}; "
            "allowed: 0 (no warning) or a positive multiple of the CE term."
        )
    growth = config.guards.max_param_norm_growth
    if growth != 0 and growth <= 1:
        raise ValueError(
            f"config.guards.max_param_norm_growth = {growth}; allowed: 0 (off) or a factor "
            "> 1 by which the parameter norm may grow within one logging interval."
        )
    for field in (
        "eval_every_epochs",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
    ):
        if config[field] < 1:
            raise ValueError(f"config.{field} = {config[field]} must be >= 1.")


def _require_number(field: str, value, *, low: float, high: float = math.inf, allowed: str):
    """Raise ``ValueError`` unless ``value`` is a finite real number in ``[low, high)``
    (``high`` = inf: no upper bound); ``allowed`` describes the range in words."""
    valid = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value < high
    )
    if not valid:
        raise ValueError(f"config.{field} = {value!r}; allowed: {allowed}.")


def _validate_optimizer_numbers(config: ml_collections.ConfigDict) -> None:
    """Each stage's learning rate, momentum, weight decay, warm-up and decay schedule."""
    for stage in ("teacher", "student"):
        optim, prefix = config[stage].optimizer, f"{stage}.optimizer"
        _require_number(
            f"{prefix}.learning_rate", optim.learning_rate, low=0, allowed="a finite number > 0"
        )
        _require_number(f"{prefix}.momentum", optim.momentum, low=0, high=1, allowed="[0, 1)")
        _require_number(
            f"{prefix}.weight_decay", optim.weight_decay, low=0, allowed="a finite number >= 0"
        )
        _require_number(
            f"{prefix}.warmup_epochs",
            optim.warmup_epochs,
            low=0,
            high=optim.epochs,
            allowed=f"0 (no warm-up) up to below the {optim.epochs} epochs of the stage",
        )
        factor = optim.decay_factor
        if not (isinstance(factor, numbers.Real) and 0 < factor <= 1):
            raise ValueError(
                f"config.{prefix}.decay_factor = {factor!r}; allowed: a factor in (0, 1] "
                "by which the step schedule multiplies the rate at each decay epoch."
            )
        for epoch in optim.decay_epochs:
            _require_number(
                f"{prefix}.decay_epochs",
                epoch,
                low=0,
                allowed="epochs >= 0 at which the step schedule multiplies the rate",
            )


def _validate_loss_numbers(config: ml_collections.ConfigDict) -> None:
    """The loss weights (>= 0) and the KD temperature (> 0)."""
    for name in ("gamma", "alpha_kd", "beta"):
        if name in config.loss:
            _require_number(
                f"loss.{name}", config.loss[name], low=0, allowed="a finite weight >= 0"
            )
    temperature = config.loss.get("temperature", 1.0)
    if not (isinstance(temperature, numbers.Real) and 0 < temperature < math.inf):
        raise ValueError(
            f"config.loss.temperature = {temperature!r}; allowed: a finite temperature > 0."
        )


def _validate_sizes(config: ml_collections.ConfigDict) -> None:
    """Integer sizes and counts that are 0 (= off / the default) or positive."""
    for field, value, meaning in (
        ("calibration.embed_dim", config.calibration.embed_dim, "0 (= B // 4) or a width"),
        ("max_steps_per_epoch", config.max_steps_per_epoch, "0 (whole epochs) or a step count"),
        ("dataset.image_size", config.dataset.image_size, "0 (the dataset's size) or a size"),
        ("time_steps", config.time_steps, "an integer T >= 1"),
        ("seed", config.seed, "an integer >= 0"),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"config.{field} = {value!r}; allowed: {meaning}.")
