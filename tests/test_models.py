"""Model zoo contracts: parameter counts, taps, input layouts, registry, batch norm modes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from init_statistics import assert_kaiming_fan_out, assert_pytorch_uniform, fans

from sastc_jax.models import get_model, get_taps, is_spiking, list_models

MUTABLE = ["batch_stats", "intermediates"]


def spec(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def abstract_init(model, shape, dtype=jnp.float32):
    """Shapes of ``model.init`` without running it."""
    return jax.eval_shape(model.init, jax.random.key(0), spec(shape, dtype))


def abstract_apply(model, shape, dtype=jnp.float32, train=True):
    """Shapes of ``(logits, mutated)`` of one training-mode apply, without running it."""
    variables = abstract_init(model, shape, dtype)
    return jax.eval_shape(
        lambda v, x: model.apply(v, x, train=train, mutable=MUTABLE), variables, spec(shape, dtype)
    )


def num_params(variables) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))


def tap_shapes(mutated) -> list[tuple[int, ...]]:
    return [tuple(tap.shape) for tap in get_taps(mutated)]


# ------------------------------------------------------------------ parameter counts

PARAM_COUNTS = [
    # name, constructor kwargs, input shape, exact number of 'params' entries
    ("resnet19_snn", dict(num_classes=10, time_steps=2), (1, 32, 32, 3), 12_630_858),
    ("resnet19_ann", dict(num_classes=10), (1, 32, 32, 3), 12_502_090),
    # torchvision's ResNet-18 / ResNet-34
    ("resnet18_ann", dict(num_classes=1000), (1, 224, 224, 3), 11_689_512),
    ("resnet34_ann", dict(num_classes=1000), (1, 224, 224, 3), 21_797_672),
    # the spiking ImageNet ResNets have the same parameters (LIF has none)
    ("resnet18_snn", dict(num_classes=1000, time_steps=1), (1, 224, 224, 3), 11_689_512),
    ("resnet34_snn", dict(num_classes=1000, time_steps=1), (1, 224, 224, 3), 21_797_672),
    # WRN-28-4 without dropout; 432 + 269,216 + 1,116,032 + 4,460,288 + 512 + 2,570
    ("wrn28_4_ann", dict(num_classes=10), (1, 32, 32, 3), 5_849_050),
    # PyramidNet-20, alpha 200, widths 38/60/83/105/127/149/172/194/216
    ("pyramidnet20_ann", dict(num_classes=10), (1, 32, 32, 3), 2_933_675),
    ("vgg11_snn", dict(num_classes=10, time_steps=2), (1, 2, 48, 48, 2), 9_227_786),
    ("vgg11_ann", dict(num_classes=10), (1, 48, 48, 2), 9_227_786),
    # flattened classifier: 92,896 + 3 * 3 * 128 * 10 + 10
    ("convnet_snn", dict(num_classes=10, time_steps=2), (1, 28, 28, 1), 104_426),
    ("convnet_ann", dict(num_classes=10), (1, 28, 28, 1), 94_186),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "expected"), PARAM_COUNTS)
def test_parameter_count(name, kwargs, shape, expected):
    variables = abstract_init(get_model(name, **kwargs), shape)
    assert num_params(variables) == expected
    assert "batch_stats" in variables


def test_every_registered_model_has_a_parameter_count_test():
    assert sorted(name for name, *_ in PARAM_COUNTS) == list_models()


@pytest.mark.parametrize(
    ("name", "kwargs", "classifier_inputs"),
    [
        ("resnet19_snn", dict(time_steps=2), 256),
        ("resnet19_ann", dict(), 512),
        ("wrn28_4_ann", dict(), 256),
        ("pyramidnet20_ann", dict(), 216),
        ("convnet_snn", dict(time_steps=2), 4 * 4 * 128),  # flattened on 32x32
    ],
)
def test_num_classes_sets_output_size_and_parameters(name, kwargs, classifier_inputs):
    shape = (2, 32, 32, 3)
    counts = {}
    for num_classes in (10, 100):
        model = get_model(name, num_classes=num_classes, **kwargs)
        counts[num_classes] = num_params(abstract_init(model, shape))
        logits, _ = abstract_apply(model, shape)
        assert logits.shape[-1] == num_classes
        assert logits.dtype == jnp.float32
    assert counts[100] - counts[10] == 90 * (classifier_inputs + 1)


# --------------------------------------------------------------------------- taps

CIFAR_TAPS = {
    "resnet19_snn": [(32, 32, 128), (16, 16, 256), (8, 8, 512)],
    "resnet19_ann": [(32, 32, 128), (16, 16, 256), (8, 8, 512)],
    "wrn28_4_ann": [(32, 32, 64), (16, 16, 128), (8, 8, 256)],
    "pyramidnet20_ann": [(32, 32, 83), (16, 16, 149), (8, 8, 216)],
    "vgg11_snn": [(16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 512)],
    "vgg11_ann": [(16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 512)],
    "convnet_snn": [(16, 16, 32), (8, 8, 64), (4, 4, 128)],
    "convnet_ann": [(16, 16, 32), (8, 8, 64), (4, 4, 128)],
}
IMAGENET_TAPS = [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]


def expected_taps(name, time_steps, batch, spatial_shapes):
    lead = (time_steps, batch) if is_spiking(name) else (batch,)
    return [lead + s for s in spatial_shapes]


def make(name, num_classes=10, time_steps=2, **kwargs):
    if is_spiking(name):
        kwargs["time_steps"] = time_steps
    return get_model(name, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name", sorted(CIFAR_TAPS))
def test_cifar_taps(name):
    logits, mutated = abstract_apply(make(name, time_steps=2), (3, 32, 32, 3))
    assert tap_shapes(mutated) == expected_taps(name, 2, 3, CIFAR_TAPS[name])
    assert logits.shape == ((2, 3, 10) if is_spiking(name) else (3, 10))
    assert all(tap.dtype == jnp.float32 for tap in get_taps(mutated))


@pytest.mark.parametrize("name", ["resnet18_snn", "resnet34_snn", "resnet18_ann", "resnet34_ann"])
def test_imagenet_taps(name):
    logits, mutated = abstract_apply(make(name, num_classes=1000, time_steps=4), (2, 224, 224, 3))
    assert tap_shapes(mutated) == expected_taps(name, 4, 2, IMAGENET_TAPS)
    assert logits.shape == ((4, 2, 1000) if is_spiking(name) else (2, 1000))


@pytest.mark.parametrize(
    ("name", "size", "spatial"),
    [
        ("vgg11_snn", 48, (24, 12, 6, 3)),  # CIFAR10-DVS
        ("vgg11_ann", 48, (24, 12, 6, 3)),
        ("vgg11_snn", 128, (64, 32, 16, 8)),  # DVS-Gesture
    ],
)
def test_dvs_taps_from_event_frames(name, size, spatial):
    time_steps = 10
    logits, mutated = abstract_apply(
        make(name, time_steps=time_steps), (2, time_steps, size, size, 2)
    )
    channels = (128, 256, 512, 512)
    assert tap_shapes(mutated) == expected_taps(
        name, time_steps, 2, [(s, s, c) for s, c in zip(spatial, channels, strict=True)]
    )
    assert logits.shape == ((time_steps, 2, 10) if is_spiking(name) else (2, 10))


def test_convnet_taps_on_fashion_mnist():
    _, mutated = abstract_apply(make("convnet_snn", time_steps=2), (4, 28, 28, 1))
    assert tap_shapes(mutated) == [(2, 4, 14, 14, 32), (2, 4, 7, 7, 64), (2, 4, 3, 3, 128)]
    _, mutated = abstract_apply(make("convnet_ann"), (4, 28, 28, 1))
    assert tap_shapes(mutated) == [(4, 14, 14, 32), (4, 7, 7, 64), (4, 3, 3, 128)]


@pytest.mark.parametrize(
    "name", ["resnet19_snn", "resnet19_ann", "pyramidnet20_ann", "vgg11_snn", "convnet_ann"]
)
def test_compute_dtype_sets_taps_dtype_and_params_stay_float32(name):
    model = make(name, dtype=jnp.bfloat16)
    variables = abstract_init(model, (2, 32, 32, 3))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    logits, mutated = abstract_apply(model, (2, 32, 32, 3))
    assert {tap.dtype for tap in get_taps(mutated)} == {jnp.dtype("bfloat16")}
    assert logits.dtype == jnp.float32


def test_get_taps_is_depth_order_and_accepts_both_forms():
    _, mutated = abstract_apply(make("resnet19_snn"), (2, 32, 32, 3))
    taps = get_taps(mutated)
    assert get_taps(mutated["intermediates"]) == taps
    spatial = [tap.shape[-3] for tap in taps]
    assert spatial == sorted(spatial, reverse=True) and len(set(spatial)) == len(spatial)
    with pytest.raises(ValueError, match="mutable"):
        get_taps({"batch_stats": {}})


# ------------------------------------------------------------------ running for real


def test_snn_runs_and_spikes_are_binary():
    """resnet19_snn for real on small inputs: per-step logits, binary spikes in every tap."""
    model_t1, model_t4 = make("resnet19_snn", time_steps=1), make("resnet19_snn", time_steps=4)
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = model_t1.init(jax.random.key(0), images)
    for time_steps, model in ((1, model_t1), (4, model_t4)):
        logits, mutated = jax.jit(lambda v, x, m=model: m.apply(v, x, mutable=MUTABLE))(
            variables, images
        )
        assert logits.shape == (time_steps, 2, 10)
        assert bool(jnp.all(jnp.isfinite(logits)))
        taps = get_taps(mutated)
        assert [tap.shape[:2] for tap in taps] == [(time_steps, 2)] * 3
        for tap in taps:
            assert bool(jnp.all((tap == 0) | (tap == 1)))
        assert float(taps[0].mean()) > 0.0


@pytest.mark.slow
def test_static_input_equals_repeated_event_frames():
    """Direct encoding (stem computed once, broadcast over T) equals feeding T copies."""
    model = make("convnet_snn", time_steps=3, widths=(8, 16))
    images = jax.random.normal(jax.random.key(1), (4, 12, 12, 1))
    frames = jnp.broadcast_to(images[:, None], (4, 3, 12, 12, 1))
    variables = model.init(jax.random.key(0), images)
    out_static, mut_static = model.apply(variables, images, mutable=MUTABLE)
    out_frames, mut_frames = model.apply(variables, frames, mutable=MUTABLE)
    np.testing.assert_allclose(out_static, out_frames, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        mut_static["batch_stats"],
        mut_frames["batch_stats"],
    )


def test_snn_surrogate_gradient_reaches_the_encoder():
    model = make("convnet_snn", time_steps=2, widths=(8, 16))
    images = jax.random.normal(jax.random.key(1), (4, 12, 12, 1))
    variables = model.init(jax.random.key(0), images)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, images, mutable=["batch_stats"])
        return jnp.mean(logits.mean(0) ** 2)

    grads = jax.grad(loss)(variables["params"])
    stem_grad = grads["stage1_conv1"]["conv"]["kernel"]
    assert bool(jnp.all(jnp.isfinite(stem_grad))) and float(jnp.abs(stem_grad).sum()) > 0


def test_ann_averages_event_frames_over_time():
    model = make("convnet_ann", widths=(8, 16))
    frames = jax.random.uniform(jax.random.key(1), (2, 5, 12, 12, 2))
    variables = model.init(jax.random.key(0), frames)
    from_frames = model.apply(variables, frames, train=False)
    from_mean = model.apply(variables, frames.mean(axis=1), train=False)
    np.testing.assert_allclose(from_frames, from_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["convnet_ann", "convnet_snn"])
def test_eval_mode_uses_running_averages(name):
    model = make(name, time_steps=2, widths=(8, 16))
    images = jax.random.normal(jax.random.key(1), (4, 12, 12, 1)) * 3.0 + 1.0
    variables = model.init(jax.random.key(0), images)
    train_out, mutated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    updated = {**variables, "batch_stats": mutated["batch_stats"]}
    assert not jax.tree_util.tree_all(
        jax.tree_util.tree_map(jnp.array_equal, variables["batch_stats"], updated["batch_stats"])
    )
    eval_out = model.apply(updated, images, train=False)  # no mutable collection needed
    assert eval_out.shape == train_out.shape
    assert not np.allclose(eval_out, train_out)
    # evaluation is deterministic per sample: it does not depend on the rest of the batch
    np.testing.assert_allclose(
        model.apply(updated, images[:1], train=False), eval_out[..., :1, :], rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------- errors, registry


def test_event_frames_with_wrong_time_steps_raise():
    model = make("vgg11_snn", time_steps=4)
    with pytest.raises(ValueError, match="time_steps=4"):
        abstract_init(model, (2, 3, 16, 16, 2))


@pytest.mark.parametrize("name", ["resnet19_snn", "convnet_ann"])
def test_wrong_input_rank_raises(name):
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        abstract_init(make(name), (32, 32, 3))


@pytest.mark.parametrize("time_steps", [0, -1])
def test_nonpositive_time_steps_raise(time_steps):
    with pytest.raises(ValueError, match="time_steps"):
        abstract_init(make("convnet_snn", time_steps=time_steps), (2, 28, 28, 1))


def test_unknown_model_lists_registered_names():
    with pytest.raises(ValueError, match="nope") as error:
        get_model("nope", num_classes=10)
    for name in list_models():
        assert name in str(error.value)


def test_registry_names_and_kinds():
    assert set(list_models()) == {
        "resnet19_snn",
        "resnet18_snn",
        "resnet34_snn",
        "vgg11_snn",
        "convnet_snn",
        "resnet19_ann",
        "resnet18_ann",
        "resnet34_ann",
        "wrn28_4_ann",
        "pyramidnet20_ann",
        "vgg11_ann",
        "convnet_ann",
    }
    for name in list_models():
        assert is_spiking(name) == name.endswith("_snn")


# ------------------------------------------------------------------ initialisation

# model, its PyTorch source's scheme, init kwargs. Students: PyTorch's module defaults
# (the release's spiking ResNet); teachers: their sources (models/ann.py docstring).
INIT_RULES = [
    ("resnet19_snn", "pytorch", {}),
    ("convnet_snn", "pytorch", {}),
    ("vgg11_snn", "pytorch", {"stages": ((8,), (16,))}),
    ("convnet_snn", "kaiming_fan_out", {"init_scheme": "kaiming_fan_out"}),
    ("resnet19_ann", "torchvision", {}),
    ("pyramidnet20_ann", "torchvision", {}),
    ("wrn28_4_ann", "kaiming_fan_out", {}),
    ("convnet_ann", "kaiming_fan_out", {}),
]


def assert_initialised_as(params, scheme: str) -> int:
    """Check every kernel, dense bias and BN parameter against ``scheme``; returns the count."""
    checked = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        value = np.asarray(leaf)
        if path[-1].key == "kernel":
            fan_in, _ = fans(value)
            if value.ndim == 4 and scheme != "pytorch":
                assert_kaiming_fan_out(value, name)
            else:  # PyTorch's default: every dense kernel, and every conv under 'pytorch'
                assert_pytorch_uniform(value, fan_in, name)
        elif path[-1].key == "bias" and "fc" in name.split("/")[-2]:
            fan_in = params_of(params, path[:-1])["kernel"].shape[0]
            if scheme == "kaiming_fan_out":
                np.testing.assert_array_equal(value, 0, err_msg=name)
            else:
                assert_pytorch_uniform(value, fan_in, name)
        elif path[-1].key in ("scale", "bias"):  # batch norm
            np.testing.assert_array_equal(value, 1.0 if path[-1].key == "scale" else 0.0, name)
        else:
            raise AssertionError(f"unchecked parameter {name}")
        checked += 1
    return checked


def params_of(params, path):
    for key in path:
        params = params[key.key]
    return params


@pytest.mark.parametrize("name, scheme, kwargs", INIT_RULES, ids=lambda v: str(v)[:20])
def test_models_initialise_as_their_pytorch_source(name, scheme, kwargs):
    spiking = is_spiking(name)
    model = get_model(name, num_classes=10, **({"time_steps": 1} if spiking else {}), **kwargs)
    # 8x8 inputs (the weights do not depend on the input size) and the 'rbg' PRNG, which
    # compiles several times faster than threefry for a model's hundred draws.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(key)
    assert assert_initialised_as(variables["params"], scheme) > 3
