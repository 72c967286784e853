"""``python -m sastc_jax.export --workdir=DIR``: the NIR export of a trained student (the
command line is :mod:`sastc_jax.cli.export`, the library :mod:`sastc_jax.interop.nir`)."""

if __name__ == "__main__":
    from sastc_jax.cli import export

    export.run()
