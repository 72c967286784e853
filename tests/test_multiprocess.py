"""A real multi-process run: ``launch/local_multiprocess.sh`` starts 2 processes on 127.0.0.1
(jax.distributed, CPU collectives over gloo), each with 2 simulated CPU devices, and they
run the command line (``tests/multiprocess_main.py``: ``sastc_jax.main`` under TFDS mock
data) on ``tests/configs/tiny_cifar.py``: 3 teacher steps, then 3 SASTC distillation steps,
evaluation and checkpoints. Checked against a single process with 4 simulated devices on the
same global batches, and restored (and evaluated) by a single process with 1 device. A
second launch checks preemption: SIGTERM to one process stops both at the same step.

About 2.5 minutes on 2 CPU cores (the 2-process launch alone about 60 s): ``-m slow``.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import processes
import pytest
from processes import REPO, run

from sastc_jax import checkpoints
from sastc_jax.metrics import read_metrics

LAUNCH = REPO / "launch" / "local_multiprocess.sh"
NUM_EXAMPLES = 50  # training: 50 // 16 = 3 global batches; evaluation: 25 per process
ARGS = ["--config=tests/configs/tiny_cifar.py", "--config.stage=all"]
TIMEOUT = 600

pytestmark = pytest.mark.slow


def environment(**extra: str) -> dict[str, str]:
    """The CPU child environment with ``MOCK_NUM_EXAMPLES`` (unless ``extra`` sets it)."""
    return processes.environment(**{"MOCK_NUM_EXAMPLES": str(NUM_EXAMPLES), **extra})


def records(workdir: Path, split: str) -> list[dict]:
    return [r for r in read_metrics(workdir) if r.get("split") == split]


def final_state(workdir: Path, stage: str, process: int) -> dict[str, np.ndarray]:
    with np.load(workdir / f"final_{stage}_process{process}.npz") as arrays:
        return dict(arrays)


def flat(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"['a']['b']": leaf}`` of a restored checkpoint (nested dicts, lists, tuples)."""
    if isinstance(tree, dict | list | tuple):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        out = {}
        for key, value in items:
            out.update(flat(value, f"{prefix}[{key!r}]"))
        return out
    return {prefix: np.asarray(tree)}


