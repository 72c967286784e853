"""CE, KD and the total objective (SPEC §3.6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax.losses import LossWeights, cross_entropy, kd_loss, total_loss


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_logits(seed=0, steps=3, batch=5, classes=7):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    student = jax.random.normal(k1, (steps, batch, classes))
    teacher = 2 * jax.random.normal(k2, (batch, classes))
    labels = jax.random.randint(k3, (batch,), 0, classes)
    return student, teacher, labels


def test_cross_entropy_uses_time_mean_logits():
    student, _, labels = make_logits()
    probs = softmax(np.asarray(student, np.float64).mean(0))
    expected = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert float(cross_entropy(student, labels)) == pytest.approx(expected, rel=1e-5)


def test_kd_is_scaled_batch_mean_kl_teacher_to_student():
    student, teacher, _ = make_logits()
    tau = 4.0
    p_teacher = softmax(np.asarray(teacher, np.float64) / tau)
    p_student = softmax(np.asarray(student, np.float64).mean(0) / tau)
    kl = np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), axis=-1)
    assert float(kd_loss(student, teacher, tau)) == pytest.approx(tau**2 * kl.mean(), rel=1e-5)
    assert float(kd_loss(jnp.stack([teacher] * 2), teacher)) == pytest.approx(0.0, abs=1e-6)


def test_kd_gives_no_gradient_to_the_teacher():
    student, teacher, _ = make_logits()
    grad = jax.grad(kd_loss, argnums=1)(student, teacher)
    assert float(jnp.abs(grad).max()) == 0.0


@pytest.mark.parametrize("method", ["ce", "kd", "layerwise", "spatial", "sastc"])
def test_total_loss_combines_weighted_parts(method):
    student, teacher, labels = make_logits()
    weights = LossWeights(gamma=0.5, alpha_kd=2.0, beta=800.0, temperature=4.0)
    calibration = jnp.float32(0.01)
    loss, parts = total_loss(
        method, student, labels, teacher_logits=teacher, calibration=calibration, weights=weights
    )
    ce, kd = cross_entropy(student, labels), kd_loss(student, teacher)
    expected = 0.5 * ce
    if method != "ce":
        expected += 2.0 * kd
    if method in ("layerwise", "spatial", "sastc"):
        expected += 800.0 * 0.01
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(parts["loss"]) == float(loss)
    assert float(parts["kd"]) == (0.0 if method == "ce" else pytest.approx(float(kd)))


def test_total_loss_rejects_missing_inputs():
    student, teacher, labels = make_logits()
    with pytest.raises(ValueError, match="Unknown method 'semckd'"):
        total_loss("semckd", student, labels)
    with pytest.raises(ValueError, match="pass teacher_logits"):
        total_loss("kd", student, labels)
    with pytest.raises(ValueError, match="pass calibration"):
        total_loss("sastc", student, labels, teacher_logits=teacher)
