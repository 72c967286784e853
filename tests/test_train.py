"""Train-step pieces: evaluation counts, the optimiser schedule and clipping, the compute
dtype, the guards against a blow-up."""

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sastc_jax import configuration, losses, parallel, train
from sastc_jax import metrics as metrics_lib
from sastc_jax.models.layers import LIF
from sastc_jax.neurons import LIFConfig
from sastc_jax.train import step


class LogitsEcho(nn.Module):
    """Returns its input (B, T, K) as time-major logits (T, B, K)."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        return jnp.swapaxes(x, 0, 1)


class FakeSplit:
    """Two eval batches; the second is padded (mask False) like the real pipeline's."""

    num_examples = 5

    def __init__(self, logits, labels, mask):
        self.batches = [
            {"image": logits[i : i + 4], "label": labels[i : i + 4], "mask": mask[i : i + 4]}
            for i in (0, 4)
        ]

    def epoch(self, epoch):
        return iter(self.batches)


def test_evaluation_counts_cumulative_time_steps_and_skips_padding():
    # 8 slots, 5 real examples. Per time step the predicted class is the argmax of
    # the cumulative mean of logits over the first t+1 steps.
    logits = np.zeros((8, 2, 3), np.float32)
    labels = np.array([0, 1, 2, 0, 1, 0, 0, 0], np.int32)
    logits[0] = [[5, 0, 0], [5, 0, 0]]  # right at t=1 and t=2
    logits[1] = [[3, 0, 0], [0, 9, 0]]  # wrong at t=1, right at t=2
    logits[2] = [[0, 0, 4], [0, 9, 0]]  # right at t=1, wrong at t=2
    logits[3] = [[0, 1, 0], [0, 1, 0]]  # wrong at both
    logits[4] = [[0, 2, 0], [0, 2, 0]]  # right at both
    logits[5:] = [[9, 0, 0], [9, 0, 0]]  # padding: "right" but masked out
    mask = np.arange(8) < 5
    mesh = parallel.make_mesh()
    result = train.evaluate(
        step.make_eval_step(LogitsEcho(), mesh), {}, FakeSplit(logits, labels, mask), mesh
    )
    assert result["count"] == 5
    assert result["accuracy_per_t"] == [3 / 5, 3 / 5]
    assert result["accuracy"] == 3 / 5


def test_accuracy_by_time_steps_uses_the_cumulative_mean():
    # T=2, B=2: example 0 right at t=1 only, example 1 right at both; example 1 masked.
    logits = jnp.asarray([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 5.0], [0.0, 1.0]]])
    correct = step.correct_per_time_steps(logits, jnp.array([0, 1]), jnp.array([True, True]))
    np.testing.assert_array_equal(correct, [2, 1])
    masked = step.correct_per_time_steps(logits, jnp.array([0, 1]), jnp.array([True, False]))
    np.testing.assert_array_equal(masked, [1, 0])


def test_evaluation_refuses_a_wrong_example_count():
    logits, labels = np.zeros((8, 1, 2), np.float32), np.zeros(8, np.int32)
    split = FakeSplit(logits, labels, np.ones(8, bool))  # 8 counted, split says 5
    mesh = parallel.make_mesh()
    with pytest.raises(RuntimeError, match="counted 8 examples but the split has 5"):
        train.evaluate(step.make_eval_step(LogitsEcho(), mesh), {}, split, mesh)


def test_step_schedule_decays_at_epoch_boundaries():
    optim = configuration.optimizer_config(
        learning_rate=0.1, epochs=4, batch_size=8, decay_epochs=(2, 3)
    )
    _, schedule = step.make_optimizer(optim, steps_per_epoch=10)
    assert [float(schedule(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )
    optim.schedule, optim.warmup_epochs = "cosine", 1
    _, schedule = step.make_optimizer(optim, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-6)


def test_weight_decay_is_coupled_like_pytorch_sgd():
    optim = ml_collections.ConfigDict(
        configuration.optimizer_config(
            learning_rate=0.1,
            epochs=1,
            batch_size=8,
            weight_decay=0.5,
            momentum=0.0,
            schedule="constant",
        )
    )
    tx, _ = step.make_optimizer(optim, steps_per_epoch=1)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["w"][0]) == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))


