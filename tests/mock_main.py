"""``python tests/mock_main.py --config=... --workdir=...``: the real command line, with every
TFDS dataset replaced by ``tfds.testing.mock_data`` (random examples, no files, no network).

For subprocess tests. ``MOCK_NUM_EXAMPLES`` sets the size of every split (default 64).
``MOCK_STEP_SECONDS`` makes every training step last at least that long, so a test that
signals a running job has a window that does not depend on how fast the machine is.
Checkpoint faults (see ``faults.py``): ``MOCK_ENOSPC_AT_STEP`` fails the write of that
step with ENOSPC; ``MOCK_CHECKSUM_SECONDS`` delays the checksums after every commit.
"""

import os
import time

import faults
import jax
import tensorflow_datasets as tfds

from sastc_jax.cli import main
from sastc_jax.train import step as step_lib

_make_train_step = step_lib.make_train_step


def make_throttled_train_step(*args, **kwargs):
    """``step_lib.make_train_step`` whose steps last at least ``MOCK_STEP_SECONDS``."""
    step = _make_train_step(*args, **kwargs)
    seconds = float(os.environ["MOCK_STEP_SECONDS"])

    def throttled(*step_args):
        finish = time.monotonic() + seconds
        outputs = jax.block_until_ready(step(*step_args))
        time.sleep(max(0.0, finish - time.monotonic()))
        return outputs

    return throttled


def run_mocked_main() -> None:
    """``sastc_jax.main`` under mock data, with the throttle when the environment asks."""
    if "MOCK_STEP_SECONDS" in os.environ:
        step_lib.make_train_step = make_throttled_train_step
    if "MOCK_ENOSPC_AT_STEP" in os.environ:
        faults.fill_disk_at_step(int(os.environ["MOCK_ENOSPC_AT_STEP"]))
    if "MOCK_CHECKSUM_SECONDS" in os.environ:
        faults.delay_checksums(float(os.environ["MOCK_CHECKSUM_SECONDS"]))
    num_examples = int(os.environ.get("MOCK_NUM_EXAMPLES", "64"))
    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        main.run()


if __name__ == "__main__":
    run_mocked_main()
