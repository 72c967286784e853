"""The former home of :mod:`sastc_jax.checkpoints`, kept so that existing imports and the
command ``python -m sastc_jax.checkpointing verify --workdir=DIR`` keep working.

New code imports :mod:`sastc_jax.checkpoints`.
"""

from sastc_jax.checkpoints import *  # noqa: F403
from sastc_jax.checkpoints import __all__  # noqa: F401

if __name__ == "__main__":
    from sastc_jax.cli import checkpoints

    checkpoints.run()
