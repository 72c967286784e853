"""``python tests/multiprocess_main.py --config=... --workdir=...``: the real command line under
TFDS mock data (``tests/mock_main.py``, whose environment variables apply), which also saves
every process's final train state of each stage as ``WORKDIR/final_<stage>_process<i>.npz``
for the multi-process tests.

A state leaf is saved from one of this process's devices, after checking that all of this
process's copies agree (parameters are replicated; batch statistics are averaged and copied
to every device before the end of a stage).
"""

from pathlib import Path

import jax
import numpy as np
from mock_main import run_mocked_main

from sastc_jax.train import loop

_run_stage = loop.run_stage


def local_copy(leaf) -> np.ndarray:
    """The leaf as this process holds it; raises if its devices hold different copies."""
    copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
    for other in copies[1:]:
        if not np.array_equal(copies[0].reshape(other.shape), other):
            raise AssertionError(f"devices of process {jax.process_index()} disagree")
    return copies[0]


def run_stage_and_save(stage, config, workdir, mesh, logger):
    summary = _run_stage(stage, config, workdir, mesh, logger)
    leaves = jax.tree_util.tree_flatten_with_path(stage.state)[0]
    arrays = {jax.tree_util.keystr(path): local_copy(leaf) for path, leaf in leaves}
    path = Path(workdir) / f"final_{stage.name}_process{jax.process_index()}.npz"
    np.savez(path, **arrays)
    return summary


if __name__ == "__main__":
    # The stages call run_stage from train.loop's namespace: replace it there.
    loop.run_stage = run_stage_and_save
    run_mocked_main()
