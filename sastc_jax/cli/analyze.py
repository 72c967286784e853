"""``python -m sastc_jax.analyze --workdir=RUN_DIR``: firing rates, operations and energy,
attention, accuracy by T of a trained student (:mod:`sastc_jax.analyze`)."""

from __future__ import annotations

from collections.abc import Sequence

from sastc_jax import analyze
from sastc_jax.cli import flags as shared


def main(argv: Sequence[str]) -> int:
    """Analyse the run of ``--workdir`` (writes its analysis files) and print the table."""
    shared.check_positional(argv)
    shared.require(shared.WORKDIR)
    print(analyze.analysis_markdown(analyze.analyze_run(shared.WORKDIR.value)))
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.WORKDIR], __doc__)
