"""``python -m sastc_jax.compare --config=configs/X_compare.py --workdir=DIR``: the method
comparison (:mod:`sastc_jax.compare`). Flags of its own: ``--train``, ``--phases`` and
``--commit_records``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
from absl import app, flags

from sastc_jax import compare
from sastc_jax.cli import flags as shared

TRAIN = flags.DEFINE_bool(
    "train", True, "Train what is missing; --notrain tabulates the finished runs only."
)
PHASES = flags.DEFINE_list(
    "phases",
    list(compare.PHASES),
    f"Phases that may train, comma-separated: a subset of {', '.join(compare.PHASES)}.",
)
COMMIT_RECORDS = flags.DEFINE_bool(
    "commit_records",
    False,
    "git-commit each finished run's record (summary, metrics, analysis, diagnosis; no "
    "student checkpoint), the teacher with its checksum, the choices and the results, as "
    "soon as each exists, in the repository that holds --workdir.",
)
flags.register_validator(
    PHASES.name,
    lambda phases: set(phases) <= set(compare.PHASES),
    message=f"--phases takes a comma-separated subset of {', '.join(compare.PHASES)}.",
)


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    """Run the comparison; 0, 1 (``error: ...``) or 143 (stopped by a signal)."""
    shared.check_positional(argv)
    shared.require(shared.CONFIG, shared.WORKDIR)
    if jax.process_count() > 1:
        raise app.UsageError("The comparison runs in one process.", exitcode=shared.USAGE_ERROR)
    workdir = Path(shared.WORKDIR.value)
    # Every seed of a method compiles the same programs: compile them once.
    jax.config.update("jax_compilation_cache_dir", str(workdir / "compilation_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    runs = compare.run(
        shared.CONFIG.value,
        workdir,
        train_runs=TRAIN.value,
        phases=PHASES.value,
        on_record=compare.git_commit if COMMIT_RECORDS.value else None,
    )
    print(f"[compare] {len(runs)} table run(s) finished; the results: {workdir / 'results.md'}")
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.CONFIG, shared.WORKDIR, TRAIN, PHASES, COMMIT_RECORDS], __doc__)
