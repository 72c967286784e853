"""``python -m sastc_jax.plots --workdir=DIR [--output=FILE]``: the training curves of a run
(:func:`sastc_jax.plots.plot_run`), by default into ``DIR/curves.png``."""

from __future__ import annotations

from sastc_jax import plots
from sastc_jax.cli import flags as shared


def report(workdir: str):
    """Draw the curves of the run into ``--output``; returns the file's path."""
    return plots.plot_run(workdir, shared.OUTPUT.value)


main = shared.report_command(report)


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR, shared.OUTPUT], __doc__)
