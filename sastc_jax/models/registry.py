"""Model registry and access to the distillation taps (docs/method.md §4).

Every model class registers itself under a name with :func:`register`;
:func:`get_model` builds one from its name and dataclass attributes. Each model
class carries ``spiking: ClassVar[bool]`` (SNN student or ANN teacher).

Taps are the stage outputs a model sows with
``self.sow('intermediates', 'taps', x)`` from its top-level module, in depth
order; :func:`get_taps` reads them from the mutated variables of
``model.apply(..., mutable=['intermediates', ...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from sastc_jax.models.layers import LIF

TAPS_COLLECTION = "intermediates"
TAPS_NAME = "taps"

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a model class under ``name`` (names are unique)."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is already registered to {_REGISTRY[name]}.")
        if not isinstance(getattr(cls, "spiking", None), bool):
            raise TypeError(f"{cls.__name__} must define a class attribute `spiking: bool`.")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ``ValueError`` listing the names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; registered models: {', '.join(list_models())}."
        ) from None


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name`` with dataclass attributes ``kwargs``;
    ``ops=`` (:func:`sastc_jax.ops.select`) is one of them, ``select('auto')`` if left out."""
    return get_model_class(name)(**kwargs)


def supports_remat(name: str) -> bool:
    """Whether the registered model has a ``remat`` attribute (every student here does)."""
    return "remat" in getattr(get_model_class(name), "__dataclass_fields__", {})


def is_spiking(name: str) -> bool:
    """Whether the registered model is an SNN (time-major taps and per-step logits)."""
    return get_model_class(name).spiking


def get_taps(variables: Mapping[str, Any]) -> list[jax.Array]:
    """The distillation taps, in depth order, from an ``apply`` result.

    Accepts either the whole mutated-variables dict returned by
    ``apply(..., mutable=['intermediates', ...])`` or its ``'intermediates'``
    entry. Student taps are ``(T, B, H, W, C)``, teacher taps ``(B, H, W, C)``.
    The variables given to ``apply`` must not already hold ``'intermediates'``
    (``sow`` appends to them); ``model.init`` leaves them out by default.
    """
    if TAPS_COLLECTION in variables:
        variables = variables[TAPS_COLLECTION]
    if TAPS_NAME not in variables:
        raise ValueError(
            f"No {TAPS_NAME!r} in the variables (keys: {sorted(variables)}); call "
            f"model.apply(..., mutable=[{TAPS_COLLECTION!r}]) and pass its mutated variables."
        )
    return list(variables[TAPS_NAME])


def is_lif_call(module: nn.Module, method: str) -> bool:
    """``capture_intermediates`` filter that keeps the output of every LIF layer."""
    return isinstance(module, LIF) and method == "__call__"


def get_lif_outputs(intermediates: Mapping[str, Any], prefix: tuple = ()) -> dict[str, jax.Array]:
    """The spikes captured by ``apply(..., capture_intermediates=is_lif_call,
    mutable=['intermediates'])``, from its ``'intermediates'``: ``{layer path: (T, B, ...)}``.
    The sown taps are not LIF outputs and are skipped."""
    found = {}
    for key, value in intermediates.items():
        if key == "__call__":
            found["/".join(prefix)] = value[0]
        elif isinstance(value, Mapping) and key != TAPS_NAME:
            found.update(get_lif_outputs(value, (*prefix, key)))
    return found
