"""``python -m sastc_jax.data verify --config=configs/X.py [--config.dataset.x=y ...]``:
decode every example of the config's dataset (:mod:`sastc_jax.data.verify`) and list the
bad ones in ``--output`` (default ``bad_files.jsonl``). Exit status 0 when nothing is bad,
1 when something is, 2 for a usage or config error. Flags of its own: ``--threads`` and
``--progress``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from sastc_jax import configuration
from sastc_jax.cli import flags as shared
from sastc_jax.data import verify

COMMAND = "verify"
THREADS = flags.DEFINE_integer(
    "threads", min(32, os.cpu_count() or 1), "Decoding threads (>= 1).", lower_bound=1
)
PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar per split.")


@shared.error_boundary
def main(argv: Sequence[str]) -> int:
    """``verify``: 0 when no example is bad, 1 when some are, 2 for a bad config."""
    shared.check_positional(argv, COMMAND)
    shared.require(shared.CONFIG)
    config = shared.CONFIG.value
    try:
        configuration.validate(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return shared.USAGE_ERROR
    output = shared.OUTPUT.value or verify.DEFAULT_OUTPUT
    bad = verify.verify_dataset(
        config, output=output, threads=THREADS.value, progress_bar=PROGRESS.value
    )
    return 1 if bad else 0


def run() -> None:
    """The program: parse sys.argv, exit with :func:`main`'s status."""
    shared.run(main, [shared.CONFIG, shared.OUTPUT, THREADS, PROGRESS], __doc__)
