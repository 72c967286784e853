"""``python -m sastc_jax.checkpoints verify --workdir=DIR``: check the checksums of every
stage and teacher checkpoint under a run (:func:`sastc_jax.checkpoints.verify_workdir`).
Exit status 0 only if there is at least one and all are intact."""

from __future__ import annotations

from collections.abc import Sequence

from absl import app

from sastc_jax import checkpoints
from sastc_jax.checkpoints.integrity import as_path
from sastc_jax.cli import flags as shared

COMMAND = "verify"


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    """``verify``: one line per checkpoint; 0 if all are intact, else 1."""
    shared.check_positional(argv, COMMAND)
    shared.require(shared.WORKDIR)
    if not as_path(shared.WORKDIR.value).is_dir():
        raise app.UsageError(
            f"--workdir={shared.WORKDIR.value} is not a directory", exitcode=shared.USAGE_ERROR
        )
    return 0 if checkpoints.verify_workdir(shared.WORKDIR.value) else 1


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR], __doc__)
