"""A model is its description: a student defined here, outside the package, plugs in with
its class and its registration alone, and runs, describes and exports as the zoo does."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sastc_jax import models
from sastc_jax.interop import nir_plan
from sastc_jax.models import architecture, registry
from sastc_jax.models.architecture import Layer, conv_bn
from sastc_jax.models.layers import Dtype, Ops, ops_field
from sastc_jax.models.network import Network, Spiking

NAME = "toy_test_snn"


class ToyNet(Network):
    """conv3x3 + BN + activation (tap), 2x2 average pool (tap), flatten, dense."""

    num_classes: int
    width: int = 4
    dtype: Dtype = jnp.float32
    init_scheme: str = "kaiming_fan_out"
    ops: Ops = ops_field()

    def architecture(self) -> architecture.Architecture:
        act = architecture.activation(self.spiking)
        return (
            conv_bn("stem", self.width, 3, 1),
            Layer(act, f"stem_{act}", tap=True),
            Layer("avg_pool", "pool", kernel=2, stride=2, tap=True),
            Layer("flatten", "flatten"),
            Layer("dense", "fc", self.num_classes),
        )


@pytest.fixture
def toy_student():
    """``ToyNet`` with LIF neurons, registered as :data:`NAME` for one test."""

    @models.register(NAME)
    class ToyStudent(Spiking, ToyNet):
        pass

    yield ToyStudent
    del registry._REGISTRY[NAME]


def test_a_registered_student_builds_runs_and_describes_itself(toy_student):
    assert models.is_spiking(NAME) and models.supports_remat(NAME)
    model = models.get_model(NAME, num_classes=3, time_steps=2, width=5)
    assert isinstance(model, toy_student)
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = model.init(jax.random.key(1), images)
    logits, mutated = model.apply(variables, images, mutable=["batch_stats", "intermediates"])
    assert logits.shape == (2, 2, 3) and logits.dtype == jnp.float32
    taps = models.get_taps(mutated)
    assert [tap.shape for tap in taps] == [(2, 2, 8, 8, 5), (2, 2, 4, 4, 5)]
    assert bool(jnp.all((taps[0] == 0) | (taps[0] == 1)))  # spikes
    # The description lists exactly the modules the model built, with their shapes.
    built = traverse_util.flatten_dict(variables)
    described = architecture.module_paths(architecture.describe(model))
    assert set(described) == {path[1:-1] for path in built}
    assert built["params", "stem", "conv", "kernel"].shape == (3, 3, 1, 5)
    assert built["params", "fc", "kernel"].shape == (4 * 4 * 5, 3)
    # ... and the NIR export reads it.
    planned = nir_plan.plan(model, (8, 8, 1))
    assert [(layer.kind, layer.out_shape) for layer in planned] == [
        ("conv", (5, 8, 8)),
        ("lif", (5, 8, 8)),
        ("pool", (5, 4, 4)),
        ("flatten", (80,)),
        ("dense", (3,)),
    ]


def test_the_ann_of_a_definition_runs_with_relu_and_the_same_modules(toy_student):
    student = models.get_model(NAME, num_classes=3, time_steps=2)
    teacher = ToyNet(num_classes=3)
    images = jnp.linspace(-1, 1, 2 * 8 * 8).reshape(2, 8, 8, 1)
    variables = teacher.init(jax.random.key(1), images)
    logits, mutated = teacher.apply(variables, images, mutable=["batch_stats", "intermediates"])
    assert logits.shape == (2, 3)
    stem = models.get_taps(mutated)[0]
    assert float(stem.min()) == 0.0 and float(stem.max()) > 1.0  # ReLU, not spikes
    assert architecture.module_paths(architecture.describe(teacher)) == (
        architecture.module_paths(architecture.describe(student))
    )


def test_remat_changes_no_number_of_a_plugged_in_student(toy_student):
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    results = []
    for remat in (False, True):
        model = models.get_model(NAME, num_classes=3, time_steps=2, remat=remat)
        variables = model.init(jax.random.key(1), images)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {**variables, "params": params}, images, mutable=["batch_stats"]
            )
            return jnp.sum(logits * jnp.arange(3.0))

        results.append(jax.value_and_grad(loss)(variables["params"]))
    for plain, rematted in zip(*map(jax.tree.leaves, results), strict=True):
        np.testing.assert_allclose(rematted, plain, rtol=1e-6, atol=1e-6)


def test_a_network_without_a_description_and_bad_layers_are_refused():
    class Bare(Network):
        num_classes: int = 2

    with pytest.raises(NotImplementedError, match="Bare must define architecture"):
        Bare().init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))

    class LifInAnAnn(ToyNet):
        def architecture(self):
            return (Layer("lif", "act"), Layer("dense", "fc", self.num_classes))

    with pytest.raises(ValueError, match="the 'lif' layer 'act' needs a spiking module"):
        LifInAnAnn(num_classes=2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))

    class OverlappingPool(ToyNet):
        def architecture(self):
            return (Layer("avg_pool", "pool", kernel=3, stride=2),)

    with pytest.raises(ValueError, match="no runner for"):
        OverlappingPool(num_classes=2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    assert not architecture.is_described(nn.Dense(3))
