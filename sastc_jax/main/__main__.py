"""``python -m sastc_jax.main --config=configs/X.py --workdir=DIR``: :mod:`sastc_jax.cli.main`."""

from sastc_jax.cli import main

if __name__ == "__main__":
    main.run()
