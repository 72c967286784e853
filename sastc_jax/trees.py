"""Comparing a pytree's structure and leaf shapes against the ones expected."""

from __future__ import annotations

from typing import Any

import jax


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every array leaf (``jax.ShapeDtypeStruct`` included); paths as
    ``jax.tree_util.keystr`` writes them (``['params']['conv']['kernel']``)."""
    return {
        jax.tree_util.keystr(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


def shape_mismatch(expected: Any, got: Any) -> str | None:
    """The first difference between ``got`` and ``expected`` in words (a leaf missing, a
    leaf too many, a leaf of another shape), with how many more differ; None when both
    have the same leaves with the same shapes."""
    want, have = leaf_shapes(expected), leaf_shapes(got)
    problems = [f"{path} is missing" for path in want if path not in have]
    problems += [f"{path} is not expected" for path in have if path not in want]
    problems += [
        f"{path} has shape {have[path]}, expected {shape}"
        for path, shape in want.items()
        if path in have and have[path] != shape
    ]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
    return problems[0] + more
