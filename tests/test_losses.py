"""CE, KD and the total objective (docs/method.md §6)."""

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


def test_per_step_kd_equals_mean_kd_at_one_time_step():
    student, teacher, _ = make_logits(steps=1)
    mean = kd_loss(student, teacher, 4.0, "mean")
    per_step = kd_loss(student, teacher, 4.0, "per_step")
    assert float(per_step) == pytest.approx(float(mean), rel=1e-6)


def test_per_step_kd_hand_computed_at_two_time_steps():
    # tau = 2, one sample, two classes. Teacher z_a = (2, 0): p_a = softmax(1, 0)
    # = (0.731059, 0.268941). Step 1 z_1 = (0, 0): q_1 = (1/2, 1/2), KL_1 = 0.110940.
    # Step 2 z_2 = (4, 0): q_2 = softmax(2, 0) = (0.880797, 0.119203), KL_2 = 0.082604.
    # per_step = tau^2 * (KL_1 + KL_2) / 2 = 4 * 0.193544 / 2 = 0.387088 (by hand;
    # numpy in float64 gives 0.3871036). The time-mean (2, 0) equals the teacher: 'mean' = 0.
    student = jnp.array([[[0.0, 0.0]], [[4.0, 0.0]]])
    teacher = jnp.array([[2.0, 0.0]])
    assert float(kd_loss(student, teacher, 2.0, "per_step")) == pytest.approx(0.38710, abs=1e-4)
    assert float(kd_loss(student, teacher, 2.0, "mean")) == pytest.approx(0.0, abs=1e-7)


def test_per_step_kd_in_the_total_loss_keeps_ce_on_the_mean():
    student, teacher, labels = make_logits(steps=2)
    calibration = jnp.asarray(0.25)
    weights = LossWeights(gamma=1.0, alpha_kd=0.5, beta=2.0, temperature=3.0, kd_target="per_step")
    for method in ("kd", "sastc"):
        loss, parts = total_loss(
            method,
            student,
            labels,
            teacher_logits=teacher,
            calibration=calibration if method == "sastc" else None,
            weights=weights,
        )
        per_step = [float(kd_loss(student[t : t + 1], teacher, 3.0)) for t in range(2)]
        assert float(parts["kd"]) == pytest.approx(np.mean(per_step), rel=1e-6)
        assert float(parts["ce"]) == pytest.approx(float(cross_entropy(student, labels)))
        extra = 2.0 * 0.25 if method == "sastc" else 0.0
        assert float(loss) == pytest.approx(float(parts["ce"]) + 0.5 * np.mean(per_step) + extra)
    with pytest.raises(ValueError, match=r"Unknown KD target 'steps'; choose one of"):
        kd_loss(student, teacher, 4.0, "steps")
