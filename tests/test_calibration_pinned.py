"""The calibration's parameter tree and numbers are those of the code before its single
forward path (commit 40cc26e): checkpoints still restore, losses and gradients unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pinned import assert_matches_pinned, sum_and_norm

from sastc_jax import calibration, ops

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="pinned on the CPU")

T, B = 2, 4
# Student tap 0 feeds two groups (16x16 for teacher tap 0, pooled to 8x8 for tap 1);
# student tap 1 one group of two regressors. 2*4*16*16 = 2048 rows: the CPU matmul
# kernel gradient runs on the 16x16 group.
STUDENT_SHAPES = [(16, 16, 4), (8, 8, 6)]
TEACHER_SHAPES = [(16, 16, 3), (8, 8, 5)]

MLPS = {
    f"{kind}_mlps_{n}/{layer}": shape
    for kind in ("key", "query")
    for n in (0, 1)
    for layer, shape in (
        ("hidden/bias", (2,)),
        ("hidden/kernel", (4, 2)),
        ("out/bias", (1,)),
        ("out/kernel", (2, 1)),
    )
}


def regressor(i, j, c_in, c_out):
    return {
        f"regressors_{i}_{j}/bn/bias": (2 * c_out,),
        f"regressors_{i}_{j}/bn/scale": (2 * c_out,),
        f"regressors_{i}_{j}/conv1x1/kernel": (1, 1, 2 * c_out, c_out),
        f"regressors_{i}_{j}/conv3x3/kernel": (3, 3, c_in, 2 * c_out),
    }


# Parameter paths and shapes of HEAD's init_calibration at commit 40cc26e.
LAYERWISE_TREE = {**regressor(0, 0, 4, 3), **regressor(1, 1, 6, 5)}
ATTENTION_TREE = {
    **MLPS,
    **LAYERWISE_TREE,
    **regressor(0, 1, 4, 5),
    **regressor(1, 0, 6, 3),
}
TREES = {"sastc": ATTENTION_TREE, "spatial": ATTENTION_TREE, "layerwise": LAYERWISE_TREE}

# Computed with the code of commit 40cc26e (pin script at the same shapes and seeds), on
# the CPU: (sum, L2 norm) of the initial parameters; and (loss, sum and L2 norm of
# d loss / d calibration params, sum and L2 norm of d loss / d student taps), the same
# with remat on and off.
PINNED_INIT = {
    "sastc": (35.339573320266936, 7.240918085038149),
    "spatial": (35.339573320266936, 7.240918085038149),
    "layerwise": (14.954694017884322, 4.867318284985558),
}
PINNED = {
    "sastc": (
        0.5961722135543823,
        -2.594065908034336,
        0.36548221131555936,
        0.0037335644895728493,
        0.0095595200013041,
    ),
    "spatial": (
        0.5926294326782227,
        -2.7071823468456993,
        0.3688984599479444,
        0.0032143774110444667,
        0.012557282193266926,
    ),
    "layerwise": (
        0.7158935070037842,
        -2.5846951465355232,
        0.5530337159027123,
        0.008966685957353837,
        0.01161281462111355,
    ),
}


def taps():
    keys = jax.random.split(jax.random.key(0), 4)
    student = [
        (jax.random.uniform(keys[n], (T, B, *shape)) > 0.6).astype(jnp.float32)
        for n, shape in enumerate(STUDENT_SHAPES)
    ]
    teacher = [
        jax.nn.relu(jax.random.normal(keys[2 + n], (B, *shape)))
        for n, shape in enumerate(TEACHER_SHAPES)
    ]
    return student, teacher


def init(method):
    student, teacher = taps()
    init_fn = functools.partial(calibration.init_calibration, method=method)
    return jax.jit(init_fn)(jax.random.key(1), student, teacher)


def loss_and_gradient_statistics(method, remat, chosen, variables):
    student, teacher = taps()
    module = calibration.calibration_module(
        student, teacher, method=method, remat=remat, ops=chosen
    )

    def loss(params, student_taps):
        return module.apply({"params": params}, student_taps, teacher)[0]

    value, (params_grad, taps_grad) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        variables["params"], student
    )
    return (float(value), *sum_and_norm(params_grad), *sum_and_norm(taps_grad))


@pytest.mark.parametrize("method", ["sastc", "spatial", "layerwise"])
def test_parameter_tree_is_that_of_commit_40cc26e(method):
    variables = init(method)
    paths = {
        "/".join(key.key for key in path[1:]): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    assert set(variables) == {"params"}
    assert paths == TREES[method]
    np.testing.assert_allclose(sum_and_norm(variables), PINNED_INIT[method], rtol=1e-6)


@pytest.mark.parametrize("remat", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["sastc", "spatial", "layerwise"])
def test_loss_and_gradients_are_those_of_commit_40cc26e(method, remat):
    statistics = loss_and_gradient_statistics(method, remat, ops.select("auto"), init(method))
    assert_matches_pinned(statistics, PINNED[method])


@pytest.mark.slow
def test_xla_ops_agree_with_the_cpu_forms_to_summation_order():
    statistics = loss_and_gradient_statistics("sastc", True, ops.XLA, init("sastc"))
    assert_matches_pinned(statistics, PINNED["sastc"], rtol=1e-4)
