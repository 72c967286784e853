"""Every ``configs/*.py`` builds and validates, and, at a tiny batch and T, its data
pipeline (mock or fake files) feeds one traced teacher step and one traced distillation
step of its real models."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from sastc_jax import configuration, data, losses, models, ops, parallel, train
from sastc_jax.train import step

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*.py"))


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_config_file_is_covered():
    assert set(CONFIGS) >= {
        "cifar10_t2",
        "cifar100_t2",
        "imagenet_t4",
        "dvs_gesture",
        "cifar10_dvs",
        "fashion_mnist_t2",
        "quickstart",
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_validates(name):
    config = load_config(name)
    configuration.validate(config, device_count=1)
    assert config.method in ("ce", "kd", "layerwise", "spatial", "sastc")
    assert config.student.optimizer.epochs >= 1 and config.teacher.optimizer.epochs >= 1


def test_release_recipe_in_cifar_configs():
    for name in ("cifar10_t2", "cifar100_t2"):
        config = load_config(name)
        assert (config.teacher.model, config.student.model) == ("resnet19_ann", "resnet19_snn")
        assert config.time_steps == 2 and config.loss.beta == 800.0
        optim = config.student.optimizer
        assert (optim.learning_rate, optim.momentum, optim.weight_decay, optim.epochs) == (
            0.01,
            0.9,
            5e-4,
            240,
        )
        assert tuple(optim.decay_epochs) == (150, 180, 210)
    assert load_config("cifar100_t2").dataset.name == "cifar100"


def fake_data_dir(config, tmp_path):
    """Write a tiny copy of the dataset in its real on-disk layout where mock data cannot."""
    from test_data_static import write_fashion_dir

    name = config.dataset.name
    if name == "fashion_mnist":
        write_fashion_dir(tmp_path, n_train=8, n_test=4)
    elif name in ("dvs_gesture", "cifar10_dvs"):
        pytest.importorskip("tonic")
        from test_data_dvs import write_cifar10_dvs, write_gesture

        if name == "dvs_gesture":
            write_gesture(tmp_path, "train", users=[1])
            write_gesture(tmp_path, "test", users=[24])
        else:
            write_cifar10_dvs(tmp_path, per_class=2)
    return str(tmp_path)


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def abstract_state(params, batch_stats, tx) -> step.TrainState:
    """The shapes of a one-device train state (batch statistics on a leading device axis)."""
    return step.TrainState(
        step=jax.ShapeDtypeStruct((), np.int32),
        params=params,
        batch_stats=jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), batch_stats
        ),
        opt_state=jax.eval_shape(tx.init, params),
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_config_traces_one_step_on_mock_data(name, tmp_path):
    config = load_config(name)
    config.time_steps = min(config.time_steps, 2)
    config.teacher.optimizer.batch_size = 4
    config.student.optimizer.batch_size = 4  # the smallest calibration batch
    configuration.validate(config, device_count=1)
    if config.dataset.name not in ("cifar10", "cifar100", "imagenet2012"):
        config.dataset.data_dir = fake_data_dir(config, tmp_path)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        dataset = data.get_dataset(
            config.dataset.name,
            "train",
            batch_size=4,
            time_steps=config.time_steps,
            train=True,
            data_dir=config.dataset.data_dir or None,
            source=config.dataset.source,
            image_size=config.dataset.image_size or None,
            num_devices=1,
            process_index=0,
            process_count=1,
        )
        batch = next(iter(dataset.epoch(0)))
    assert batch["image"].shape == (4, *dataset.input_shape)

    mesh = parallel.make_mesh()
    sample = np.zeros_like(batch["image"])
    parts = train.build_distillation(config, dataset.num_classes, sample)
    key = jax.random.key(0)
    student_vars = jax.eval_shape(lambda: parts.student.init(key, sample, train=False))
    teacher_vars = jax.eval_shape(lambda: parts.teacher.init(key, sample, train=False))
    params = {"student": student_vars["params"]}
    if parts.calibrator is not None:
        params["calibration"] = jax.eval_shape(parts.init_calibration, key)

    tx, schedule = step.make_optimizer(config.student.optimizer, steps_per_epoch=10)
    state = abstract_state(params, student_vars["batch_stats"], tx)
    train_step = step.make_train_step(parts.objective, tx, schedule, mesh)
    new_state, metrics = jax.eval_shape(train_step, state, teacher_vars, abstract(batch))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert {"loss", "ce", "kd", "calibration", "accuracy"} <= set(metrics)

    teacher_step = step.make_train_step(step.teacher_objective(parts.teacher), tx, schedule, mesh)
    teacher_state = abstract_state(teacher_vars["params"], teacher_vars["batch_stats"], tx)
    _, teacher_metrics = jax.eval_shape(teacher_step, teacher_state, {}, abstract(batch))
    assert teacher_metrics["loss"].shape == ()


def test_evaluated_model_is_validated():
    config = configuration.base_config()
    config.evaluate = "teacher_best"
    with pytest.raises(ValueError, match=r"config\.evaluate = 'teacher_best' is not supported"):
        configuration.validate(config)
    config.evaluate, config.stage = "teacher", "teacher"
    config.teacher.checkpoint = "resnet19.pth.tar"
    with pytest.raises(ValueError, match="is a PyTorch file to import; the `teacher` stage"):
        configuration.validate(config)


def test_dataset_source_must_be_a_reader_of_the_dataset():
    config = load_config("cifar10_t2")
    config.dataset.source = "folder"
    with pytest.raises(ValueError, match=r"config.dataset.source = 'folder'.*cifar_python"):
        configuration.validate(config, device_count=1)
    config.dataset.source = "cifar_python"
    configuration.validate(config, device_count=1)


def test_loss_options_default_to_the_paper_and_are_validated():
    config = configuration.base_config()
    assert config.loss.kd_target == "mean"
    assert config.loss.attention_scale == 1.0 and config.loss.learn_attention_scale is False
    config.loss.kd_target = "every_step"
    with pytest.raises(ValueError, match=r"config\.loss\.kd_target = 'every_step'.*mean, per_step"):
        configuration.validate(config)
    config.loss.kd_target = "per_step"
    configuration.validate(config)
    for bad in (0.0, -1.0, float("inf")):
        config.loss.attention_scale = bad
        with pytest.raises(
            ValueError, match=r"config\.loss\.attention_scale = .* a finite number > 0"
        ):
            configuration.validate(config)
    config.loss.attention_scale = 8.0
    configuration.validate(config)
    config.loss.temprature = 2.0  # a misspelt field (a config file can add one)
    with pytest.raises(ValueError, match=r"config\.loss has unknown field\(s\) temprature"):
        configuration.validate(config)


@pytest.mark.slow
def test_kd_target_reaches_the_objective_of_the_built_distillation():
    config = configuration.base_config()
    config.method, config.time_steps = "kd", 2
    config.teacher.model, config.student.model = "convnet_ann", "convnet_snn"
    config.teacher.model_kwargs.widths = (4, 8, 8)
    config.student.model_kwargs.widths = (4, 8, 8)
    images = np.random.default_rng(0).normal(size=(8, 12, 12, 1)).astype(np.float32)
    batch = {"image": images, "label": np.arange(8, dtype=np.int32) % 10}
    parts_kd = {}
    for target in ("mean", "per_step"):
        config.loss.kd_target = target
        built = train.build_distillation(config, 10, images)
        teacher_vars = built.teacher.init(jax.random.key(0), images, train=False)
        student_vars = built.student.init(jax.random.key(1), images, train=False)
        _, (parts, _) = built.objective(
            {"student": student_vars["params"]}, student_vars["batch_stats"], teacher_vars, batch
        )
        logits, _ = built.student.apply(student_vars, images, train=True, mutable=["batch_stats"])
        expected = losses.kd_loss(
            logits, built.teacher.apply(teacher_vars, images, train=False), 4.0, target
        )
        assert float(parts["kd"]) == pytest.approx(float(expected), rel=1e-5)
        parts_kd[target] = float(parts["kd"])
    assert parts_kd["mean"] != pytest.approx(parts_kd["per_step"], rel=1e-3)


def test_ops_are_validated_and_reach_every_built_module():
    config = configuration.base_config()
    assert config.ops == "auto"
    config.ops = "gpu"
    with pytest.raises(ValueError, match=r"config\.ops = 'gpu'.*allowed: auto, xla, cpu_matmul"):
        configuration.validate(config)
    config.ops, config.remat, config.time_steps = "xla", True, 2
    config.teacher.model, config.student.model = "convnet_ann", "convnet_snn"
    config.teacher.model_kwargs.widths = (4, 8, 8)
    config.student.model_kwargs.widths = (4, 8, 8)
    configuration.validate(config)
    students = [name for name in models.list_models() if models.is_spiking(name)]
    assert len(students) == 5 and all(models.supports_remat(name) for name in students)
    images = np.zeros((8, 12, 12, 1), np.float32)
    built = train.build_distillation(config, 10, images)
    assert built.student.ops is built.teacher.ops is built.calibrator.ops is ops.XLA
    assert built.student.remat and built.calibrator.remat
