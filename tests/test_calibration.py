"""SASTC calibration (docs/method.md §5) against an independent per-(t, b, i, j) loop reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from init_statistics import assert_pytorch_uniform, fans

from sastc_jax.calibration import (
    Calibration,
    calibration_loss,
    init_calibration,
    regressor_macs,
)
from sastc_jax.regressors import adaptive_pool

T, B = 2, 8
# Student tap 0 (8x8) is larger than teacher taps 0 (4x4) and 2 (3x3: a non-integer
# ratio), equal to teacher tap 1 (8x8); student tap 1 (4x4) is smaller than teacher
# tap 1, equal to teacher tap 0 and larger than teacher tap 2.
STUDENT_SHAPES = [(8, 8, 4), (4, 4, 6)]
TEACHER_SHAPES = [(4, 4, 5), (8, 8, 3), (3, 3, 2)]


def make_taps(seed=0, steps=T):
    keys = jax.random.split(jax.random.key(seed), 8)
    student = [
        (jax.random.uniform(keys[n], (steps, B, *shape)) > 0.6).astype(jnp.float32)
        for n, shape in enumerate(STUDENT_SHAPES)
    ]
    teacher = [
        jax.nn.relu(jax.random.normal(keys[4 + n], (B, *shape)))
        for n, shape in enumerate(TEACHER_SHAPES)
    ]
    return student, teacher


def randomise(variables, seed=3):
    """Replace every parameter (BN scale/bias included) by a random value."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [0.3 * jax.random.normal(k, x.shape) + (x == 1) for k, x in zip(keys, leaves, strict=True)],
    )


# ---- independent reference: plain NumPy loops, float64 -------------------------------


def ref_pool(image, out_h, out_w, reduce):
    h, w, _ = image.shape
    out = np.zeros((out_h, out_w, image.shape[-1]))
    for r in range(out_h):
        r0, r1 = math.floor(r * h / out_h), math.ceil((r + 1) * h / out_h)
        for c in range(out_w):
            c0, c1 = math.floor(c * w / out_w), math.ceil((c + 1) * w / out_w)
            window = image[r0:r1, c0:c1].reshape(-1, image.shape[-1])
            out[r, c] = window.max(0) if reduce == "max" else window.mean(0)
    return out


def ref_conv(image, kernel):
    kh, kw = kernel.shape[:2]
    h, w, _ = image.shape
    padded = np.pad(image, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]))
    for r in range(h):
        for c in range(w):
            out[r, c] = np.einsum("ijc,ijco->o", padded[r : r + kh, c : c + kw], kernel)
    return out


def ref_mlp(params, row):
    hidden = np.maximum(0, row @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    out = hidden @ params["out"]["kernel"] + params["out"]["bias"]
    return out / max(np.linalg.norm(out), 1e-12)


def ref_loss(params, student, teacher, method="sastc"):
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    student = [np.asarray(x, np.float64) for x in student]
    teacher = [np.asarray(x, np.float64) for x in teacher]
    if method == "spatial":
        student = [x.mean(0, keepdims=True) for x in student]
    steps, num_s, num_k = student[0].shape[0], len(student), len(teacher)
    pairs = (
        [(i, i) for i in range(num_s)]
        if method == "layerwise"
        else [(i, j) for i in range(num_s) for j in range(num_k)]
    )
    attention = np.zeros((steps, B, num_s, num_k))
    errors = np.zeros((steps, B, num_s, num_k))
    for t in range(steps):
        for i, j in pairs:
            reg = params[f"regressors_{i}_{j}"]
            hidden, targets = [], []
            for b in range(B):
                s_map, a_map = student[i][t, b], teacher[j][b]
                if s_map.shape[0] > a_map.shape[0]:
                    s_map = ref_pool(s_map, a_map.shape[0], a_map.shape[1], "max")
                else:
                    a_map = ref_pool(a_map, s_map.shape[0], s_map.shape[1], "avg")
                hidden.append(ref_conv(s_map, reg["conv3x3"]["kernel"]))
                targets.append(a_map)
            hidden = np.stack(hidden)  # batch norm with the statistics of step t
            mean, var = hidden.mean((0, 1, 2)), hidden.var((0, 1, 2))
            hidden = (hidden - mean) / np.sqrt(var + 1e-5) * reg["bn"]["scale"] + reg["bn"]["bias"]
            for b in range(B):
                out = ref_conv(np.maximum(hidden[b], 0), reg["conv1x1"]["kernel"])
                errors[t, b, i, j] = np.mean((out - targets[b]) ** 2)
        for b in range(B):
            for i in range(num_s):
                if method == "layerwise":
                    attention[t, b, i, i] = 1.0
                    continue
                flat_s = student[i][t].reshape(B, -1)
                query = ref_mlp(params[f"query_mlps_{i}"], (flat_s @ flat_s.T)[b])
                scores = []
                for j in range(num_k):
                    flat_a = teacher[j].reshape(B, -1)
                    key = ref_mlp(params[f"key_mlps_{j}"], (flat_a @ flat_a.T)[b])
                    scores.append(query @ key)
                scores = np.exp(np.array(scores) - max(scores))
                attention[t, b, i] = scores / scores.sum()
    loss = 0.0
    for t in range(steps):
        for b in range(B):
            for i in range(num_s):
                for j in range(num_k):
                    loss += attention[t, b, i, j] * errors[t, b, i, j]
    return loss / (B * steps * num_s), attention


# ---- tests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [pytest.param("sastc", marks=pytest.mark.slow), "spatial"],  # sastc: ~45 s
)
def test_matches_loop_reference(method):
    student, teacher = make_taps()
    variables = randomise(init_calibration(jax.random.key(1), student, teacher, method=method))
    loss, attention = jax.jit(calibration_loss, static_argnames="method")(
        variables, student, teacher, method=method
    )
    expected_loss, expected_attention = ref_loss(variables["params"], student, teacher, method)
    np.testing.assert_allclose(attention, expected_attention, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)


