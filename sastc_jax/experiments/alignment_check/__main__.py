"""``python -m sastc_jax.experiments.alignment_check``: :mod:`sastc_jax.cli.alignment_check`."""

from sastc_jax.cli import alignment_check

if __name__ == "__main__":
    alignment_check.run()
