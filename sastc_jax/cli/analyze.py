"""``python -m sastc_jax.analyze --workdir=RUN_DIR``: firing rates, operations and energy,
attention, accuracy by T of a trained student (:mod:`sastc_jax.analyze`)."""

from __future__ import annotations

from sastc_jax import analyze
from sastc_jax.cli import flags as shared


def report(workdir: str):
    """Analyse the run (writes its analysis files); returns the table."""
    return analyze.analysis_markdown(analyze.analyze_run(workdir))


main = shared.report_command(report)


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR], __doc__)
