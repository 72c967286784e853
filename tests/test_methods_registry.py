"""The method registry: what each registered method needs, compositions of terms, and
the checks on registration."""

import jax
import jax.numpy as jnp
import pytest

from sastc_jax import calibration, losses, methods
from sastc_jax.methods import terms


def make_logits(steps=2, batch=4, classes=5):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    student = jax.random.normal(k1, (steps, batch, classes))
    teacher = 2 * jax.random.normal(k2, (batch, classes))
    labels = jax.random.randint(k3, (batch,), 0, classes)
    return student, teacher, labels


def test_what_each_paper_method_needs():
    needs = {
        name: (method.needs_teacher_logits, method.needs_teacher, method.calibration)
        for name in ("ce", "kd", "layerwise", "spatial", "sastc")
        for method in [methods.get_method(name)]
    }
    assert needs == {
        "ce": (False, False, None),
        "kd": (True, True, None),
        "layerwise": (True, True, calibration.LAYERWISE),
        "spatial": (True, True, calibration.SPATIAL),
        "sastc": (True, True, calibration.SASTC),
    }
    assert losses.METHODS[:5] == ("ce", "kd", "layerwise", "spatial", "sastc")
    assert methods.part_names()[:3] == ("ce", "kd", "calibration")


def test_strategies_pair_and_view_the_taps():
    assert calibration.LAYERWISE.pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert len(calibration.SASTC.pairs(3, 2)) == 6 == len(calibration.SPATIAL.pairs(3, 2))
    taps = [jnp.arange(2 * 4 * 1 * 1 * 1, dtype=jnp.float32).reshape(2, 4, 1, 1, 1)]
    (mean,) = calibration.SPATIAL.student_view(taps)
    assert mean.shape == (1, 4, 1, 1, 1) and float(mean[0, 0, 0, 0, 0]) == 2.0
    assert calibration.SASTC.student_view(taps) is taps
    assert calibration.get_strategy("spatial") is calibration.SPATIAL


def test_an_unregistered_composition_computes_its_weighted_terms():
    student, teacher, labels = make_logits()
    per_step_kd = methods.Term(
        "kd",
        lambda inputs, weights: terms.kd_loss(
            inputs.logits, inputs.teacher_logits, 2.0, "per_step"
        ),
        lambda weights: 0.5,
        frozenset({"teacher_logits"}),
    )
    method = methods.Method("ce_and_per_step_kd", (terms.CROSS_ENTROPY, per_step_kd))
    loss, parts = losses.total_loss(method, student, labels, teacher_logits=teacher)
    ce = terms.cross_entropy(student, labels)
    kd = terms.kd_loss(student, teacher, 2.0, "per_step")
    assert float(loss) == pytest.approx(float(ce + 0.5 * kd), rel=1e-6)
    assert set(parts) == {"ce", "kd", "calibration", "loss"} and float(parts["calibration"]) == 0
    assert method.term_weights(methods.DEFAULT_WEIGHTS) == {"ce": 1.0, "kd": 0.5}


def test_per_step_cross_entropy_is_the_mean_over_steps():
    student, _, labels = make_logits(steps=3)
    per_step = terms.cross_entropy(student, labels, "per_step")
    each = [float(terms.cross_entropy(student[t : t + 1], labels)) for t in range(3)]
    assert float(per_step) == pytest.approx(sum(each) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="Unknown cross-entropy target 'steps'"):
        terms.cross_entropy(student, labels, "steps")


def test_registration_is_checked():
    with pytest.raises(ValueError, match="'sastc' is already registered"):
        methods.register_method(methods.Method("sastc", (terms.CROSS_ENTROPY,)))
    with pytest.raises(ValueError, match="a calibration term needs a strategy"):
        methods.register_method(methods.Method("loose", (terms.CALIBRATION_TERM,)))
    with pytest.raises(ValueError, match="distinct names other than 'loss'"):
        methods.register_method(methods.Method("twice", (terms.CROSS_ENTROPY,) * 2))
    with pytest.raises(ValueError, match=r"Unknown method 'semckd'; choose one of \('ce'"):
        methods.get_method("semckd")
    assert "loose" not in methods.method_names() and "twice" not in methods.method_names()