@pytest.mark.slow
def test_bfloat16_distillation_step_keeps_float32_parameters():
    config = configuration.base_config()
    config.dtype = "bfloat16"
    config.teacher.model, config.student.model = "convnet_ann", "convnet_snn"
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 16, 16, 1)).astype(np.float32)
    batch = {
        "image": images,
        "label": rng.integers(0, 10, 8).astype(np.int32),
        "mask": np.ones(8, bool),
    }
    parts = train.build_distillation(config, 10, images)
    key = jax.random.key(0)
    student_vars = parts.student.init(key, images, train=False)
    teacher_vars = parts.teacher.init(key, images, train=False)
    params = {"student": student_vars["params"], "calibration": parts.init_calibration(key)}
    tx = optax.sgd(0.01, momentum=0.9)
    train_step = step.make_train_step(parts.objective, tx, optax.constant_schedule(0.01), mesh)
    state = train.new_state(parallel.replicate(params, mesh), student_vars["batch_stats"], tx, mesh)
    state, metrics = train_step(
        state, parallel.replicate(teacher_vars, mesh), parallel.shard_batch(batch, mesh)
    )
    assert np.isfinite(float(metrics["loss"])) and float(metrics["calibration"]) > 0
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


def test_clip_grad_norm_clips_the_global_norm_before_the_step():
    optim = configuration.optimizer_config(
        learning_rate=1.0,
        epochs=1,
        batch_size=8,
        weight_decay=0.0,
        momentum=0.0,
        schedule="constant",
        clip_grad_norm=1.0,
    )
    tx, _ = step.make_optimizer(optim, steps_per_epoch=1)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    grads = {"a": jnp.array([6.0, 0.0]), "b": jnp.array([8.0])}  # global norm 10
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], [-0.8], rtol=1e-6)
    small = {"a": jnp.array([0.3, 0.0]), "b": jnp.array([0.4])}  # norm 0.5: untouched
    updates, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(updates["b"], [-0.4], rtol=1e-6)


