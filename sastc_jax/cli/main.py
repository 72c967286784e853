"""``python -m sastc_jax.main --config=configs/X.py --workdir=DIR``: train and evaluate.

Any config field can be overridden, e.g. ``--config.method=kd --config.stage=distill``.
``config.stage``: ``teacher`` trains the ANN teacher, ``distill`` trains the SNN student
against a frozen teacher checkpoint, ``all`` does both (skipping the teacher when its
checkpoint exists or is a PyTorch file to import), ``evaluate`` reports the test accuracy
of ``config.evaluate`` without training. Rerunning with the same workdir resumes.
Multi-process runs: ``--distributed`` and the coordinator flags (:mod:`sastc_jax.distributed`).
Runs :func:`sastc_jax.main.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import flags

from sastc_jax import distributed
from sastc_jax import main as training
from sastc_jax.cli import flags as shared

DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    list(distributed.MODES),
    "Call jax.distributed.initialize(): auto = when multi-process (flags, SLURM, "
    "Open MPI, multi-host TPU); on = always; off = never.",
)
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    "",
    "host:port of process 0 (plain clusters; empty = JAX's detection).",
)
NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "Number of processes (0 = JAX's detection)."
)
PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (-1 = JAX's detection).")
INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    distributed.DEFAULT_TIMEOUT,
    "Seconds to wait for the coordinator and for all processes to join it.",
)


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    """Run the configured stages; 0, 1 (``error: ...``) or 143 (stopped by a signal)."""
    shared.check_positional(argv)
    shared.require(shared.CONFIG, shared.WORKDIR)
    distributed.initialize(
        mode=DISTRIBUTED.value,
        coordinator_address=COORDINATOR_ADDRESS.value,
        num_processes=NUM_PROCESSES.value,
        process_id=PROCESS_ID.value,
        timeout_seconds=INITIALIZATION_TIMEOUT.value,
    )
    training.run(shared.CONFIG.value, Path(shared.WORKDIR.value))
    return 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(
        main,
        [
            shared.CONFIG,
            shared.WORKDIR,
            DISTRIBUTED,
            COORDINATOR_ADDRESS,
            NUM_PROCESSES,
            PROCESS_ID,
            INITIALIZATION_TIMEOUT,
        ],
        __doc__,
    )
