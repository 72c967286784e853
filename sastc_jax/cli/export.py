"""``python -m sastc_jax.interop --workdir=DIR [--checkpoint=best|final] [--output=FILE]``:
the trained student as a NIR graph (:func:`sastc_jax.interop.nir.export_workdir`), by default
into ``DIR/student.nir``. Flag of its own: ``--dt``."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from sastc_jax.cli import flags as shared
from sastc_jax.interop import nir as export

DT = flags.DEFINE_float("dt", export.DEFAULT_DT, "The NIR graph's time step in seconds (> 0).")
flags.register_validator(DT.name, lambda dt: dt > 0, message="--dt must be > 0 (seconds).")


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    """Export; 0, or 1 with a one-line ``error: ...``."""
    shared.check_positional(argv)
    shared.require(shared.WORKDIR)
    path = export.export_workdir(
        shared.WORKDIR.value,
        checkpoint=shared.CHECKPOINT.value,
        output=shared.OUTPUT.value,
        dt=DT.value,
    )
    print(f"wrote {path}")
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR, shared.CHECKPOINT, shared.OUTPUT, DT], __doc__)
