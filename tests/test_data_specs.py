"""The dataset specs: shapes at the configured size, normalisation per channel, and the
figures data/ and the NIR export read from them."""

from __future__ import annotations

import types

import pytest

from sastc_jax import data
from sastc_jax.data import specs
from sastc_jax.interop import nir as export


def config_for(name: str, image_size: int | None = None):
    return types.SimpleNamespace(dataset=types.SimpleNamespace(name=name, image_size=image_size))


@pytest.mark.parametrize(
    ("name", "image_size", "shape"),
    [
        ("fashion_mnist", None, (28, 28, 1)),
        ("cifar10", 64, (32, 32, 3)),  # a fixed size: image_size does not apply
        ("cifar100", None, (32, 32, 3)),
        ("imagenet2012", None, (224, 224, 3)),
        ("imagenet2012", 160, (160, 160, 3)),  # the crop the pipeline delivers
        ("dvs_gesture", None, (128, 128, 2)),
        ("cifar10_dvs", None, (48, 48, 2)),
        ("cifar10_dvs", 64, (64, 64, 2)),
    ],
)
def test_export_input_shape_is_the_specs(name, image_size, shape):
    assert specs.DATASETS[name].input_shape(image_size) == shape
    assert export.input_shape_for(config_for(name, image_size)) == shape


def test_every_spec_is_consistent():
    for name, spec in specs.DATASETS.items():
        assert spec.name == name
        assert spec.sources[0] == "auto"
        assert data.NUM_CLASSES[name] == spec.num_classes
        assert data.SOURCES[name] == spec.sources
        channels = spec.image_shape[2]
        if spec.event_frames:
            assert (channels, spec.std, spec.resizable) == (2, None, True)
        else:
            assert len(spec.mean) == len(spec.std) == channels
            assert all(0 < value < 1 for value in (*spec.mean, *spec.std))


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'; choose one of cifar10, "):
        specs.dataset_spec("mnist")