def test_no_clipping_keeps_the_release_optimizer():
    optim = configuration.optimizer_config(learning_rate=0.1, epochs=1, batch_size=8)
    assert optim.clip_grad_norm == 0
    tx, _ = step.make_optimizer(optim, steps_per_epoch=1)
    params = {"w": jnp.ones(3)}
    # weight decay + SGD only: the optimiser state (hence checkpoints) of the release
    assert len(tx.init(params)) == 2
    grads = {"w": jnp.full(3, 100.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * (100.0 + 5e-4), rtol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("student.optimizer.clip_grad_norm", -1.0, "clip_grad_norm = -1.0; allowed: 0"),
        ("guards.max_param_norm_growth", 0.5, "max_param_norm_growth = 0.5; allowed: 0 (off)"),
        ("guards.max_calibration_ratio", -2.0, "max_calibration_ratio = -2.0; allowed: 0"),
    ],
)
def test_guard_and_clipping_fields_are_validated(field, value, message):
    config = configuration.base_config()
    section, name = field.rsplit(".", 1)
    target = config
    for part in section.split("."):
        target = target[part]
    target[name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        configuration.validate(config)


def test_calibration_ratio_warning_names_beta_and_the_ratio():
    weights = losses.LossWeights(beta=800.0)
    parts = {"ce": 2.0, "kd": 0.1, "calibration": 5.0, "loss": 4002.1}
    warning = train.calibration_ratio_warning(parts, weights, max_ratio=100.0)
    assert "beta * calibration = 800 * 5 = 4000 is 2000.0x the CE term" in warning
    assert "config.guards.max_calibration_ratio = 100" in warning
    assert train.calibration_ratio_warning(parts, weights, max_ratio=3000.0) is None
    assert train.calibration_ratio_warning(parts, weights, max_ratio=0.0) is None


class RecordingLogger:
    """A MetricsLogger stand-in that keeps what it is given."""

    def __init__(self):
        self.records, self.lines = [], []

    def write(self, record):
        self.records.append(record)

    def info(self, message):
        self.lines.append(message)

    def progress(self, **kwargs):
        return metrics_lib._SilentProgress()


def fake_stage():
    return types.SimpleNamespace(
        name="student", optim=types.SimpleNamespace(batch_size=8, epochs=1)
    )


def parts_at(param_norm, calibration=0.01):
    return {
        "ce": jnp.float32(2.0),
        "kd": jnp.float32(0.1),
        "calibration": jnp.float32(calibration),
        "loss": jnp.float32(2.0 + 800 * calibration),
        "grad_norm": jnp.float32(1.0),
        "param_norm": jnp.float32(param_norm),
        "learning_rate": jnp.float32(0.1),
    }


def test_first_step_is_logged_and_warns_on_a_dominant_calibration_term():
    logger = RecordingLogger()
    log = train.TrainLog(
        logger,
        fake_stage(),
        log_every=50,
        guards=configuration.base_config().guards,
        weights=losses.LossWeights(beta=800.0),
    )
    log.start_epoch(0, steps=10, offset=0)
    log.push(1, parts_at(10.0, calibration=5.0), last_checkpoint=None)
    log.push(2, parts_at(10.0, calibration=5.0), last_checkpoint=None)  # reads step 1
    log.end_epoch(last_checkpoint=None)
    assert [r["step"] for r in logger.records] == [1]  # step 1, then every 50
    assert logger.records[0]["calibration"] == 5.0
    assert logger.lines[0].startswith("[student] first step: ce=2 kd=0.1 calibration=5 loss=4002")
    assert "beta * calibration = 800 * 5 = 4000 is 2000.0x the CE term" in logger.lines[1]
    assert "config.guards.max_calibration_ratio = 1000" in logger.lines[1]


def test_parameter_norm_growth_stops_the_run_naming_the_checkpoint():
    log = train.TrainLog(
        RecordingLogger(),
        fake_stage(),
        log_every=2,
        guards=ml_collections.ConfigDict(
            dict(max_param_norm_growth=4.0, max_calibration_ratio=0.0)
        ),
        initial_param_norm=(0, 10.0),
    )
    log.start_epoch(0, steps=10, offset=0)
    # Within x4 of step 0's norm until step 2 is logged; then within x4 of step 2's.
    for step_number, norm in [(1, 30.0), (2, 39.0), (3, 160.0)]:
        log.push(step_number, parts_at(norm), last_checkpoint=2)
    with pytest.raises(train.ParameterNormGrowthError) as raised:
        log.push(4, parts_at(170.0), last_checkpoint=2)  # reads step 3: 160 > 4 x 39
    message = str(raised.value)
    assert "grew from 39 (step 2) to 160 at step 3: x4.10" in message
    assert "config.guards.max_param_norm_growth = 4.0" in message
    assert "the last verified checkpoint (step 2) is kept" in message
    assert isinstance(raised.value, train.NonFiniteLossError)  # main's expected errors


def test_parameter_norm_growth_guard_is_off_at_zero():
    train.check_param_norm_growth(5, 1e9, (0, 1.0), 0.0, last_checkpoint=None)
    with pytest.raises(train.ParameterNormGrowthError, match="no checkpoint had been verified"):
        train.check_param_norm_growth(5, 1e9, (0, 1.0), 2.0, last_checkpoint=None)


class SpikingEcho(nn.Module):
    """LIF neurons on the input currents (B, T, K); their spikes are the logits (T, B, K)."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        return LIF(LIFConfig(), name="lif")(jnp.swapaxes(x, 0, 1))


def test_evaluation_reports_the_firing_rate_of_unmasked_examples():
    currents = np.zeros((8, 2, 3), np.float32)
    currents[0, :, 0] = 10.0  # fires at both time steps: 2 spikes
    currents[1, :, :] = 10.0  # 6 spikes
    currents[6, :, :] = 10.0  # padding: not counted
    mask = np.arange(8) < 5
    mesh = parallel.make_mesh()
    split = FakeSplit(currents, np.zeros(8, np.int32), mask)
    result = train.evaluate(step.make_eval_step(SpikingEcho(), mesh), {}, split, mesh)
    assert result["firing_rate"] == pytest.approx(8 / (5 * 2 * 3))
    ann = train.evaluate(step.make_eval_step(LogitsEcho(), mesh), {}, split, mesh)
    assert "firing_rate" not in ann


def test_a_first_step_blow_up_is_printed_before_the_guard_stops_it():
    logger = RecordingLogger()
    log = train.TrainLog(
        logger,
        fake_stage(),
        log_every=50,
        guards=configuration.base_config().guards,  # x10, warning above 1000x
        weights=losses.LossWeights(beta=800.0),
        initial_param_norm=(0, 151.0),
    )
    log.start_epoch(0, steps=10, offset=0)
    log.push(1, parts_at(2407.0, calibration=2000.0), last_checkpoint=None)
    with pytest.raises(
        train.ParameterNormGrowthError, match=re.escape("grew from 151 (step 0) to 2407")
    ):
        log.flush(last_checkpoint=None)
    assert logger.lines[0].endswith("param_norm=2407 (param_norm 151 before it)")
    assert "is 800000.0x the CE term" in logger.lines[1]


def test_a_batch_larger_than_the_split_names_the_stage_batch_field(tmp_path):
    from test_data_static import write_fashion_dir

    write_fashion_dir(tmp_path, n_train=24, n_test=8)
    config = configuration.base_config()
    config.dataset.name, config.dataset.source = "fashion_mnist", "local"
    config.dataset.data_dir = str(tmp_path)
    config.student.optimizer.batch_size = 32
    with pytest.raises(
        ValueError,
        match=r"24 examples .* fewer than one training batch of 32\. Lower the batch size\. "
        r"Lower config\.student\.optimizer\.batch_size \(the student stage's global batch\)",
    ):
        train.load_datasets(config, "student", parallel.make_mesh())
