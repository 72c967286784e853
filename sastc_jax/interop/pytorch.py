"""Teacher weights from PyTorch files: ``.pth`` / ``.pt`` / ``.pth.tar`` and ``.safetensors``.

Accepted file forms: a bare ``state_dict``; a dict holding one under ``'state_dict'``,
``'model'`` or ``'net'`` (as training scripts save it, next to epochs or optimiser
states); with or without DataParallel's ``module.`` prefix; or a safetensors file.
PyTorch files are read with ``torch.load(weights_only=True)`` (torch is the optional
extra ``sastc-jax[torch]``); safetensors files need only the ``safetensors`` package.

Supported architectures (``config.teacher.model`` <- the PyTorch model)::

    resnet18_ann      <- torchvision resnet18
    resnet34_ann      <- torchvision resnet34
    resnet19_ann      <- resnet19     (SASTC release, CIFAR10/models/ann/resnet19.py)
    wrn28_4_ann       <- wrn_28_4     (SASTC release, CIFAR10/models/ann/wrn.py)
    pyramidnet20_ann  <- PyramidNet(depth=20, alpha=200) (release, pyramidnet.py)

Conversion: conv weights OIHW -> HWIO kernels, linear weights transposed, batch-norm
weight/bias -> ``params`` scale/bias and running mean/var -> ``batch_stats``;
``num_batches_tracked`` is ignored. The import is strict: every tensor of the file is
used and every variable of the model is filled with a tensor of the right shape, else
the error names the missing, unexpected and mis-shaped keys; the class count is read
from the classifier and must equal the dataset's. Nothing is returned unless all of it
holds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np

from sastc_jax.checkpoints import CheckpointError, TeacherMismatchError
from sastc_jax.checkpoints import is_torch_checkpoint as is_torch_checkpoint
from sastc_jax.models import architecture

WRAPPER_KEYS = ("state_dict", "model", "net")
DATA_PARALLEL_PREFIX = "module."
IGNORED_SUFFIX = ".num_batches_tracked"
_MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """The PyTorch-side module names of one source of teachers.

    Our module paths come from the model's description
    (:func:`sastc_jax.models.architecture.parameter_modules`); this holds only theirs:
    ``top`` maps our top-level module paths (``'stem/conv'``), ``in_block`` our paths
    inside a residual block (``'conv_bn1/bn'``) to their names; ``block`` is the name
    template of block ``stage{stage}_block{n}``, with ``index`` = n - 1 (PyTorch's
    ``nn.Sequential`` position).
    """

    model: str
    top: Mapping[str, str]
    block: str
    in_block: Mapping[str, str]


_RESNET_BLOCK_PATHS = (
    "conv_bn1/conv",
    "conv_bn1/bn",
    "conv_bn2/conv",
    "conv_bn2/bn",
    "shortcut/conv",
    "shortcut/bn",
)


def _resnet_block(*torch_names: str) -> dict[str, str]:
    """The ``in_block`` of a ResNet layout: :data:`_RESNET_BLOCK_PATHS` (ours, in order)
    -> ``torch_names``."""
    return dict(zip(_RESNET_BLOCK_PATHS, torch_names, strict=True))


_TORCHVISION_RESNET = {
    "top": {"stem/conv": "conv1", "stem/bn": "bn1", "fc": "fc"},
    "block": "layer{stage}.{index}",
    "in_block": _resnet_block("conv1", "bn1", "conv2", "bn2", "downsample.0", "downsample.1"),
}
_RELEASE_RESNET19 = {
    "top": {"stem/conv": "layer0.0", "stem/bn": "layer0.1", "fc": "layer4.2"},
    "block": "layer{stage}.{index}",
    "in_block": _resnet_block(
        *("part1.conv", "part1.bn", "part2.conv", "part2.bn"),
        *("part2.downsample.0", "part2.downsample.1"),
    ),
}
_RELEASE_WRN = {
    "top": {"stem": "conv1", "bn_final": "bn1", "fc": "fc"},
    "block": "block{stage}.layer.{index}",
    "in_block": {
        **{name: name for name in ("bn1", "bn2", "conv1", "conv2")},
        "shortcut": "convShortcut",
    },
}
_RELEASE_PYRAMIDNET = {
    "top": {"stem": "conv1", "stem_bn": "bn1", "bn_final": "bn_final", "fc": "fc"},
    "block": "layer{stage}.{index}",
    "in_block": {name: name for name in ("bn1", "bn2", "bn3", "conv1", "conv2")},
}
LAYOUTS: dict[str, TorchLayout] = {
    "resnet18_ann": TorchLayout("torchvision resnet18", **_TORCHVISION_RESNET),
    "resnet34_ann": TorchLayout("torchvision resnet34", **_TORCHVISION_RESNET),
    "resnet19_ann": TorchLayout("SASTC release resnet19", **_RELEASE_RESNET19),
    "wrn28_4_ann": TorchLayout("SASTC release wrn_28_4", **_RELEASE_WRN),
    "pyramidnet20_ann": TorchLayout(
        "SASTC release PyramidNet-20 (alpha 200)", **_RELEASE_PYRAMIDNET
    ),
}

# Our variable (collection, leaf name) -> the PyTorch tensor name within the module.
_TENSOR_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


# ------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint file as ``{name: float32/int array}``, wrapper and
    ``module.`` prefix removed. Raises FileNotFoundError, ImportError (torch missing) or
    CheckpointError (unreadable or truncated file, no state dict inside)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config.teacher.checkpoint: no file at {path}.")
    if path.name.lower().endswith(".safetensors"):
        tensors = _read_safetensors(path)
    else:
        tensors = _read_torch(path)
    if tensors and all(name.startswith(DATA_PARALLEL_PREFIX) for name in tensors):
        tensors = {name[len(DATA_PARALLEL_PREFIX) :]: value for name, value in tensors.items()}
    return tensors


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return CheckpointError(
        f"cannot read the teacher checkpoint {path}: {text[:400]}. The file is truncated, "
        "corrupt or not in this format; download or save it again."
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs safetensors; install the extra: pip install 'sastc-jax[torch]'."
        ) from err
    try:
        return dict(load_file(path))
    except Exception as err:
        raise _unreadable(path, err) from err


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs torch; install the extra: "
            "pip install 'sastc-jax[torch]' (or convert the file to .safetensors)."
        ) from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _unreadable(path, err) from err
    state_dict = _unwrap(loaded, path)

    def to_numpy(tensor):
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.detach().cpu().numpy()

    return {name: to_numpy(value) for name, value in state_dict.items()}


def _unwrap(loaded: Any, path: Path) -> Mapping[str, Any]:
    """The state dict inside ``loaded``: itself, or under one of WRAPPER_KEYS (nested)."""
    import torch

    current = loaded
    while isinstance(current, Mapping):
        if current and all(isinstance(value, torch.Tensor) for value in current.values()):
            return current
        inner = next((key for key in WRAPPER_KEYS if key in current), None)
        if inner is None:
            break
        current = current[inner]
    found = (
        f"a dict with keys {sorted(map(str, loaded))[:10]}"
        if isinstance(loaded, Mapping)
        else type(loaded).__name__
    )
    raise CheckpointError(
        f"the teacher checkpoint {path} holds {found}, not a state_dict: expected a dict "
        f"of tensors, or one under {' / '.join(WRAPPER_KEYS)}."
    )


# ------------------------------------------------------------------------- mapping


def layout(model_name: str) -> TorchLayout:
    """The PyTorch layout of ``model_name``; ValueError when there is none."""
    if model_name not in LAYOUTS:
        supported = ", ".join(f"{ours} ({theirs.model})" for ours, theirs in LAYOUTS.items())
        raise ValueError(
            f"config.teacher.model = {model_name!r} cannot be imported from PyTorch; "
            f"supported: {supported}."
        )
    return LAYOUTS[model_name]


def torch_module_names(model_name: str, model: flax.linen.Module) -> dict[tuple[str, ...], str]:
    """PyTorch module name of each of our modules with variables, by Flax module path, for
    the modules ``model``'s description lists. Raises ValueError when ``model_name`` has no
    PyTorch layout."""
    theirs = layout(model_name)
    names = {}
    for block, path in architecture.parameter_modules(architecture.describe(model)):
        ours = "/".join(path)
        table = theirs.top if block is None else theirs.in_block
        if ours not in table:  # a module the layout does not know: a bug in LAYOUTS
            where = "at the top level" if block is None else "in a block"
            raise AssertionError(f"{theirs.model} has no name for {ours} {where}")
        if block is None:
            names[path] = table[ours]
        else:
            module = theirs.block.format(stage=block.stage, index=block.index - 1)
            names[(block.name, *path)] = f"{module}.{table[ours]}"
    return names


def torch_names(
    model_name: str, model: flax.linen.Module, variable_paths: list[tuple[str, ...]]
) -> dict[tuple, str]:
    """PyTorch tensor name of each of ``model``'s variable paths ``(collection, *modules,
    leaf)``. Raises ValueError when ``model_name`` has no PyTorch layout."""
    modules = torch_module_names(model_name, model)
    names = {}
    for path in variable_paths:
        collection, *module, leaf = path
        if tuple(module) not in modules:  # the description misses a module: a bug there
            raise AssertionError(f"{'/'.join(path)} of {model_name} is not in its description")
        names[path] = f"{modules[tuple(module)]}.{_TENSOR_NAMES[collection, leaf]}"
    return names


def _to_ours(array: np.ndarray, ndim: int) -> np.ndarray:
    """PyTorch layout -> ours: OIHW -> HWIO for conv weights, (out, in) -> (in, out) for
    linear ones; vectors unchanged."""
    if ndim == 4 and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if ndim == 2 and array.ndim == 2:
        return array.T
    return array


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our variable shape in PyTorch's layout (for messages)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _listed(names: list[str]) -> str:
    """Tensor names grouped by module, e.g. ``layer1.0.bn1.{bias,weight}``, the first
    ``_MAX_LISTED`` modules shown."""
    groups: dict[str, list[str]] = {}
    for name in names:
        module, _, tensor = name.rpartition(".")
        groups.setdefault(module, []).append(tensor)
    shown = [
        f"{module}.{tensors[0]}" if len(tensors) == 1 else f"{module}.{{{','.join(tensors)}}}"
        for module, tensors in list(groups.items())[:_MAX_LISTED]
    ]
    more = len(groups) - _MAX_LISTED
    return ", ".join(shown) + (f" and {more} more modules" if more > 0 else "")


def convert(
    tensors: Mapping[str, np.ndarray],
    model: flax.linen.Module,
    model_name: str,
    input_shape: tuple[int, ...],
    *,
    num_classes: int,
    source: str = "the checkpoint",
) -> dict:
    """Our ``{'params', 'batch_stats'}`` for ``model`` from PyTorch ``tensors``.

    ``input_shape`` is one example's shape (only its channel count matters). Raises
    TeacherMismatchError (architecture or class count) with the details.
    """
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, *input_shape), np.float32), train=False)
    )
    flat = flax.traverse_util.flatten_dict(
        {name: abstract[name] for name in ("params", "batch_stats") if name in abstract}
    )
    names = torch_names(model_name, model, list(flat))
    classifier_module = architecture.classifier(architecture.describe(model))
    classifier = sorted(  # the weight first: its shape is quoted in messages
        (name for path, name in names.items() if path[1:-1] == (classifier_module,)),
        key=lambda name: not name.endswith(".weight"),
    )
    used = {name for name in tensors if not name.endswith(IGNORED_SUFFIX)}
    missing = sorted(set(names.values()) - used)
    unexpected = sorted(used - set(names.values()))
    classes_in_file = next(
        (int(tensors[name].shape[0]) for name in classifier if name in tensors), None
    )
    mis_shaped = []
    for path, name in names.items():
        if name not in tensors:
            continue
        shape, expected = tuple(tensors[name].shape), _torch_shape(flat[path].shape)
        # The class count (the classifier's first axis) is checked below, on its own.
        compared = slice(1, None) if name in classifier else slice(None)
        if shape[compared] != expected[compared]:
            mis_shaped.append(f"{name} {shape} (needs {expected})")
    mis_listed = ", ".join(mis_shaped[:_MAX_LISTED])
    if len(mis_shaped) > _MAX_LISTED:
        mis_listed += f" and {len(mis_shaped) - _MAX_LISTED} more"
    theirs = layout(model_name).model
    if missing or unexpected or mis_shaped:
        problems = [
            f"{label} {listed}"
            for label, listed in (
                ("missing keys:", _listed(missing)),
                ("unexpected keys:", _listed(unexpected)),
                ("mis-shaped:", mis_listed),
            )
            if listed
        ]
        raise TeacherMismatchError(
            f"{source} does not hold a {theirs} state_dict for config.teacher.model = "
            f"{model_name!r}: {'; '.join(problems)}. Set config.teacher.model to the "
            "checkpoint's architecture (see the mapping table in docs/interop.md)."
        )
    if classes_in_file != num_classes:
        raise TeacherMismatchError(
            f"{source} classifies {classes_in_file} classes ({classifier[0]} has shape "
            f"{tuple(tensors[classifier[0]].shape)}) but the dataset has {num_classes} "
            "(an image folder has one class per class folder). Use a teacher trained on "
            "these classes, or data with the teacher's classes: config.dataset.name, or "
            f"config.dataset.data_dir pointing at a folder holding all {classes_in_file} "
            "class folders."
        )
    variables = {
        path: np.asarray(_to_ours(tensors[name], len(flat[path].shape)), np.float32)
        for path, name in names.items()
    }
    return flax.traverse_util.unflatten_dict(variables)


def load_teacher(
    path: str | os.PathLike,
    model: flax.linen.Module,
    model_name: str,
    input_shape: tuple[int, ...],
    *,
    num_classes: int,
) -> tuple[dict, dict]:
    """``(variables, record)`` of a PyTorch / safetensors teacher file for ``model``.

    ``record`` has the keys of an orbax teacher's record (``model``, ``num_classes``,
    ``dataset``, ``accuracy``; the latter two unknown: None) and ``source``, the file.
    """
    layout(model_name)  # an unsupported model fails before the file is read
    tensors = read_state_dict(path)
    variables = convert(
        tensors, model, model_name, input_shape, num_classes=num_classes, source=str(path)
    )
    record = {
        "model": model_name,
        "num_classes": num_classes,
        "dataset": None,
        "accuracy": None,
        "source": os.fspath(path),
    }
    return variables, record
