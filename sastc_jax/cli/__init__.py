"""The command lines of sastc_jax: one absl program per command, sharing one set of flags
(:mod:`sastc_jax.cli.flags`).

- ``python -m sastc_jax.main --config=... --workdir=...``: :mod:`sastc_jax.cli.main`
- ``python -m sastc_jax.compare --config=... --workdir=...``: :mod:`sastc_jax.cli.compare`
- ``python -m sastc_jax.analyze --workdir=...``: :mod:`sastc_jax.cli.analyze`
- ``python -m sastc_jax.diagnose --workdir=...``: :mod:`sastc_jax.cli.diagnose`
- ``python -m sastc_jax.interop --workdir=...``: :mod:`sastc_jax.cli.export`
- ``python -m sastc_jax.plots --workdir=...``: :mod:`sastc_jax.cli.plots`
- ``python -m sastc_jax.checkpoints verify --workdir=...``: :mod:`sastc_jax.cli.checkpoints`
- ``python -m sastc_jax.data verify --config=...``: :mod:`sastc_jax.cli.data`
- ``python -m sastc_jax.experiments.alignment_check``: :mod:`sastc_jax.cli.alignment_check`

Each ``python -m sastc_jax.X`` runs the thin entry module ``sastc_jax/X/__main__.py``, which
calls ``sastc_jax.cli.X.run()`` (the export's is ``sastc_jax/interop/__main__.py``, calling
``sastc_jax.cli.export.run()``): the library module keeps the functions, the cli module the
flags and ``main``, and no module outside ``cli/`` and the entry modules imports ``cli``.
``--help`` lists a command's flags, ``--helpfull`` every flag. In this process,
``sastc_jax.cli.flags.call(module.main, args)`` runs a command with the command line
``args``.
"""

COMMANDS = (
    "main",
    "compare",
    "analyze",
    "diagnose",
    "export",
    "plots",
    "checkpoints",
    "data",
    "alignment_check",
)
