"""``python -m sastc_jax.diagnose --workdir=RUN_DIR``: why the calibration of a calibrated
run helps or does not (:mod:`sastc_jax.diagnose`)."""

from __future__ import annotations

from sastc_jax import diagnose
from sastc_jax.cli import flags as shared


def report(workdir: str):
    """Diagnose the run (writes diagnosis.json / .md); returns the report."""
    return diagnose.diagnosis_markdown(diagnose.diagnose_run(workdir))


main = shared.report_command(report)


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR], __doc__)
