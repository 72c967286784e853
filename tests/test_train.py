"""Train-step pieces: evaluation counts, the optimiser schedule, the compute dtype."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sastc_jax import configuration, parallel, step, train


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