def max_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(
        float(np.max(np.abs(a[k] - b[k]))) / max(1.0, float(np.max(np.abs(b[k])))) for k in a
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process launch (timed) and the single-process reference with 4 devices."""
    root = tmp_path_factory.mktemp("multiprocess")
    multi, single, logs = root / "multi", root / "single", root / "logs"
    driver = [sys.executable, "tests/multiprocess_main.py", *ARGS]
    command = ["bash", str(LAUNCH), "-n", "2", "-d", "2", "-l", str(logs), "--"]
    start = time.perf_counter()
    launched = run([*command, *driver, f"--workdir={multi}"], environment(PYTHON=sys.executable))
    seconds = time.perf_counter() - start
    assert launched.returncode == 0, launched.stdout[-6000:]
    print(f"\n2-process launch (2 x 2 CPU devices): {seconds:.1f}s", file=sys.stderr)
    reference = run(
        [*driver, f"--workdir={single}"],
        environment(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    )
    assert reference.returncode == 0, reference.stdout[-6000:]
    return multi, single, logs, launched.stdout


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_processes_agree_and_equal_one_process_on_four_devices(runs, stage):
    multi, single, _, _ = runs
    first, second = final_state(multi, stage, 0), final_state(multi, stage, 1)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    reference = final_state(single, stage, 0)
    assert int(first[".step"]) == int(reference[".step"]) == 3
    assert max_relative_difference(first, reference) < 1e-5
    momentum = [v for k, v in first.items() if k.startswith(".opt_state") and v.ndim]
    assert any(np.any(v != 0) for v in momentum)  # the steps really updated something


def test_eval_counts_every_example_once_and_logs_only_on_process_zero(runs):
    multi, single, logs, output = runs
    evals = records(multi, "test")
    assert [r["stage"] for r in evals] == ["teacher", "student"]
    assert all(r["count"] == NUM_EXAMPLES for r in evals)
    for got, want in zip(evals, records(single, "test"), strict=True):
        assert got["accuracy_per_t"] == pytest.approx(want["accuracy_per_t"])
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert len(records(multi, "summary")) == 2  # process 0 alone writes metrics
    assert "2 process(es), 4 device(s)" in output
    quiet = (logs / "process_1.log").read_text()
    assert "summary" not in quiet and "epoch" not in quiet and "process(es)" not in quiet
    assert "[student] summary" in (logs / "process_0.log").read_text()


def test_checkpoint_of_two_processes_restores_in_one(runs, tmp_path):
    multi, _, _, _ = runs
    latest = multi / "student" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["3"]  # one directory per step
    # Restore through the library into this (single, 1-device) process: a target of the
    # stored shapes, replicated here, as run_stage restores into its live state.
    stored = ocp.StandardCheckpointer().metadata(latest / "3" / "state").item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored)
    with checkpoints.Checkpoints(multi / "student") as ckpts:
        state, metadata = ckpts.restore(target)
    assert metadata["step"] == 3 and metadata["method"] == "sastc"
    restored, in_memory = flat(state), final_state(multi, "student", 0)
    assert {k for k in restored if k.startswith("['params']")} == {
        "['params']" + k[len(".params") :] for k in in_memory if k.startswith(".params")
    }
    for key, value in restored.items():
        if key.startswith("['opt_state']"):  # optax tuples are stored as dicts: skip
            continue
        held = in_memory["." + key[2:].replace("']", "", 1)]  # "['params']..." -> ".params..."
        np.testing.assert_allclose(value, held.reshape(value.shape), err_msg=key)
    variables, record = checkpoints.restore_teacher(
        multi / "teacher" / "final", model="convnet_ann", num_classes=10
    )
    assert record["accuracy"] == records(multi, "test")[0]["accuracy"]
    teacher = final_state(multi, "teacher", 0)
    for key, value in flat(variables["params"]).items():
        np.testing.assert_allclose(np.asarray(value), teacher[".params" + key])

    # The command line on 1 process x 1 device resumes the finished run (same per-device
    # batch: the calibration MLPs are sized by it), skips training and evaluates.
    workdir = tmp_path / "resumed"
    shutil.copytree(multi, workdir)
    resumed = run(
        [
            sys.executable,
            "tests/multiprocess_main.py",
            *ARGS,
            f"--workdir={workdir}",
            "--config.teacher.optimizer.batch_size=4",
            "--config.student.optimizer.batch_size=4",
        ],
        environment(),
    )
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    assert "checkpoint found" in resumed.stdout and "resumed from step 3" in resumed.stdout
    summary = records(workdir, "summary")[-1]
    assert summary["stage"] == "student" and summary["step"] == 3
    # evaluate() checks that the 1-device pass counted every example exactly once.
    assert summary["final_accuracy"] == records(multi, "test")[1]["accuracy"]


def pid_of(*parts: str) -> int | None:
    """The process whose command line contains every one of ``parts`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if entry.name.isdigit() and all(any(part in arg for arg in command) for part in parts):
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_on_one_process(tmp_path):
    """SIGTERM reaches only process 1: JAX's preemption sync makes both processes save the
    same step and exit 143; one process with 4 devices then resumes the run to its end."""
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    examples = 800  # 50 steps of 16
    args = [
        sys.executable,
        "tests/multiprocess_main.py",
        "--config=tests/configs/tiny_cifar.py",
        "--config.stage=teacher",
        "--config.max_steps_per_epoch=0",
        f"--workdir={workdir}",
    ]
    launcher = subprocess.Popen(
        ["bash", str(LAUNCH), "-n", "2", "-d", "2", "-l", str(logs), "--", *args],
        cwd=REPO,
        # JAX's preemption notifier polls for SIGTERM once a second and then agrees a step
        # with the other process: 0.3 s steps keep the 50-step epoch (15 s) well past that.
        env=environment(
            PYTHON=sys.executable, MOCK_NUM_EXAMPLES=str(examples), MOCK_STEP_SECONDS="0.3"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        metrics = workdir / "metrics.jsonl"
        while not (metrics.exists() and '"train"' in metrics.read_text()):
            assert launcher.poll() is None, launcher.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        second = pid_of(str(workdir), "--process_id=1")
        assert second is not None
        os.kill(second, signal.SIGTERM)
        output, _ = launcher.communicate(timeout=TIMEOUT)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode == 143, output[-4000:]
    stopped = [
        re.search(r"stopped: SIGTERM at step (\d+)", (logs / f"process_{i}.log").read_text())
        for i in range(2)
    ]
    assert all(stopped), output[-4000:]
    step = int(stopped[0].group(1))
    assert int(stopped[1].group(1)) == step < examples // 16
    assert sorted(int(p.name) for p in (workdir / "teacher" / "latest").iterdir()) == [step]

    resumed = run(
        [*args],
        environment(
            MOCK_NUM_EXAMPLES=str(examples), XLA_FLAGS="--xla_force_host_platform_device_count=4"
        ),
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert f"resumed from step {step}" in resumed.stdout
    assert records(workdir, "summary")[-1]["step"] == examples // 16
    assert records(workdir, "test")[-1]["count"] == examples
