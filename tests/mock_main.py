"""``python tests/mock_main.py --config=... --workdir=...``: the real command line, with every
TFDS dataset replaced by ``tfds.testing.mock_data`` (random examples, no files, no network).

For subprocess tests. ``MOCK_NUM_EXAMPLES`` sets the size of every split (default 64).
"""

import os

import tensorflow_datasets as tfds
from absl import app

from sastc_jax import main

if __name__ == "__main__":
    num_examples = int(os.environ.get("MOCK_NUM_EXAMPLES", "64"))
    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        app.run(main.main)
