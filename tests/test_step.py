"""The optimised training objective equals a straightforward formulation, and
``config.remat`` changes memory, not numbers (ResNet-19 ANN -> ResNet-19 SNN, small batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax import calibration, configuration, losses, models, regressors, train

# Building and compiling the ResNet-19 pair takes about a minute on 2 CPU cores.
pytestmark = pytest.mark.slow

B, T, IMAGE = 4, 2, (16, 16, 3)


def distillation(remat: bool = False):
    config = configuration.base_config()
    config.method, config.time_steps, config.remat = "sastc", T, remat
    return train.build_distillation(config, 10, np.zeros((B, *IMAGE), np.float32))


@pytest.fixture(scope="module")
def setup():
    parts = distillation()
    key_student, key_teacher, key_calibration, key_data = jax.random.split(jax.random.key(0), 4)
    images = jax.random.normal(key_data, (B, *IMAGE))
    student_vars = parts.student.init(key_student, images, train=False)
    params = {
        "student": student_vars["params"],
        "calibration": parts.init_calibration(key_calibration),
    }
    frozen = parts.teacher.init(key_teacher, images, train=False)
    batch = {"image": images, "label": jnp.arange(B) % 10}
    args = (params, student_vars["batch_stats"], frozen, batch)
    return parts, args, value_and_grad(parts.objective, args)


def value_and_grad(objective, args):
    (loss, (_, stats)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(*args)
    return loss, grads, stats


def reference_calibration(calibrator, params, student_taps, teacher_taps):
    """docs/method.md §5.5 pair by pair: one :class:`Regressor` call per (i, j), no grouping."""
    attention = calibrator.apply(
        {"params": params}, student_taps, teacher_taps, method=calibration.Calibration.attention
    )
    steps, batch = student_taps[0].shape[:2]
    errors = jnp.zeros(attention.shape, jnp.float32)
    for i, j in calibrator.pairs():
        merged = student_taps[i].reshape(steps * batch, *student_taps[i].shape[2:])
        student, teacher = regressors.align_pair(merged, teacher_taps[j])
        regressor = regressors.Regressor(teacher_taps[j].shape[-1])
        out = regressor.apply(
            {"params": params[f"regressors_{i}_{j}"]},
            student.reshape(steps, batch, *student.shape[1:]),
        )
        errors = errors.at[:, :, i, j].set(jnp.mean((out - teacher[None]) ** 2, axis=(2, 3, 4)))
    return jnp.sum(attention * errors) / (batch * steps * len(student_taps))


def reference_objective(parts):
    def objective(params, batch_stats, frozen, batch):
        teacher_logits, teacher_vars = parts.teacher.apply(
            frozen, batch["image"], train=False, mutable=["intermediates"]
        )
        teacher_taps = jax.lax.stop_gradient(models.get_taps(teacher_vars))
        logits, student_vars = parts.student.apply(
            {"params": params["student"], "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats", "intermediates"],
        )
        calibration_loss = reference_calibration(
            parts.calibrator, params["calibration"], models.get_taps(student_vars), teacher_taps
        )
        loss, parts_ = losses.total_loss(
            "sastc",
            logits,
            batch["label"],
            teacher_logits=jax.lax.stop_gradient(teacher_logits),
            calibration=calibration_loss,
        )
        return loss, (parts_, student_vars["batch_stats"])

    return objective


def assert_trees_close(actual, expected, tolerance):
    """Every leaf within ``tolerance`` times (1 + the largest magnitude in that leaf)."""
    leaves = zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    )
    for (path, a), e in leaves:
        a, e = np.asarray(a), np.asarray(e)
        scale = 1.0 + np.max(np.abs(e))
        assert np.max(np.abs(a - e)) <= tolerance * scale, jax.tree_util.keystr(path)


def test_grouped_regressors_match_the_pairwise_formulation(setup):
    parts, args, (loss, grads, stats) = setup
    # ResNet-19 has 3 taps each side: 9 regressors, run as 6 groups (taps 1 and 2 share inputs).
    assert len(parts.calibrator.pairs()) == 9
    ref_loss, ref_grads, ref_stats = value_and_grad(reference_objective(parts), args)
    assert float(ref_loss) > 0
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert_trees_close(grads, ref_grads, 1e-5)
    assert_trees_close(stats, ref_stats, 1e-5)
    # The calibration parameters do receive gradients (the comparison is not vacuous).
    regressor_grad = grads["calibration"]["regressors_2_0"]["conv3x3"]["kernel"]
    assert float(jnp.max(jnp.abs(regressor_grad))) > 0


def test_remat_gives_the_plain_gradients(setup):
    _, args, (loss, grads, stats) = setup
    remat_parts = distillation(remat=True)
    assert remat_parts.student.remat and remat_parts.calibrator.remat
    remat_loss, remat_grads, remat_stats = value_and_grad(remat_parts.objective, args)
    np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
    assert_trees_close(remat_grads, grads, 1e-6)
    assert_trees_close(remat_stats, stats, 1e-6)
