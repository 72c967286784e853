"""``python -m sastc_jax.checkpoints verify --workdir=DIR``."""

import sys

from sastc_jax.checkpoints.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sastc_jax.checkpoints"))
