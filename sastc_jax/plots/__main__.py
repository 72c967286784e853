"""``python -m sastc_jax.plots --workdir=DIR``: :mod:`sastc_jax.cli.plots`."""

from sastc_jax.cli import plots

if __name__ == "__main__":
    plots.run()
