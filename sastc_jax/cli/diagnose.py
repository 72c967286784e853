"""``python -m sastc_jax.diagnose --workdir=RUN_DIR``: why the calibration of a calibrated
run helps or does not (:mod:`sastc_jax.diagnose`)."""

from __future__ import annotations

from collections.abc import Sequence

from sastc_jax import diagnose
from sastc_jax.cli import flags as shared


def main(argv: Sequence[str]) -> int:
    """Diagnose the run of ``--workdir`` (writes diagnosis.json / .md) and print it."""
    shared.check_positional(argv)
    shared.require(shared.WORKDIR)
    print(diagnose.diagnosis_markdown(diagnose.diagnose_run(shared.WORKDIR.value)))
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR], __doc__)
