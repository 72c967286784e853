"""``python -m sastc_jax.data verify --config=configs/X.py``: :mod:`sastc_jax.cli.data`."""

from sastc_jax.cli import data

if __name__ == "__main__":
    data.run()
