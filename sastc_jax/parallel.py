"""Data parallelism over a 1-D mesh of all devices of all processes.

The per-device program sees its local batch and reduces across the named axis
``'batch'``. State is replicated (``P()``) except batch-norm statistics, which
are kept per device (a leading axis of length ``device_count``, sharded over
``'batch'``) and averaged across devices before evaluation and saving.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"


def make_mesh() -> Mesh:
    """A 1-D mesh named ``'batch'`` over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's share of a batch (split along axis 0)."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree, identical on every process, replicated on the mesh."""
    sharding = replicated(mesh)

    def place(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(place, jax.device_get(tree))


def per_device_copies(tree: Any, mesh: Mesh) -> Any:
    """Replicated statistics -> one copy per device, stacked on a sharded leading axis."""
    sharding = batch_sharded(mesh)
    count = mesh.size

    def stack(leaf):
        leaf = np.asarray(leaf)
        shape = (count, *leaf.shape)
        return jax.make_array_from_callback(shape, sharding, lambda index: leaf[None])

    return jax.tree.map(stack, jax.device_get(tree))


def average_copies(tree: Any, mesh: Mesh) -> Any:
    """Mean over the per-device leading axis, replicated on the mesh."""
    return jax.jit(
        lambda t: jax.tree.map(lambda x: jnp.mean(x, axis=0), t), out_shardings=replicated(mesh)
    )(tree)


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-device batch, after checking that the global batch divides evenly."""
    if global_batch % mesh.size:
        raise ValueError(
            f"The global batch {global_batch} does not divide by the {mesh.size} "
            f"devices of the mesh; use a multiple of {mesh.size}."
        )
    return global_batch // mesh.size
