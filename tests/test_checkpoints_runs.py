"""``sastc_jax.train.load_run`` on a finished run written by earlier code.

``tests/data/tiny_run`` was written by commit 40cc26e (how, and the figures measured
there: ``tests/data/README.md``); every test uses a copy of it. Its test split is TFDS's
mock CIFAR-10 (24 examples), the data it was trained and evaluated on.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import faults
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from processes import REPO, environment

from sastc_jax import analyze, checkpoints, metrics, parallel, train
from sastc_jax.models.snn import SpikingConvNet

FIXTURE = Path(__file__).parent / "data" / "tiny_run"
NUM_EXAMPLES = 24
# What the `evaluate` stage and the analysis of commit 40cc26e measured on the fixture.
MEASURED = {
    "student": {"accuracy": 0.08333333333333333, "loss": 2.303609530131022},
    "student_best": {"accuracy": 0.08333333333333333, "loss": 2.303609530131022},
    "teacher": {"accuracy": 0.041666666666666664, "loss": 2.5486679077148438},
}
STUDENT_FIRING_RATE = 0.17266063201121795
ANALYSIS_ACCURACY_PER_T = [0.0833333358168602, 0.0833333358168602]
ANALYSIS_ENTROPY = [0.7232499122619629, 1.00192129611969, 1.0907732248306274]


@pytest.fixture
def run_dir(tmp_path):
    """A copy of the fixture (orbax's commit markers name the directory they were written
    to; nothing that restores reads them)."""
    shutil.copytree(FIXTURE, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def mock_data():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def stored_state(step_dir: Path) -> dict:
    """The saved train state as orbax alone reads it (nested dicts of NumPy arrays)."""
    return ocp.StandardCheckpointer().restore(step_dir / "state")


def test_load_run_reads_the_config_the_student_and_its_variables(run_dir):
    run = train.load_run(run_dir, "best")
    widths = run.config.student.model_kwargs.widths
    assert widths == (4, 8, 8) and isinstance(widths, tuple)  # config.json lists as tuples
    assert isinstance(run.model, SpikingConvNet) and run.model.widths == (4, 8, 8)
    assert run.metadata["step"] == 2 and run.metadata["method"] == "sastc"
    assert run.checkpoint_dir == run_dir / "student" / "best"
    assert set(run.state["params"]) == {"student", "calibration"}
    stored = stored_state(run_dir / "student" / "best" / "2")
    expected = {"params": stored["params"]["student"], "batch_stats": stored["batch_stats"]}
    flat, want = jax.tree.leaves_with_path(run.variables), jax.tree.leaves_with_path(expected)
    assert [path for path, _ in flat] == [path for path, _ in want]
    for (path, leaf), (_, value) in zip(flat, want, strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), value, err_msg=jax.tree_util.keystr(path))
    latest = train.load_run(run_dir, "final")
    assert latest.checkpoint_dir == run_dir / "student" / "latest"


def test_load_run_errors_name_what_is_missing(run_dir, tmp_path):
    with pytest.raises(
        ValueError, match=r"checkpoint must be one of \['best', 'final', 'latest'\]"
    ):
        train.load_run(run_dir, "newest")
    with pytest.raises(FileNotFoundError, match=r"no config\.json there"):
        train.load_run(tmp_path)
    shutil.rmtree(run_dir / "student" / "best")
    with pytest.raises(checkpoints.CheckpointError, match=r"no best checkpoint in .*student/best"):
        train.load_run(run_dir, "best")


def test_a_damaged_checkpoint_of_the_run_is_named_never_loaded(run_dir):
    step_dir = run_dir / "student" / "latest" / "2"
    faults.flip_byte(faults.array_files(step_dir)[0])
    with pytest.raises(checkpoints.CorruptCheckpointError) as info:
        train.load_run(run_dir, "latest")
    message = str(info.value)
    assert message.startswith(f"the checkpoint at {step_dir} is corrupt: state/")
    assert "does not match its SHA-256 (bytes altered)" in message
    assert message.endswith(f"Fix: delete {step_dir} or use another checkpoint.")


@pytest.mark.parametrize("evaluated", ["student", "student_best", "teacher"])
def test_evaluate_gives_the_figures_of_the_code_that_wrote_the_run(evaluated, run_dir, mock_data):
    config = checkpoints.load_config(run_dir)
    config.stage, config.evaluate = "evaluate", evaluated
    logger = metrics.MetricsLogger(run_dir, progress_bars=False)
    summary = train.evaluate_checkpoint(config, run_dir, parallel.make_mesh(), logger)
    assert summary["count"] == NUM_EXAMPLES
    assert summary["accuracy"] == pytest.approx(MEASURED[evaluated]["accuracy"], rel=1e-6)
    assert summary["loss"] == pytest.approx(MEASURED[evaluated]["loss"], rel=1e-6)
    if evaluated != "teacher":
        assert summary["step"] == 2
        assert summary["firing_rate"] == pytest.approx(STUDENT_FIRING_RATE, rel=1e-6)


def test_analysis_gives_the_figures_of_the_code_that_wrote_the_run(run_dir, mock_data):
    result = analyze.analyze_run(run_dir)
    assert result["examples"] == NUM_EXAMPLES
    assert result["accuracy_per_t"] == pytest.approx(ANALYSIS_ACCURACY_PER_T, rel=1e-6)
    assert result["firing_rate"]["network"] == pytest.approx(STUDENT_FIRING_RATE, rel=1e-6)
    assert result["operations"]["student_sops"] == pytest.approx(152628.75, rel=1e-6)
    assert result["operations"]["teacher_macs"] == 204800.0
    entropy = result["attention"]["entropy_per_student_tap"]
    assert entropy == pytest.approx(ANALYSIS_ENTROPY, rel=1e-5)


def test_the_verify_command_passes_on_the_run(run_dir):
    command = [sys.executable, "-m", "sastc_jax.checkpoints", "verify", f"--workdir={run_dir}"]
    completed = subprocess.run(
        command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines()[-1] == "5 checkpoint(s): 5 intact, 0 corrupt"
    assert f"intact   {run_dir / 'teacher' / 'final' / '0'}" in completed.stdout
