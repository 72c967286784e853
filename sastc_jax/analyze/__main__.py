"""``python -m sastc_jax.analyze --workdir=DIR``: :mod:`sastc_jax.cli.analyze`."""

from sastc_jax.cli import analyze

if __name__ == "__main__":
    analyze.run()