def test_layerwise_matches_loop_reference():
    student, teacher = make_taps()
    teacher = teacher[:2]
    variables = randomise(init_calibration(jax.random.key(1), student, teacher, method="layerwise"))
    assert set(variables["params"]) == {"regressors_0_0", "regressors_1_1"}
    loss, attention = calibration_loss(variables, student, teacher, method="layerwise")
    expected_loss, expected_attention = ref_loss(variables["params"], student, teacher, "layerwise")
    np.testing.assert_array_equal(attention, expected_attention)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)


def test_attention_shape_and_rows():
    student, teacher = make_taps()
    variables = init_calibration(jax.random.key(0), student, teacher)
    _, attention = calibration_loss(variables, student, teacher)
    assert attention.shape == (T, B, len(STUDENT_SHAPES), len(TEACHER_SHAPES))
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-6)
    _, spatial = calibration_loss(
        init_calibration(jax.random.key(0), student, teacher, method="spatial"),
        student,
        teacher,
        method="spatial",
    )
    assert spatial.shape == (1, B, len(STUDENT_SHAPES), len(TEACHER_SHAPES))


def test_gradients_reach_everything_but_the_teacher():
    student, teacher = make_taps()
    student = [
        tap + 0.1 * jax.random.normal(jax.random.key(n), tap.shape) for n, tap in enumerate(student)
    ]  # continuous values: all max-pool paths live
    variables = randomise(init_calibration(jax.random.key(1), student, teacher))

    def loss_fn(variables, student, teacher):
        return calibration_loss(variables, student, teacher)[0]

    grads = jax.grad(loss_fn, argnums=(0, 1, 2))(variables, student, teacher)
    param_grads, student_grads, teacher_grads = grads
    names = set(param_grads["params"])
    assert names == {f"query_mlps_{i}" for i in range(2)} | {f"key_mlps_{j}" for j in range(3)} | {
        f"regressors_{i}_{j}" for i in range(2) for j in range(3)
    }
    for name, subtree in param_grads["params"].items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(subtree):
            assert float(jnp.abs(leaf).max()) > 0, f"no gradient for {name}{path}"
    for tap_grad in student_grads:
        assert float(jnp.abs(tap_grad).max()) > 0
    for tap_grad in teacher_grads:
        assert float(jnp.abs(tap_grad).max()) == 0.0


def test_attention_is_not_detached():
    student, teacher = make_taps()
    variables = init_calibration(jax.random.key(0), student, teacher)

    def attention_sum(variables):
        _, attention = calibration_loss(variables, student, teacher)
        return jnp.sum(attention[..., 0] ** 2)

    grads = jax.grad(attention_sum)(variables)
    assert float(jnp.abs(grads["params"]["query_mlps_0"]["out"]["kernel"]).max()) > 0


