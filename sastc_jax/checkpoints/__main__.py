"""``python -m sastc_jax.checkpoints verify --workdir=DIR``: :mod:`sastc_jax.cli.checkpoints`."""

from sastc_jax.cli import checkpoints

if __name__ == "__main__":
    checkpoints.run()
