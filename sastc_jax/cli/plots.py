"""``python -m sastc_jax.plots --workdir=DIR [--output=FILE]``: the training curves of a run
(:func:`sastc_jax.plots.plot_run`), by default into ``DIR/curves.png``."""

from __future__ import annotations

from collections.abc import Sequence

from sastc_jax import plots
from sastc_jax.cli import flags as shared


def main(argv: Sequence[str]) -> int:
    """Draw the curves of ``--workdir`` into ``--output`` and print the file's path."""
    shared.check_positional(argv)
    shared.require(shared.WORKDIR)
    print(plots.plot_run(shared.WORKDIR.value, shared.OUTPUT.value))
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR, shared.OUTPUT], __doc__)
