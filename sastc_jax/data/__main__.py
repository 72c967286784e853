"""``python -m sastc_jax.data verify --config=configs/X.py``: see :mod:`sastc_jax.data.verify`."""

import sys

from sastc_jax.data.verify import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
