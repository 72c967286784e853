"""The flags every sastc_jax command shares, and how a command parses and runs.

Every command line of the package is an absl program (``sastc_jax.cli.<command>``). The
flags two or more commands take are defined here, once per process: ``--config`` (an
ml_collections config file whose fields ``--config.x.y=v`` override), ``--workdir``,
``--checkpoint`` and ``--output``. A command module defines only its own flags, under
names no other command module uses, so any set of command modules imports into one
process (a test run) without a DuplicateFlagError.

Exit status of every command: 0 success, 1 a failure the command reports (``error: ...``),
2 a usage error (an unknown flag or config field, a bad flag value, a missing required
flag, a stray argument), 143 a run stopped by SIGTERM: the message says what was wrong and
what is allowed. Every command's ``main`` goes through :func:`error_boundary`, so a bad
input (a config value, a file, a checkpoint, a run directory) reads as one ``error:`` line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from sastc_jax import checkpoints, distributed, runlock
from sastc_jax.train.guards import NonFiniteLossError
from sastc_jax.train.preemption import Preempted

FLAGS = flags.FLAGS
USAGE_ERROR = 2  # exit status of a usage error, as argparse's

CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py; the comparison takes configs/*_compare.py). "
    "Any field can be overridden after it, e.g. --config.method=kd.",
    lock_config=True,
)
WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory: checkpoints, metrics, config.json (what python -m sastc_jax.main "
    "writes, or one run of python -m sastc_jax.compare under DIR/runs/).",
)
CHECKPOINT = flags.DEFINE_enum(
    "checkpoint",
    "best",
    ["best", "final"],
    "Which student checkpoint: best (the one selected on validation) or final (the last saved).",
)
OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Where the command writes its result; unset = the command's default (see its --help).",
)

_Main = Callable[[list[str]], Any]

# What a command reports as ``error: ...`` (exit 1): bad config values, missing or damaged
# files and checkpoints (our own errors name them), a busy workdir, a diverged run.
# Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    ImportError,
    checkpoints.CheckpointError,
    NonFiniteLossError,
    distributed.DistributedError,
    runlock.WorkdirLockedError,
)
STOPPED = 143  # exit status of a run stopped by SIGTERM (checkpoint saved), as 128 + 15


def error_boundary(main: _Main) -> _Main:
    """``main`` with :data:`EXPECTED_ERRORS` printed as one ``error: ...`` line on stderr
    (exit status 1) and :class:`Preempted` as ``stopped: ...`` (143); usage errors
    (app.UsageError) and bugs pass through. Logging is quiet (:func:`quiet_logging`)."""

    @functools.wraps(main)
    def bounded(argv: Sequence[str]) -> Any:
        quiet_logging()
        try:
            return main(argv)
        except Preempted as stop:
            print(f"stopped: {stop}", file=sys.stderr)
            return STOPPED
        except EXPECTED_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return bounded


class NumberListParser(flags.ListParser):
    """A comma-separated list of numbers of one type (``int`` or ``float``), for
    ``flags.DEFINE(NumberListParser(int), name, default, help)``."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind = kind

    def parse(self, argument: Any) -> list:
        items = super().parse(argument)
        try:
            return [self.kind(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(
                f"expected comma-separated {self.kind.__name__} values, got {argument!r}"
            ) from None

    def flag_type(self) -> str:
        return f"comma-separated list of {self.kind.__name__}"


def require(*holders: flags.FlagHolder) -> None:
    """Raise app.UsageError naming every flag of ``holders`` left unset."""
    missing = [holder.name for holder in holders if holder.value is None]
    if missing:
        named = ", ".join(f"--{name}" for name in missing)
        raise app.UsageError(
            f"missing required flag(s): {named} (--help describes them)", exitcode=USAGE_ERROR
        )


def check_positional(argv: Sequence[str], command: str | None = None) -> None:
    """Raise app.UsageError for positional arguments (absl leaves them in ``argv``)
    other than the subcommand ``command``."""
    expected = [command] if command else []
    if list(argv[1:]) != expected:
        given = " ".join(argv[1:]) or "none"
        wanted = f"the command `{command}`" if command else "no positional arguments"
        raise app.UsageError(
            f"expected {wanted}, got: {given} (flags take --name=value; lists are "
            "comma-separated, e.g. --seed=0,1,2)",
            exitcode=USAGE_ERROR,
        )


def quiet_logging() -> None:
    """absl logging at WARNING unless ``--verbosity`` was given: orbax logs every save and
    JAX its backend probing at INFO, which would bury a command's own lines."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def report_command(report: Callable[[str], Any]) -> _Main:
    """The ``main`` of a command that reads one run: ``--workdir`` required, no positional
    arguments, prints ``report(workdir)``."""

    def main(argv: Sequence[str]) -> int:
        check_positional(argv)
        require(WORKDIR)
        print(report(WORKDIR.value))
        return 0

    return error_boundary(main)


def _parse_flags(argv: list[str]) -> list[str]:
    """``FLAGS(argv)`` for app.run: a parse error exits 2 with the message; --help and
    --helpfull, which print the usage and exit 1 in absl, exit 0."""
    try:
        return FLAGS(argv)
    except SystemExit as stop:  # only the help flags exit while parsing
        raise SystemExit(0 if stop.code == 1 else stop.code) from None
    except flags.Error as error:
        print(f"error: {error}\nRun with --help for this command's flags.", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    except (AttributeError, KeyError) as error:  # config_flags: a --config.x.y that is no field
        print(f"error: {unknown_config_field(error, argv)}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def unknown_config_field(error: AttributeError | KeyError, argv: Sequence[str]) -> str:
    """One line for ml_collections' error on an override of a field the config lacks:
    the flag, the field and its "Did you mean" hint."""
    # ml_collections raises AttributeError(KeyError(message)): the message is the field in
    # quotes, then the hint on its own line.
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    field, _, hint = text.partition("\n")
    field = field.strip("'\"")
    overrides = [arg for arg in argv if arg.startswith(f"--{CONFIG.name}.")]
    named = [arg for arg in overrides if field in arg.partition("=")[0].split(".")]
    flag = named[0].partition("=")[0] if named else f"--{CONFIG.name}.{field}"
    advice = hint.strip() or "check the spelling against the config file"
    return f"{flag}: the config has no field {field!r}. {advice}"


def run(main: _Main, key_flags: Sequence[flags.FlagHolder], usage: str | None) -> NoReturn:
    """Parse ``sys.argv`` and exit with ``main(positional arguments)``'s status (absl's
    app.run); ``--help`` and usage errors print ``usage`` and ``key_flags``,
    ``--helpfull`` every flag."""
    # absl's usage text is the __main__ module's docstring (the alias `python -m` ran),
    # followed by the key flags of sys.argv[0].
    sys.modules["__main__"].__doc__ = usage
    for holder in key_flags:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[holder.name])
    app.run(main, flags_parser=_parse_flags)
    raise AssertionError("app.run returned")  # it exits


def parse(args: Sequence[str], program: str = "sastc_jax") -> list[str]:
    """Parse the command line ``args`` (without the program name) into FLAGS, every flag
    reset to its default first; returns the positional arguments, program first.

    For running a command in this process (tests, notebooks); a program parses once,
    through :func:`run`. Raises flags.Error for a bad command line."""
    FLAGS.unparse_flags()
    for name in [name for name in FLAGS if name.startswith(f"{CONFIG.name}.")]:
        delattr(FLAGS, name)  # the --config.x=y overrides of an earlier parse
    argv = [program, *args]
    # config_flags defines the overrides' flags from sys.argv when it parses --config.
    saved, sys.argv = sys.argv, argv
    try:
        return FLAGS(argv)
    finally:
        sys.argv = saved


def call(main: _Main, args: Sequence[str]) -> Any:
    """``main(parse(args))``: a command run in this process; returns what ``main`` returns
    (its exit status), and raises app.UsageError where the program would exit 2."""
    return main(parse(args))
