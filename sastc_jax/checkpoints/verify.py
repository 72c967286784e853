"""What ``python -m sastc_jax.checkpoints verify --workdir=DIR`` does (the command line is
:mod:`sastc_jax.cli.checkpoints`): find every checkpoint under a run, check its checksums."""

from __future__ import annotations

import os
import sys
from typing import Any

from etils import epath

from sastc_jax.checkpoints.integrity import (
    CHECKSUMS,
    CORRUPT,
    as_path,
    describe,
    verify_checksums,
)
from sastc_jax.checkpoints.stage import STAGE_CHECKPOINTS, STATE
from sastc_jax.checkpoints.teacher import VARIABLES

_UNCOMMITTED = ".orbax-checkpoint-tmp"  # orbax's temporary step directories
_STEP_MARKERS = ("_CHECKPOINT_METADATA", CHECKSUMS, STATE, VARIABLES)


def _is_step_dir(path: epath.Path) -> bool:
    if not path.name.isdigit() or not path.is_dir():
        return False
    return path.parent.name in STAGE_CHECKPOINTS or any(
        (path / marker).exists() for marker in _STEP_MARKERS
    )


def find_checkpoints(workdir: str | os.PathLike) -> list[epath.Path]:
    """Committed step directories of every stage and teacher checkpoint under
    ``workdir`` (not those moved to ``corrupt/``, nor orbax's uncommitted temporaries)."""
    found, stack = [], [as_path(workdir)]
    while stack:
        directory = stack.pop()
        for child in directory.iterdir():
            if child.name == CORRUPT or _UNCOMMITTED in child.name:
                continue
            if _is_step_dir(child):
                found.append(child)
            elif child.is_dir():
                stack.append(child)
    return sorted(found, key=lambda p: (str(p.parent), int(p.name)))


def verify_workdir(workdir: str | os.PathLike, out: Any = None) -> bool:
    """Print one line per checkpoint under ``workdir`` (intact, or CORRUPT and why) to
    ``out`` (default stdout); True only if there is at least one and all are intact.
    Checks the checksums only (no restore, no finite check)."""
    out = out or sys.stdout
    steps = find_checkpoints(workdir)
    if not steps:
        print(f"no checkpoints found under {as_path(workdir)}", file=out)
        return False
    corrupt = 0
    for step_dir in steps:
        problems = verify_checksums(step_dir)
        corrupt += bool(problems)
        status = (
            f"CORRUPT  {step_dir}: {describe(problems)}" if problems else f"intact   {step_dir}"
        )
        print(status, file=out)
    print(f"{len(steps)} checkpoint(s): {len(steps) - corrupt} intact, {corrupt} corrupt", file=out)
    return corrupt == 0
