"""Temporally decoupled logit distillation (``tdkd``, ``sastc_tdkd``): its loss by hand at
T = 1 and T = 2, its gradient, its config defaults, and short runs through ``main`` and
``compare``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compare import tiny_config
from test_data_static import write_fashion_dir
from test_main import cli, latest_state

from sastc_jax import compare, configuration, losses, methods
from sastc_jax.methods import tdkd
from sastc_jax.methods.terms import distillation_loss
from sastc_jax.metrics import read_metrics

TAU, ALPHA, BETA_SELF = 3.0, 0.2, 0.5  # the defaults: the authors' CIFAR settings

# Two samples, two classes, tau = 3. Sample 0 (label 0): z_1 = (3, 0) is right, z_2 =
# (0, 3) is wrong, so e = (3, 0). Sample 1 (label 1): z_1 = z_2 = (3, 0), no step is
# right, so e = (0, 0). The teacher's logits are (0, 0) for both.
HAND_LOGITS = np.array([[[3.0, 0.0], [3.0, 0.0]], [[0.0, 3.0], [3.0, 0.0]]])  # (T, B, K)
HAND_LABELS = np.array([0, 1])
HAND_TEACHER = np.zeros((2, 2))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def reference_parts(logits, labels, teacher, tau=TAU):
    """CE per step, KD per step and self-distillation, one (t, b) at a time in float64."""
    logits, teacher = np.asarray(logits, np.float64), np.asarray(teacher, np.float64)
    steps, batch, _ = logits.shape
    ce, kd, self_distill = 0.0, 0.0, 0.0
    for b in range(batch):
        right = [t for t in range(steps) if np.argmax(logits[t, b]) == labels[b]]
        target = np.mean(logits[right, b], axis=0) if right else np.zeros(logits.shape[-1])
        for t in range(steps):
            ce -= np.log(softmax(logits[t, b])[labels[b]])
            q = softmax(logits[t, b] / tau)
            kd += tau**2 * kl(softmax(teacher[b] / tau), q)
            self_distill += tau**2 * kl(softmax(target / tau), q)
    count = steps * batch
    return ce / count, kd / count, self_distill / count


def tdkd_loss(logits, labels, teacher, weights=methods.DEFAULT_WEIGHTS):
    return losses.total_loss(
        "tdkd", jnp.asarray(logits), jnp.asarray(labels), teacher_logits=teacher, weights=weights
    )


def test_ensemble_target_averages_the_right_steps_and_is_zero_without_one():
    target = tdkd.ensemble_target(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_LABELS))
    np.testing.assert_array_equal(np.asarray(target), [[3.0, 0.0], [0.0, 0.0]])
    # Sample 0 right at both steps: the mean of both.
    both = np.array([[[3.0, 0.0]], [[5.0, 1.0]]])
    np.testing.assert_allclose(tdkd.ensemble_target(jnp.asarray(both), jnp.array([0])), [[4, 0.5]])


def test_hand_computed_loss_at_two_time_steps():
    # softmax((3, 0) / 3) = (0.731059, 0.268941), whose log-ratio is exactly 1.
    # CE: ln(1 + e^-3) = 0.048587 (sample 0, step 1), ln(1 + e^3) = 3.048587 (the other
    #   three); mean 2.298587.
    # KD: every q is (0.731059, 0.268941) or its mirror against p_a = (1/2, 1/2):
    #   KL = 0.1201145 each; 9 * 0.1201145 = 1.081031.
    # Self: sample 0 KL(p_e || q_1) = 0, KL(p_e || q_2) = 0.4621172 (= 0.731059 - 0.268941);
    #   sample 1 against (1/2, 1/2): 0.1201145 twice; 9 * 0.7023462 / 4 = 1.580279.
    # Loss: 2.298587 + 0.2 * 1.081031 + 0.5 * 1.580279 = 3.304933.
    loss, parts = tdkd_loss(HAND_LOGITS, HAND_LABELS, HAND_TEACHER)
    assert float(parts["ce"]) == pytest.approx(2.298587, abs=2e-6)
    assert float(parts["kd"]) == pytest.approx(1.081031, abs=2e-6)
    assert float(parts["self_distill"]) == pytest.approx(1.580279, abs=2e-6)
    assert float(loss) == pytest.approx(3.304933, abs=4e-6)
    assert float(parts["loss"]) == float(loss) and float(parts["calibration"]) == 0.0


def test_hand_computed_loss_at_one_time_step():
    # Step 1 alone: sample 0 is right (e = z: no self-distillation), sample 1 is not
    # (e = 0: KL 0.1201145). CE (0.048587 + 3.048587) / 2 = 1.548587, KD 1.081031,
    # self 9 * 0.1201145 / 2 = 0.540515; loss 1.548587 + 0.216206 + 0.270258 = 2.035051.
    loss, parts = tdkd_loss(HAND_LOGITS[:1], HAND_LABELS, HAND_TEACHER)
    assert float(parts["ce"]) == pytest.approx(1.548587, abs=2e-6)
    assert float(parts["kd"]) == pytest.approx(1.081031, abs=2e-6)
    assert float(parts["self_distill"]) == pytest.approx(0.540515, abs=2e-6)
    assert float(loss) == pytest.approx(2.035051, abs=4e-6)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_loss_matches_the_step_by_step_reference(steps):
    k1, k2, k3 = jax.random.split(jax.random.key(steps), 3)
    logits = 2 * jax.random.normal(k1, (steps, 6, 5))
    teacher = 2 * jax.random.normal(k2, (6, 5))
    labels = jax.random.randint(k3, (6,), 0, 5)
    labels = labels.at[0].set((jnp.argmax(logits[0, 0]) + 1) % 5)  # sample 0: never right
    if steps > 1:
        labels = labels.at[0].set(jnp.argmax(logits[-1, 0]))  # right at the last step only
    ce, kd, self_distill = reference_parts(logits, np.asarray(labels), teacher)
    loss, parts = tdkd_loss(logits, labels, teacher)
    np.testing.assert_allclose(
        [float(parts["ce"]), float(parts["kd"]), float(parts["self_distill"])],
        [ce, kd, self_distill],
        rtol=1e-5,
    )
    assert float(loss) == pytest.approx(ce + ALPHA * kd + BETA_SELF * self_distill, rel=1e-5)


def test_gradient_is_the_hand_derived_one_with_a_constant_ensemble_target():
    # d/dz_t of CE(z_t) is softmax(z_t) - onehot(y); of tau^2 KL(p || softmax(z_t / tau)),
    # tau * (softmax(z_t / tau) - p). The ensemble target is a constant: no other term.
    k1, k2 = jax.random.split(jax.random.key(7))
    logits = jnp.asarray(HAND_LOGITS) + 0.5 * jax.random.normal(k1, HAND_LOGITS.shape)
    teacher = jax.random.normal(k2, (2, 2))
    grad = jax.grad(lambda z: tdkd_loss(z, HAND_LABELS, teacher)[0])(logits)
    z, p_a = np.asarray(logits, np.float64), softmax(np.asarray(teacher, np.float64) / TAU)
    target = np.asarray(tdkd.ensemble_target(logits, jnp.asarray(HAND_LABELS)), np.float64)
    onehot = np.eye(2)[HAND_LABELS]
    q = softmax(z / TAU)
    expected = (
        (
            (softmax(z) - onehot)
            + ALPHA * TAU * (q - p_a)
            + BETA_SELF * TAU * (q - softmax(target / TAU))
        )
        / z.shape[0]
        / z.shape[1]
    )
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-7)
    # Central differences of the self-distillation term with e held at its value here.
    e = jnp.asarray(target, jnp.float32)
    held = jax.jit(lambda z: distillation_loss(z, e, TAU))
    step, direction = 1e-2, jax.random.normal(jax.random.key(3), logits.shape)
    numeric = (held(logits + step * direction) - held(logits - step * direction)) / (2 * step)
    self_grad = jax.grad(lambda z: tdkd.self_distillation_loss(z, HAND_LABELS, TAU))(logits)
    assert float(jnp.sum(self_grad * direction)) == pytest.approx(float(numeric), rel=1e-3)


def test_defaults_hold_with_only_the_method_set():
    config = configuration.base_config()
    config.method = "tdkd"
    configuration.validate(config)
    weights = methods.LossWeights.from_config(config.loss)
    assert methods.get_method("tdkd").term_weights(weights) == {
        "ce": 1.0,
        "kd": ALPHA,
        "self_distill": BETA_SELF,
    }
    assert tdkd.WEIGHTS.read(weights) == (ALPHA, BETA_SELF, TAU)
    # SASTC's KD keeps its own tau 4 and alpha 1.
    assert (weights.temperature, weights.alpha_kd) == (4.0, 1.0)
    assert methods.get_method("sastc_tdkd").term_weights(weights)["calibration"] == 800.0
    # A config written before the section existed reads the defaults too.
    del config.loss["tdkd"]
    assert tdkd.WEIGHTS.read(methods.LossWeights.from_config(config.loss)).alpha == ALPHA


def test_own_weights_reach_the_loss_and_bad_ones_are_refused():
    config = configuration.base_config()
    config.loss.tdkd.alpha = 0.7
    weights = methods.LossWeights.from_config(config.loss)
    loss, parts = tdkd_loss(HAND_LOGITS, HAND_LABELS, HAND_TEACHER, weights)
    expected = parts["ce"] + 0.7 * parts["kd"] + BETA_SELF * parts["self_distill"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    config.loss.tdkd.alfa = 0.1
    with pytest.raises(ValueError, match=r"config\.loss\.tdkd has unknown field\(s\) alfa"):
        configuration.validate(config)
    del config.loss.tdkd["alfa"]
    config.loss.tdkd.temperature = 0.0
    with pytest.raises(ValueError, match=r"config\.loss\.tdkd\.temperature = 0\.0; .* > 0"):
        configuration.validate(config)


def test_sastc_tdkd_adds_the_calibration_term_and_needs_it():
    calibration = jnp.float32(0.01)
    weights = methods.LossWeights(beta=100.0)
    loss, parts = losses.total_loss(
        "sastc_tdkd",
        jnp.asarray(HAND_LOGITS),
        jnp.asarray(HAND_LABELS),
        teacher_logits=HAND_TEACHER,
        calibration=calibration,
        weights=weights,
    )
    plain, _ = tdkd_loss(HAND_LOGITS, HAND_LABELS, HAND_TEACHER, weights)
    assert float(parts["calibration"]) == pytest.approx(0.01)
    assert float(loss) == pytest.approx(float(plain) + 100.0 * 0.01, rel=1e-6)
    assert "sastc_tdkd" in losses.CALIBRATED_METHODS and "tdkd" not in losses.CALIBRATED_METHODS
    with pytest.raises(ValueError, match="'sastc_tdkd' needs the calibration loss"):
        losses.total_loss("sastc_tdkd", jnp.asarray(HAND_LOGITS), HAND_LABELS, teacher_logits=0)
    with pytest.raises(ValueError, match="'tdkd' distils from a teacher"):
        losses.total_loss("tdkd", jnp.asarray(HAND_LOGITS), HAND_LABELS)


def test_main_trains_tdkd(tmp_path):
    completed = cli(tmp_path, "--config.stage=all", "--config.method=tdkd")
    assert completed.returncode == 0, completed.stderr[-3000:]
    summaries = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert [(s["stage"], s["step"]) for s in summaries] == [("teacher", 2), ("student", 2)]
    assert json.loads((tmp_path / "summary.json").read_text())[1]["method"] == "tdkd"
    _, state = latest_state(tmp_path / "student")
    assert set(state["params"]) == {"student"}  # no calibration
    (first,) = [
        r
        for r in read_metrics(tmp_path)
        if r["split"] == "train" and r["stage"] == "student" and r["step"] == 1
    ]
    assert first["self_distill"] >= 0 and first["calibration"] == 0.0
    weighted = first["ce"] + ALPHA * first["kd"] + BETA_SELF * first["self_distill"]
    assert first["loss"] == pytest.approx(weighted, rel=1e-5)


@pytest.mark.slow  # a teacher and two students on tiny Fashion-MNIST files (minutes)
def test_compare_runs_tdkd_and_a_sastc_tdkd_variant(tmp_path):
    (tmp_path / "data").mkdir()
    write_fashion_dir(tmp_path / "data", n_train=80, n_test=20)
    config = tiny_config(tmp_path / "data")
    config.compare.rows = ("tdkd", "tdkd_calibrated")
    config.compare.variants = {"tdkd_calibrated": {"method": "sastc_tdkd", "overrides": {}}}
    config.compare.paired = (("tdkd_calibrated", "tdkd"),)
    workdir = tmp_path / "compare"
    runs = compare.run(config, workdir)
    assert [(r["method"], r["summary"]["step"]) for r in runs] == [
        ("tdkd", 3),
        ("sastc_tdkd", 3),
    ]
    markdown = (workdir / "results.md").read_text()
    assert "| tdkd | tdkd | 1 |" in markdown and "| tdkd_calibrated | sastc_tdkd | 1 |" in markdown
    calibrated = workdir / "runs" / "tdkd_calibrated_seed0"
    assert json.loads((calibrated / "analysis.json").read_text())["attention"]
    assert (workdir / "attention_tdkd_calibrated.png").exists()
    records = [r for r in read_metrics(calibrated) if r.get("split") == "train"]
    assert records and all(r["calibration"] > 0 and "self_distill" in r for r in records)
