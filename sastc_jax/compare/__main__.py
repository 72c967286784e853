"""``python -m sastc_jax.compare``: see :mod:`sastc_jax.cli.compare`."""

from sastc_jax.cli import compare

if __name__ == "__main__":
    compare.run()
