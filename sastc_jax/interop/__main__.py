"""``python -m sastc_jax.interop --workdir=DIR``: the NIR export of a trained student,
:mod:`sastc_jax.cli.export`."""

from sastc_jax.cli import export

if __name__ == "__main__":
    export.run()
