"""The command lines (sastc_jax.cli): one flag library for every command, every documented
command line parses, bad input is refused with what was wrong and what is allowed."""

import importlib
import subprocess
import sys

import pytest
from absl import app, flags
from processes import REPO, environment

from sastc_jax import cli
from sastc_jax.cli import alignment_check as alignment_cli
from sastc_jax.cli import analyze as analyze_cli
from sastc_jax.cli import checkpoints as checkpoints_cli
from sastc_jax.cli import compare as compare_cli
from sastc_jax.cli import export as export_cli
from sastc_jax.cli import flags as cli_flags
from sastc_jax.interop import nir as export

COMMAND_MODULES = [importlib.import_module(f"sastc_jax.cli.{name}") for name in cli.COMMANDS]
# The library modules behind the commands, imported too: none of them defines a flag.
LIBRARY = [
    "main",
    "compare",
    "analyze",
    "diagnose",
    "interop.nir",
    "plots",
    "experiments.alignment_check",
]
LIBRARY_MODULES = [
    importlib.import_module(f"sastc_jax.{name}")
    for name in [*LIBRARY, "checkpoints.verify", "data.verify", "distributed"]
]
SHARED = {"config", "workdir", "checkpoint", "output"}

# `python -m ALIAS ...` of every documented command, and flags its --help must list.
ALIASES = {
    "sastc_jax.main": ([], ["--config", "--workdir", "--distributed", "--num_processes"]),
    "sastc_jax.compare": ([], ["--config", "--workdir", "--[no]train", "--phases"]),
    "sastc_jax.analyze": ([], ["--workdir"]),
    "sastc_jax.diagnose": ([], ["--workdir"]),
    "sastc_jax.interop": ([], ["--workdir", "--checkpoint", "--output", "--dt"]),
    "sastc_jax.plots": ([], ["--workdir", "--output"]),
    "sastc_jax.checkpoints": (["verify"], ["--workdir"]),
    "sastc_jax.data": (["verify"], ["--config", "--output", "--threads", "--[no]progress"]),
    "sastc_jax.experiments.alignment_check": (
        [],
        ["--steps", "--seed", "--method", "--learning-rate", "--[no]learn-attention-scale"],
    ),
}


def command_line(alias: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", alias, *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_flag_is_defined_once_by_the_cli_and_no_library_module_defines_one():
    by_module = flags.FLAGS.flags_by_module_dict()
    ours = {name: [f.name for f in found] for name, found in by_module.items() if "sastc" in name}
    assert set(ours) <= {module.__name__ for module in COMMAND_MODULES} | {cli_flags.__name__}
    assert set(ours[cli_flags.__name__]) >= SHARED
    names = [name for found in ours.values() for name in found]
    assert len(names) == len(set(names))  # no flag is defined by two modules
    assert set(ours[export_cli.__name__]) == {"dt"}
    assert set(ours[compare_cli.__name__]) == {"train", "phases", "commit_records"}


def test_shared_checkpoint_choices_are_the_exporters():
    assert sorted(flags.FLAGS["checkpoint"].parser.enum_values) == sorted(export.CHECKPOINTS)


def test_parse_resets_every_flag_and_takes_fresh_config_overrides():
    cli_flags.parse(["--config=configs/quickstart.py", "--config.method=kd", "--output=x"])
    assert cli_flags.CONFIG.value.method == "kd" and cli_flags.OUTPUT.value == "x"
    assert cli_flags.parse(["--config=configs/quickstart.py", "--config.method=ce", "verify"]) == [
        "sastc_jax",
        "verify",
    ]
    assert cli_flags.CONFIG.value.method == "ce" and cli_flags.OUTPUT.value is None
    cli_flags.parse(["--config=configs/quickstart.py"])
    assert cli_flags.CONFIG.value.method == "sastc"  # the file's own value again


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint=latest"], "value should be one of <best|final>"),
        (["--phases=sweeps,tabel"], "--phases takes a comma-separated subset of sweeps, table"),
        (["--seed=0,one"], "expected comma-separated int values, got '0,one'"),
        (["--method=kd"], "--method takes a comma-separated subset of sastc, spatial"),
        (["--dt=0"], "--dt must be > 0"),
        (["--threads=0"], "--threads=0: 0 is not a positive integer"),
        (["--config.method=kd"], "Unknown command line flag 'config.method'"),  # no --config
    ],
)
def test_a_bad_flag_value_names_what_is_allowed(args, message):
    with pytest.raises(flags.Error, match=message):
        cli_flags.parse(args)


def test_usage_errors_name_the_missing_flag_or_the_stray_argument(tmp_path):
    with pytest.raises(app.UsageError, match=r"missing required flag\(s\): --workdir \(--help"):
        cli_flags.call(analyze_cli.main, [])
    with pytest.raises(app.UsageError, match="expected no positional arguments, got: 1 2"):
        cli_flags.call(export_cli.main, [f"--workdir={tmp_path}", "--dt", "1", "1", "2"])
    with pytest.raises(app.UsageError, match="expected the command `verify`, got: none"):
        cli_flags.call(checkpoints_cli.main, [f"--workdir={tmp_path}"])
    with pytest.raises(app.UsageError, match=f"--workdir={tmp_path / 'x'} is not a directory"):
        cli_flags.call(checkpoints_cli.main, ["verify", f"--workdir={tmp_path / 'x'}"])
    with pytest.raises(app.UsageError, match=r"--threshold takes 1 or 3 values .* got 2"):
        cli_flags.call(alignment_cli.main, ["--threshold=0.5,0.6", "--steps=1"])


def test_the_training_command_line_lists_its_flags():
    completed = command_line("sastc_jax.main", "--help")
    assert completed.returncode == 0, completed.stderr[-3000:]
    for flag in ALIASES["sastc_jax.main"][1]:
        assert f"  {flag}:" in completed.stdout
    assert "--dt:" not in completed.stdout  # another command's flag


def test_a_bad_flag_on_the_command_line_exits_2_with_the_message():
    completed = command_line("sastc_jax.interop", "--workdir=x", "--checkpoint=latest")
    assert completed.returncode == 2
    assert "error: flag --checkpoint=latest: value should be one of <best|final>" in (
        completed.stderr
    )


@pytest.mark.slow  # 10 processes that import jax: about 1-2 minutes on 2 cores
@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_documented_command_line_parses_and_lists_its_flags(alias):
    positional, listed = ALIASES[alias]
    completed = command_line(alias, *positional, "--help")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("``python -m sastc_jax.") and alias in completed.stdout
    for flag in listed:
        assert f"  {flag}:" in completed.stdout, completed.stdout
