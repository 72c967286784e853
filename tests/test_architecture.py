"""The architecture descriptions list exactly the modules the models build (so they cannot
drift from the models), with their widths and kernels, and their readers agree with them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from sastc_jax import models
from sastc_jax.interop import pytorch as torch_import
from sastc_jax.models import architecture

# Non-default fields, so the descriptions are shown to follow the fields.
VARIANTS = [
    ("resnet19_snn", {"stage_sizes": (1, 2), "widths": (8, 16), "strides": (2, 1)}),
    ("resnet19_snn", {"stem": "imagenet", "stem_width": 8, "hidden_features": None}),
    ("resnet18_ann", {"stage_sizes": (1, 1, 1), "widths": (8, 8, 4), "strides": (1, 1, 2)}),
    ("vgg11_snn", {"stages": ((8,), (16, 16))}),
    ("vgg11_ann", {"stages": ((8, 8),), "pool": "avg"}),
    ("convnet_snn", {"widths": (4, 8)}),
    ("wrn28_4_ann", {"depth": 10, "widen_factor": 1}),
    ("pyramidnet20_ann", {"depth": 8, "alpha": 12.0}),
]
CASES = [(name, {}) for name in models.list_models()] + VARIANTS


def build(name: str, fields: dict) -> nn.Module:
    extra = {"time_steps": 2} if models.is_spiking(name) else {}
    return models.get_model(name, num_classes=7, **extra, **fields)


def abstract_variables(model: nn.Module) -> dict:
    """``{(collection, *module path, leaf): ShapeDtypeStruct}`` of ``model`` on 32x32x3."""
    sample = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    return traverse_util.flatten_dict(dict(variables))


def case_id(case) -> str:
    name, fields = case
    return name + "".join(f"-{key}={value}" for key, value in fields.items()).replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_description_lists_exactly_the_modules_with_variables(case):
    model = build(*case)
    described = architecture.module_paths(architecture.describe(model))
    built = {path[1:-1] for path in abstract_variables(model)}
    assert len(described) == len(set(described)), "a module path is described twice"
    assert set(described) == built, (
        f"described but not built: {sorted(set(described) - built)}; "
        f"built but not described: {sorted(built - set(described))}"
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_described_widths_and_kernels_are_the_built_ones(case):
    model = build(*case)
    variables = abstract_variables(model)
    checked = 0
    for item in architecture.describe(model):
        prefix, layers = (
            ((item.name,), item.body + item.shortcut + item.after)
            if isinstance(item, architecture.Block)
            else ((), (item,))
        )
        for layer in layers:
            kernel_path = {
                "conv_bn": ("params", *prefix, layer.name, "conv", "kernel"),
                "conv": ("params", *prefix, layer.name, "kernel"),
                "dense": ("params", *prefix, layer.name, "kernel"),
            }.get(layer.kind)
            if kernel_path is None:
                continue
            shape = variables[kernel_path].shape
            assert shape[-1] == layer.features, (kernel_path, shape, layer)
            if layer.kind != "dense":
                assert shape[:2] == (layer.kernel, layer.kernel), (kernel_path, shape, layer)
            checked += 1
    assert checked >= 3


def test_shortcut_convs_where_the_shape_changes():
    described = architecture.describe(build("resnet19_snn", {}))
    blocks = [item for item in described if isinstance(item, architecture.Block)]
    assert [block.name for block in blocks] == [
        *(f"stage1_block{n}" for n in (1, 2, 3)),
        *(f"stage2_block{n}" for n in (1, 2, 3)),
        "stage3_block1",
        "stage3_block2",
    ]
    # 64 -> 128 channels at stride 1, then the two strided stage entries.
    assert [block.name for block in blocks if block.shortcut] == [
        "stage1_block1",
        "stage2_block1",
        "stage3_block1",
    ]
    assert [(layer.kernel, layer.stride) for layer in blocks[3].shortcut] == [(1, 2)]
    assert [layer.name for layer in blocks[0].after] == ["lif_out"]


def test_students_and_teachers_share_the_resnet_module_paths():
    student = architecture.module_paths(architecture.describe(build("resnet19_snn", {})))
    teacher = architecture.module_paths(architecture.describe(build("resnet19_ann", {})))
    # The student's only extra modules are its hidden dense layer (the LIFs hold no variables).
    assert [path for path in student if path not in teacher] == [("fc_hidden",)]
    assert [path for path in teacher if path not in student] == []


@pytest.mark.parametrize("name", sorted(torch_import.LAYOUTS))
def test_torch_names_cover_the_description_one_to_one(name):
    model = build(name, {})
    names = torch_import.torch_module_names(name, model)
    assert list(names) == architecture.module_paths(architecture.describe(model))
    assert len(set(names.values())) == len(names), "two of our modules get one PyTorch name"


def test_undescribed_models_and_bad_fields_are_refused():
    class Custom(nn.Module):
        spiking = True

        @nn.compact
        def __call__(self, x):
            return x

    with pytest.raises(ValueError, match="no architecture description for Custom"):
        architecture.describe(Custom())
    assert not architecture.is_described(Custom())
    with pytest.raises(ValueError, match="Unknown stem 'bogus'"):
        architecture.describe(build("resnet19_snn", {"stem": "bogus"}))
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4; got 11"):
        architecture.describe(build("wrn28_4_ann", {"depth": 11}))
    with pytest.raises(ValueError, match="unknown layer kind 'gelu'"):
        architecture.Layer("gelu", "act")
