"""Checksum manifests of saved steps, their verification, finite checks and quarantine.

orbax/TensorStore checksum only their own index structures (OCDBT manifests and b-tree
nodes, the zarr3 shard index), not the array chunks nor the JSON items, and offer no
option to add the zarr ``crc32c`` codec, so a flipped byte in an array file restores
silently. Hence, once orbax has committed a step, ``checksums.json`` records the size and
SHA-256 of every file in it, read back from disk. A step is *intact* when every recorded
file has its recorded size and digest; a step without ``checksums.json`` (its save was
interrupted) is not.

Multi-process policy (``jax.distributed``): every process verifies the files it reads
(:func:`verify_step`), then all processes agree on the outcome with
:func:`all_processes_agree`, so they take the same branch (restore, fall back, raise)
together. Writes to a checkpoint directory (the checksums, moving a step aside) are done
by process 0 alone, followed by a barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sastc_jax.checkpoints.errors import CorruptCheckpointError

log = logging.getLogger(__name__)

PyTree = Any
CHECKSUMS = "checksums.json"
INTERRUPTED_SAVE = (
    f"{CHECKSUMS} is missing: its save never finished (interrupted), or it was written "
    "without checksums"
)
FAILED_ELSEWHERE = "it failed verification on another process"
CORRUPT = "corrupt"
_CHUNK_BYTES = 8 << 20
_MAX_ERROR_CHARS = 600
_MAX_PROBLEMS = 4


def as_path(directory: str | os.PathLike) -> epath.Path:
    """Absolute local path, or a remote (``gs://...``) path as given."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def short(err: BaseException) -> str:
    """One line naming an exception, cut at a readable length."""
    text = " ".join(f"{type(err).__name__}: {err}".split()).rstrip(".")
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def describe(problems: list[str]) -> str:
    """The first few problems, joined; how many more there are."""
    more = len(problems) - _MAX_PROBLEMS
    return "; ".join(problems[:_MAX_PROBLEMS]) + (f"; ... ({more} more)" if more > 0 else "")


def corrupt_error(where: str, reason: str, fix: str) -> CorruptCheckpointError:
    """``'<where> is corrupt: <reason>. Fix: <fix>'``, e.g. where = 'the checkpoint at P'."""
    return CorruptCheckpointError(f"{where} is corrupt: {reason}. Fix: {fix}", reason=reason)


# ---------------------------------------------------------------------------- checksums


def _file_digest(path: epath.Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _walk_files(directory: epath.Path) -> Iterator[epath.Path]:
    """Every file below ``directory`` (epath has no recursive glob for remote paths)."""
    for child in directory.iterdir():
        if child.is_dir():
            yield from _walk_files(child)
        else:
            yield child


def _listing_digest(files: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_checksums(step_dir: str | os.PathLike) -> None:
    """Record the size and SHA-256 of every file of a committed step in ``checksums.json``.

    The file list itself carries a digest, so an altered ``checksums.json`` is detected
    too. Written to a temporary name and renamed, so it is either complete or absent.
    """
    step_dir = as_path(step_dir)
    files = {}
    for path in sorted(_walk_files(step_dir)):
        relative = path.relative_to(step_dir).as_posix()
        if relative not in (CHECKSUMS, CHECKSUMS + ".tmp"):
            files[relative] = list(_file_digest(path))
    manifest = {"algorithm": "sha256", "files": files, "files_digest": _listing_digest(files)}
    temporary = step_dir / (CHECKSUMS + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    temporary.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: str | os.PathLike) -> list[str]:
    """What is wrong with a step directory's files; empty when every recorded file has
    its recorded size and SHA-256 (files added after the save are not checked)."""
    step_dir = as_path(step_dir)
    if not step_dir.is_dir():
        return [f"{step_dir} is not a directory"]
    manifest_path = step_dir / CHECKSUMS
    if not manifest_path.exists():
        return [INTERRUPTED_SAVE]
    try:
        manifest = json.loads(manifest_path.read_text())
        files, recorded = dict(manifest["files"]), manifest["files_digest"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{CHECKSUMS} is unreadable ({short(err)})"]
    if _listing_digest(files) != recorded:
        return [f"{CHECKSUMS} does not match its own digest: it was altered"]
    problems = []
    for relative, (size, digest) in sorted(files.items()):
        path = step_dir / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
        elif (found := path.stat().length) != size:
            kind = "is truncated" if found < size else "has grown"
            problems.append(f"{relative} {kind}: {found} bytes, {size} were written")
        elif _file_digest(path)[1] != digest:
            problems.append(f"{relative} does not match its SHA-256 (bytes altered)")
    return problems


def verify_step(step_dir: str | os.PathLike) -> list[str]:
    """Checksum problems of a step, by the multi-process policy: every process verifies
    the files it reads, then all agree. Empty only if the step is intact on every
    process; a process that found nothing wrong reports :data:`FAILED_ELSEWHERE`.
    Collective in multi-process runs."""
    problems = verify_checksums(step_dir)
    if all_processes_agree(not problems):
        return []
    return problems or [FAILED_ELSEWHERE]


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """``'path: k of n values'`` for every floating-point leaf holding NaN or inf."""
    found = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not jnp.issubdtype(getattr(leaf, "dtype", np.result_type(leaf)), jnp.inexact):
            continue  # (jnp's test knows bfloat16 is floating point; NumPy's does not)
        if isinstance(leaf, jax.Array):  # the process's own copies; one if replicated
            shards = leaf.addressable_shards[:1] if leaf.is_fully_replicated else None
            values = [np.asarray(s.data) for s in (shards or leaf.addressable_shards)]
        else:
            values = [np.asarray(leaf)]
        bad = sum(int(np.size(v) - np.count_nonzero(np.isfinite(v))) for v in values)
        if bad:
            total = sum(np.size(v) for v in values)
            found.append(f"{jax.tree_util.keystr(key_path)}: {bad} of {total} values")
    return found


# ------------------------------------------------------------------------ processes


def all_processes_agree(ok: bool) -> bool:
    """True only if ``ok`` holds on every process (collective in multi-process runs)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def sync_processes(name: str) -> None:
    """Barrier of all processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------- quarantine


def move_aside(step_dir: epath.Path) -> epath.Path:
    """Rename a corrupt ``<root>/<kind>/<step>`` to ``<root>/corrupt/<kind>-<step>``."""
    corrupt = step_dir.parent.parent / CORRUPT
    corrupt.mkdir(parents=True, exist_ok=True)
    name = f"{step_dir.parent.name}-{step_dir.name}"
    target, copy = corrupt / name, 1
    while target.exists():
        copy += 1
        target = corrupt / f"{name}.{copy}"
    step_dir.rename(target)
    return target


def quarantine(step_dir: epath.Path, reason: str) -> None:
    """Move a step that failed verification aside (process 0; a barrier) and log it.
    Collective in multi-process runs."""
    moved = move_aside(step_dir) if jax.process_index() == 0 else None
    sync_processes(f"sastc_corrupt_{step_dir.parent.name}_{step_dir.name}")
    log.warning(
        "checkpoint %s (step %s) is corrupt: %s. Moved it to %s; falling back to an older "
        "intact checkpoint.",
        step_dir,
        step_dir.name,
        reason,
        moved or f"{step_dir.parent.parent / CORRUPT} (by process 0)",
    )


def quarantine_corrupt_steps(root: epath.Path) -> int:
    """Verify every step under ``root`` and move the failing ones aside; returns how many
    were moved. Collective in multi-process runs."""
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    moved = 0
    for step in steps:
        if problems := verify_step(root / str(step)):
            quarantine(root / str(step), describe(problems))
            moved += 1
    return moved