def test_adaptive_pool_integer_and_fractional():
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
    np.testing.assert_array_equal(
        adaptive_pool(x, (3, 3), "max")[0, :, :, 0], [[7, 9, 11], [19, 21, 23], [31, 33, 35]]
    )
    fractional = adaptive_pool(x, (4, 4), "avg")
    for b in range(2):
        np.testing.assert_allclose(
            fractional[b], ref_pool(np.asarray(x[b]), 4, 4, "avg"), rtol=1e-6
        )


def test_bad_setups_raise():
    student, teacher = make_taps()
    with pytest.raises(ValueError, match="needs as many student taps as teacher taps"):
        init_calibration(jax.random.key(0), student, teacher, method="layerwise")
    with pytest.raises(ValueError, match="Unknown calibration method 'semckd'"):
        init_calibration(jax.random.key(0), student, teacher, method="semckd")
    small = [tap[:, :2] for tap in student]
    with pytest.raises(ValueError, match="needs B >= 4"):
        init_calibration(jax.random.key(0), small, [tap[:2] for tap in teacher])
    variables = init_calibration(jax.random.key(0), student, teacher)
    module = Calibration(tuple(STUDENT_SHAPES), tuple(TEACHER_SHAPES), batch_size=B)
    with pytest.raises(ValueError, match="built for batch 8"):
        module.apply(variables, [tap[:, :4] for tap in student], [tap[:4] for tap in teacher])
    expected_layout = r"student tap 0 has shape \(8, 8, 8, 4\); expected \(T, B, H, W, C\)"
    with pytest.raises(ValueError, match=expected_layout):
        module.apply(variables, [tap[0] for tap in student], teacher)


def test_resnet19_regressor_cost_matches_spec():
    shapes = [(32, 32, 128), (16, 16, 256), (8, 8, 512)]
    assert regressor_macs(shapes, shapes) / 1e9 == pytest.approx(1.88, abs=0.01)


def test_all_zero_spike_map_gives_finite_gradients():
    student, teacher = make_taps()
    student = [tap.at[:, 0].set(0.0) for tap in student]  # sample 0 never spikes
    variables = init_calibration(jax.random.key(1), student, teacher)
    grads = jax.grad(lambda v: calibration_loss(v, student, teacher)[0])(variables)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(grads))


def test_initialised_as_the_release_with_pytorch_defaults():
    """The release's MLPs and regressors are plain nn.Linear / nn.Conv2d / BatchNorm2d."""
    student = [jnp.zeros((2, 8, 16, 16, 32)), jnp.zeros((2, 8, 8, 8, 64))]
    teacher = [jnp.zeros((8, 16, 16, 48)), jnp.zeros((8, 8, 8, 96))]
    params = init_calibration(jax.random.key(0), student, teacher)["params"]
    checked = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(key.key) for key in path)
        value = np.asarray(leaf)
        if path[-1].key == "kernel":  # conv (k, k, in, out) or dense (in, out)
            assert_pytorch_uniform(value, fans(value)[0], name)
        elif path[-1].key == "bias" and path[-2].key in ("hidden", "out"):  # MLP dense
            parent = params
            for key in path[:-1]:
                parent = parent[key.key]
            assert_pytorch_uniform(value, parent["kernel"].shape[0], name)
        else:  # the regressors' batch norm
            np.testing.assert_array_equal(value, 1.0 if path[-1].key == "scale" else 0.0, name)
        checked += 1
    # 2 key + 2 query MLPs (4 params each), 4 regressors (2 kernels + BN scale/bias each).
    assert checked == 4 * 4 + 4 * 4


# ---- attention scale (docs/method.md §7.1) -----------------------------------------------------


