"""``python -m sastc_jax.diagnose --workdir=DIR``: :mod:`sastc_jax.cli.diagnose`."""

from sastc_jax.cli import diagnose

if __name__ == "__main__":
    diagnose.run()
