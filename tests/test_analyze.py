"""Firing rates, operation counts, energy and attention entropy against hand-computed values."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax import analyze
from sastc_jax.models import layers
from sastc_jax.train import step


def test_conv_fan_out_counts_reached_outputs_within_bounds():
    # 3x3 input, 3x3 kernel, padding 1, stride 1: a corner reaches 4 outputs, an edge 6,
    # the centre 9; times 2 output channels.
    fan_out = analyze.conv_fan_out((3, 3, 1), (3, 3), (1, 1), [(1, 1), (1, 1)], features=2)
    np.testing.assert_array_equal(fan_out[..., 0], 2 * np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]))
    # Away from the borders a stride-2 conv reaches C_out x k x k / stride^2 outputs.
    strided = analyze.conv_fan_out((8, 8, 1), (2, 2), (2, 2), [(0, 0), (0, 0)], features=4)
    np.testing.assert_array_equal(strided, np.full((8, 8, 1), 4 * 2 * 2 / 4))


class TwoLayerSNN(nn.Module):
    """conv 3x3 (1 -> 2 channels, real-valued input) -> spikes -> conv 3x3 (2 -> 4)."""

    @nn.compact
    def __call__(self, images):
        currents = nn.Conv(2, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(
            images
        )
        spikes = (currents > 0.5).astype(jnp.float32)
        self.sow("intermediates", "spikes", spikes)
        return nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(spikes)


def two_layer_example():
    model = TwoLayerSNN()
    # conv1: channel 0 copies the pixel (centre tap 1), channel 1 is always 0.
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[1, 1, 0, 0] = 1.0
    variables = {
        "params": {"conv1": {"kernel": kernel}, "conv2": {"kernel": np.ones((3, 3, 2, 4))}}
    }
    images = np.zeros((2, 3, 3, 1), np.float32)
    images[0, 0, 0, 0] = images[0, 1, 1, 0] = 1.0  # example 0: spikes at a corner and the centre
    images[1] = 1.0  # example 1 (masked out below): nine spikes
    return model, variables, images


def test_two_layer_operations_and_firing_rate_by_hand():
    model, variables, images = two_layer_example()
    mask = np.array([True, False])
    (_, state), records = analyze.trace_layer_inputs(
        lambda: model.apply(variables, images, mutable=["intermediates"])
    )
    kinds, ops = analyze.layer_operations(records, mask, spiking=True)
    assert kinds == {"conv1": "MAC", "conv2": "SOP"}
    # conv1 MACs of one image: sum of the fan-outs, (4*4 + 4*6 + 9) x 2 channels = 98.
    assert float(ops["conv1"]) == 98
    # conv2 SOPs: a corner spike reaches 4 x 4 outputs, the centre spike 9 x 4: 52.
    assert float(ops["conv2"]) == 52
    # Firing rate: 2 spikes over 3x3x2 neurons, T = 1, example 1 masked out.
    spikes = state["intermediates"]["spikes"][0][None]  # (T=1, B, 3, 3, 2)
    firing = step.firing_counts({"spikes": spikes}, mask)["spikes"]
    assert float(firing["spikes"]) == 2 and float(firing["neuron_steps"]) == 18
    # Both examples: 2 + 9 spikes, the second's fan-outs sum to 49 x 4 = 196.
    _, both = analyze.layer_operations(records, np.array([True, True]), spiking=True)
    assert float(both["conv2"]) == 52 + 196 and float(both["conv1"]) == 2 * 98


def test_an_ann_counts_every_layer_as_macs():
    model, variables, images = two_layer_example()
    _, records = analyze.trace_layer_inputs(
        lambda: model.apply(variables, images[:1], mutable=True)
    )
    kinds, ops = analyze.layer_operations(records, np.array([True]), spiking=False)
    assert kinds == {"conv1": "MAC", "conv2": "MAC"}
    assert float(ops["conv2"]) == 49 * 2 * 4  # every input element, spike or not


def test_time_merged_inputs_are_masked_per_example():
    # A (T*B, F) dense input with T = 2, B = 2: rows 0, 2 belong to example 0.
    inputs = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    record = analyze.LayerInput("fc", inputs, jnp.full((2,), 3.0))
    first = analyze.LayerInput("first", inputs, jnp.ones((2,)))
    _, ops = analyze.layer_operations([first, record], np.array([True, False]), spiking=True)
    assert float(ops["fc"]) == (1 + 1) * 3


def test_average_pooled_spikes_count_as_the_spikes_they_average():
    pooled = jnp.asarray([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_array_equal(analyze.spike_counts(pooled), [0, 1, 2, 4])
    np.testing.assert_array_equal(analyze.spike_counts(jnp.zeros(3)), [0, 0, 0])


def test_energy_table_arithmetic():
    table = analyze.energy_table(student_macs=98, student_sops=52, teacher_macs=1000)
    assert table["student_energy_pj"] == pytest.approx(98 * 4.6 + 52 * 0.9)  # 497.6
    assert table["teacher_energy_pj"] == pytest.approx(4600)
    assert table["energy_ratio"] == pytest.approx(497.6 / 4600)


def test_attention_entropy_bounds():
    uniform = jnp.full((2, 3), 1 / 3)
    one_hot = jax.nn.one_hot(jnp.array([0, 2]), 3)
    np.testing.assert_allclose(analyze.attention_entropy(uniform), [math.log(3)] * 2, rtol=1e-6)
    np.testing.assert_allclose(analyze.attention_entropy(one_hot), [0, 0], atol=1e-6)


def test_the_project_dense_layer_is_counted():
    layer = layers.dense(3, name="fc")
    spikes = jnp.asarray([[[1.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 0.0]]])  # (T=2, B=1, 4)
    variables = layer.init(jax.random.key(0), spikes)
    _, records = analyze.trace_layer_inputs(lambda: layer.apply(variables, spikes))
    first = analyze.LayerInput("first", jnp.zeros((1, 1)), jnp.ones((1,)))
    kinds, ops = analyze.layer_operations([first, *records], np.array([True]), spiking=True)
    assert kinds["fc"] == "SOP" and float(ops["fc"]) == 4 * 3  # four spikes, three outputs
