"""``python -m sastc_jax.checkpoints verify --workdir=DIR`` (also ``python -m
sastc_jax.checkpointing ...``): checks the checksums of every checkpoint under a run."""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None, *, prog: str = "python -m sastc_jax.checkpointing") -> int:
    """``verify --workdir=DIR``: exit status 0 only if every stage and teacher checkpoint
    under DIR is intact."""
    parser = argparse.ArgumentParser(prog=prog, description="Checkpoint maintenance.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", help="check the checksums of every checkpoint under a run directory"
    )
    verify.add_argument("--workdir", required=True, help="the run's --workdir")
    args = parser.parse_args(argv)
    if not as_path(args.workdir).is_dir():
        parser.error(f"--workdir={args.workdir} is not a directory")
    return 0 if verify_workdir(args.workdir) else 1