def test_default_scale_adds_no_parameter_and_changes_no_number():
    student, teacher = make_taps()
    default = init_calibration(jax.random.key(0), student, teacher)
    explicit = init_calibration(
        jax.random.key(0), student, teacher, attention_scale=1.0, learn_attention_scale=False
    )
    assert "log_scale" not in default["params"]
    jax.tree.map(np.testing.assert_array_equal, default, explicit)
    variables = randomise(default)
    for got, want in zip(
        calibration_loss(variables, student, teacher, attention_scale=1.0),
        calibration_loss(variables, student, teacher),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_fixed_scale_multiplies_the_logits_and_sharpens_the_softmax():
    student, teacher = make_taps()
    variables = randomise(init_calibration(jax.random.key(0), student, teacher))
    _, plain = calibration_loss(variables, student, teacher)
    _, scaled = calibration_loss(variables, student, teacher, attention_scale=4.0)
    # log alpha_j - log alpha_0 is the logit difference: it scales by exactly s.
    plain_log, scaled_log = np.log(np.asarray(plain, np.float64)), np.log(np.asarray(scaled))
    np.testing.assert_allclose(
        scaled_log - scaled_log[..., :1], 4.0 * (plain_log - plain_log[..., :1]), atol=1e-4
    )
    assert np.all(scaled.max(-1) >= plain.max(-1) - 1e-6)

    def entropy(a):
        return -np.sum(a * np.log(a), axis=-1).mean()

    assert entropy(np.asarray(scaled)) < entropy(np.asarray(plain)) - 0.05


def test_learned_scale_is_a_log_parameter_with_the_analytic_gradient():
    student, teacher = make_taps()
    module_kwargs = dict(attention_scale=3.0, learn_attention_scale=True)
    variables = init_calibration(jax.random.key(0), student, teacher, **module_kwargs)
    assert float(variables["params"]["log_scale"]) == pytest.approx(math.log(3.0))
    variables = randomise(variables)
    variables["params"]["log_scale"] = jnp.asarray(math.log(3.0), jnp.float32)
    learned_loss, learned = calibration_loss(variables, student, teacher, **module_kwargs)
    fixed_vars = {"params": {k: v for k, v in variables["params"].items() if k != "log_scale"}}
    fixed_loss, fixed = calibration_loss(fixed_vars, student, teacher, attention_scale=3.0)
    np.testing.assert_allclose(learned, fixed, rtol=1e-6)
    assert float(learned_loss) == pytest.approx(float(fixed_loss), rel=1e-6)

    def loss_of(log_scale):
        params = dict(variables["params"], log_scale=log_scale)
        return calibration_loss({"params": params}, student, teacher, **module_kwargs)[0]

    grad = float(jax.grad(loss_of)(jnp.asarray(math.log(3.0), jnp.float32)))
    # Analytic: L = sum alpha_j e_j / (B T S) with alpha = softmax(s c), so
    # dL/dlog s = s * sum alpha_j e_j (c_j - sum_k alpha_k c_k) / (B T S); c_j is the
    # cosine up to a per-row constant, which cancels: take c = log alpha at s = 1.
    _, unscaled = calibration_loss(fixed_vars, student, teacher)
    module = Calibration(tuple(STUDENT_SHAPES), tuple(TEACHER_SHAPES), batch_size=B)
    errors = np.asarray(
        module.apply(fixed_vars, student, teacher, method=Calibration.pair_errors), np.float64
    )
    cosines = np.log(np.asarray(unscaled, np.float64))
    alpha = np.asarray(learned, np.float64)
    centred = cosines - np.sum(alpha * cosines, axis=-1, keepdims=True)
    analytic = 3.0 * np.sum(alpha * errors * centred) / (B * T * len(STUDENT_SHAPES))
    assert abs(analytic) > 1e-4  # a real gradient
    assert grad == pytest.approx(analytic, rel=1e-3)
    step = 1e-2
    centre = math.log(3.0)
    finite_difference = (loss_of(centre + step) - loss_of(centre - step)) / (2 * step)
    assert grad == pytest.approx(float(finite_difference), rel=1e-2)


@pytest.mark.parametrize("scale", [0.0, -2.0, float("nan"), float("inf")])
def test_attention_scale_must_be_positive(scale):
    student, teacher = make_taps()
    with pytest.raises(ValueError, match="attention scale must be a finite number > 0"):
        init_calibration(jax.random.key(0), student, teacher, attention_scale=scale)


@pytest.mark.parametrize("method", ["sastc", "spatial", "layerwise"])
def test_variables_built_for_other_taps_are_refused(method):
    student = [jnp.zeros((2, 8, 4, 4, 3)), jnp.zeros((2, 8, 2, 2, 5))]
    teacher = [jnp.zeros((8, 4, 4, 3)), jnp.zeros((8, 2, 2, 6))]
    variables = init_calibration(jax.random.key(0), student, teacher, method=method)
    loss, _ = calibration_loss(variables, student, teacher, method=method)
    assert np.isfinite(loss)
    with pytest.raises(ValueError, match="built for 2 student / 2 teacher taps; got 1 / 2"):
        calibration_loss(variables, student[:1], teacher, method=method)
    if method == "layerwise":  # no MLPs: any batch fits its regressors
        return
    half = [tap[:, :4] for tap in student], [tap[:4] for tap in teacher]
    with pytest.raises(ValueError, match=r"built for a batch of 8 .*; got taps of batch 4"):
        calibration_loss(variables, *half, method=method)
