"""``python -m sastc_jax.main`` end to end on mock CIFAR-10 (every method and the teacher
stage), its error messages, and resuming after SIGKILL."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import faults
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from event_files import read_scalars
from processes import REPO, environment

from sastc_jax.checkpoints import CHECKSUMS
from sastc_jax.metrics import read_metrics

NUM_EXAMPLES = 24
SMALL = [
    "--config=configs/quickstart.py",
    "--config.dataset.name=cifar10",
    "--config.dataset.source=auto",
    "--config.teacher.optimizer.batch_size=8",
    "--config.student.optimizer.batch_size=8",
    "--config.teacher.optimizer.epochs=1",
    "--config.student.optimizer.epochs=1",
    "--config.max_steps_per_epoch=2",
]


def cli(
    workdir,
    *overrides,
    num_examples=NUM_EXAMPLES,
    timeout=600,
    wait=True,
    step_seconds=0.0,
    faults=None,
):
    """Run the real command line (under TFDS mock data) in a subprocess; ``step_seconds``
    makes each training step last at least that long (a window for signals); ``faults``:
    the checkpoint faults of ``mock_main`` to inject (environment variables)."""
    command = [
        sys.executable,
        str(REPO / "tests" / "mock_main.py"),
        f"--workdir={workdir}",
        *SMALL,
        *overrides,
    ]
    env = environment(MOCK_NUM_EXAMPLES=str(num_examples))
    if step_seconds:
        env["MOCK_STEP_SECONDS"] = str(step_seconds)
    env.update(faults or {})
    if not wait:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def latest_state(stage_dir):
    """The newest saved train state, restored raw (nested dicts of NumPy arrays)."""
    manager = ocp.CheckpointManager(Path(stage_dir) / "latest")
    step = manager.latest_step()
    state = ocp.StandardCheckpointer().restore(Path(stage_dir) / "latest" / str(step) / "state")
    manager.close()
    return step, state


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
    """Both stages through the CLI: teacher, then SASTC against it."""
    workdir = tmp_path_factory.mktemp("all")
    completed = cli(workdir, "--config.stage=all", "--config.method=sastc")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return workdir


def test_all_stages_train_save_and_summarise(teacher_workdir):
    summaries = [r for r in read_metrics(teacher_workdir) if r["split"] == "summary"]
    assert [s["stage"] for s in summaries] == ["teacher", "student"]
    teacher, student = summaries
    assert teacher["step"] == 2 and student["step"] == 2
    assert len(student["accuracy_per_t"]) == 2  # T = 2: accuracy after 1 and 2 steps
    evals = [r for r in read_metrics(teacher_workdir) if r["split"] == "test"]
    assert all(r["count"] == NUM_EXAMPLES for r in evals)  # the whole split, once
    assert (teacher_workdir / "teacher" / "final").is_dir()
    assert json.loads((teacher_workdir / "summary.json").read_text())[1]["method"] == "sastc"
    step, state = latest_state(teacher_workdir / "student")
    assert step == 2
    assert set(state["params"]) == {"student", "calibration"}


def test_all_skips_an_existing_teacher(teacher_workdir, tmp_path):
    completed = cli(
        tmp_path,
        "--config.stage=all",
        "--config.method=kd",
        f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "skipping the stage" in completed.stderr
    assert [r["stage"] for r in read_metrics(tmp_path) if r["split"] == "summary"] == ["student"]


@pytest.mark.parametrize(
    "method",
    [
        "ce",
        "kd",
        pytest.param("layerwise", marks=pytest.mark.slow),
        pytest.param("spatial", marks=pytest.mark.slow),
    ],
)
def test_every_method_distils(method, teacher_workdir, tmp_path):
    completed = cli(
        tmp_path,
        "--config.stage=distill",
        f"--config.method={method}",
        f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (summary,) = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert summary["stage"] == "student" and summary["step"] == 2
    _, state = latest_state(tmp_path / "student")
    assert ("calibration" in state["params"]) == (method in ("layerwise", "spatial"))
    train_records = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert train_records == [] or all(np.isfinite(r["loss"]) for r in train_records)


@pytest.mark.parametrize(
    "evaluated, stage, field",
    [
        ("teacher", "teacher", "final_accuracy"),
        ("student", "student", "final_accuracy"),
        ("student_best", "student", "best_accuracy"),
    ],
)
def test_evaluate_reports_the_saved_models_accuracy(
    evaluated, stage, field, teacher_workdir, tmp_path
):
    workdir = tmp_path / "run"
    shutil.copytree(teacher_workdir, workdir)
    completed = cli(
        workdir,
        "--config.stage=evaluate",
        "--config.method=sastc",
        f"--config.evaluate={evaluated}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summaries = [r for r in read_metrics(workdir) if r["split"] == "summary"]
    trained = {r["stage"]: r for r in summaries[:-1]}
    evaluation = json.loads((workdir / "evaluation.json").read_text())
    assert summaries[-1] == evaluation and evaluation["stage"] == "evaluate"
    assert evaluation["evaluated"] == evaluated and evaluation["count"] == NUM_EXAMPLES
    assert evaluation["accuracy"] == trained[stage][field]
    assert (workdir / "config.json").read_text() == (teacher_workdir / "config.json").read_text()
    # It says what it is doing before the slow part (loading, the first compile).
    loading = completed.stderr.index(f"[evaluate] {evaluated}: loading the test split")
    assert loading < completed.stderr.index(f"evaluating {NUM_EXAMPLES} test examples")


def test_evaluate_without_a_student_checkpoint(tmp_path):
    completed = cli(tmp_path, "--config.stage=evaluate", "--config.evaluate=student")
    assert completed.returncode == 1
    assert f"no latest checkpoint in {tmp_path / 'student' / 'latest'}: train this stage" in (
        completed.stderr
    )
    assert "[evaluate] student: loading the test split and the checkpoint" in completed.stderr


def test_teacher_stage_alone(tmp_path):
    completed = cli(tmp_path, "--config.stage=teacher")
    assert completed.returncode == 0, completed.stderr[-3000:]
    (summary,) = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert summary["stage"] == "teacher" and summary["accuracy_per_t"] == [
        summary["final_accuracy"]
    ]
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.method=semckd", "config.method = 'semckd' is not supported"),
        ("--config.student.model=resnet99_snn", "config.student.model = 'resnet99_snn'"),
        ("--config.dataset.name=mnist", "config.dataset.name = 'mnist' is not supported"),
        ("--config.time_steps=0", "needs T >= 1"),
        ("--config.student.optimizer.batch_size=2", "SASTC needs at least 4"),
        ("--config.teacher.model=convnet_snn", "the teacher must be an ANN"),
    ],
)
def test_bad_config_values_are_named(override, message, tmp_path):
    completed = cli(tmp_path, override)
    assert completed.returncode == 1
    assert message in completed.stderr


def test_unknown_config_field_is_rejected(tmp_path):
    completed = cli(tmp_path, "--config.studnet.model=resnet19_snn")
    assert completed.returncode != 0
    assert "studnet" in completed.stderr


def test_layerwise_needs_matching_tap_counts(teacher_workdir, tmp_path):
    completed = cli(
        tmp_path,
        "--config.stage=distill",
        "--config.method=layerwise",
        "--config.teacher.model=resnet18_ann",
        "--config.teacher.model_kwargs.widths=(16,32,64,128)",
    )
    assert completed.returncode == 1
    assert "needs as many student taps as teacher taps; got S=3, K=4" in completed.stderr


def test_model_kwargs_that_do_not_fit_are_named(tmp_path):
    completed = cli(tmp_path, "--config.teacher.model=vgg11_ann")  # ConvNet's widths=
    assert completed.returncode == 1
    assert (
        "config.teacher.model_kwargs = {'widths': (16, 32, 64)} do not fit the model "
        "'vgg11_ann'" in completed.stderr
    )


def test_teacher_architecture_mismatch_names_both(teacher_workdir, tmp_path):
    completed = cli(
        tmp_path,
        "--config.stage=distill",
        "--config.teacher.model=resnet19_ann",
        f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}",
    )
    assert completed.returncode == 1
    assert "convnet_ann" in completed.stderr and "resnet19_ann" in completed.stderr


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(teacher_workdir, tmp_path):
    common = [
        "--config.stage=distill",
        "--config.method=kd",
        f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}",
    ]
    healthy = cli(tmp_path, *common)  # 2 good steps, checkpoint at step 2
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    # Resume for a second epoch with an absurd learning rate: step 3 blows up.
    completed = cli(
        tmp_path,
        *common,
        "--config.student.optimizer.epochs=2",
        "--config.student.optimizer.learning_rate=1e30",
    )
    assert completed.returncode == 1
    assert re.search(
        r"Non-finite loss or parameters at step 3: .*ce=.*param_norm=", completed.stderr
    ), completed.stderr[-3000:]
    assert "the last verified checkpoint (step 2) is kept" in completed.stderr
    step, state = latest_state(tmp_path / "student")
    assert step == 2
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_first_step_and_tensorboard_scalars_of_a_two_step_run(teacher_workdir):
    first = [r for r in read_metrics(teacher_workdir) if r["split"] == "train"]
    assert [(r["stage"], r["step"]) for r in first] == [("teacher", 1), ("student", 1)]
    assert all(np.isfinite(first[1][k]) for k in ("ce", "kd", "calibration", "loss"))
    pytest.importorskip("tensorboardX")
    scalars = read_scalars(teacher_workdir / "tensorboard")
    common = ("loss", "accuracy", "learning_rate", "images_per_second", "param_norm")
    for record, parts in zip(first, [("ce",), ("ce", "kd", "calibration")], strict=True):
        for name in (*parts, *common):
            tag = f"{record['stage']}/train/{name}"
            assert scalars[tag] == [(1, pytest.approx(record[name], rel=1e-6))], tag
    (test,) = [r for r in read_metrics(teacher_workdir) if r["split"] == "test"][1:]
    for name in ("accuracy_t1", "accuracy_t2", "loss", "firing_rate"):
        assert [step for step, _ in scalars[f"student/test/{name}"]] == [2], name
    assert scalars["student/test/firing_rate"][0][1] == pytest.approx(test["firing_rate"])
    assert 0 < test["firing_rate"] < 1
    assert "teacher/test/accuracy_t1" in scalars and "teacher/test/firing_rate" not in scalars


def test_a_parameter_norm_blow_up_stops_and_keeps_the_last_checkpoint(teacher_workdir, tmp_path):
    # The fixture's teacher stage: 2 good steps, checkpoint at step 2.
    shutil.copytree(teacher_workdir / "teacher", tmp_path / "teacher")
    # A second epoch at a learning rate that multiplies the norm yet stays finite.
    completed = cli(
        tmp_path,
        "--config.stage=teacher",
        "--config.teacher.optimizer.epochs=2",
        "--config.teacher.optimizer.learning_rate=1000",
    )
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert re.search(
        r"error: The parameter norm grew from [\d.]+ \(step 2\) to [\d.e+]+ at step 3: x[\d.e+]+, "
        r"more than config.guards.max_param_norm_growth",
        completed.stderr,
    ), completed.stderr[-3000:]
    assert "the last verified checkpoint (step 2) is kept" in completed.stderr
    assert latest_state(tmp_path / "teacher")[0] == 2


@pytest.mark.slow  # about a minute on 2 cores
def test_a_second_run_on_the_same_workdir_is_refused(tmp_path):
    first = cli(tmp_path, "--config.stage=teacher", wait=False, step_seconds=4.0)
    lock = tmp_path / ".lock"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if lock.exists() and lock.read_text():
            break
        time.sleep(0.05)
    second = cli(tmp_path, "--config.stage=teacher")
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 1, second.stderr[-3000:]
    holder = f"host {socket.gethostname()}, pid {first.pid}, started "
    assert f"error: {tmp_path} is in use by another run ({holder}" in second.stderr
    assert f"command: {sys.executable} {REPO / 'tests' / 'mock_main.py'}" in second.stderr
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-3000:]
    summaries = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert [(s["stage"], s["step"]) for s in summaries] == [("teacher", 2)]  # the first's only
    verified = verify_command(tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow  # about a minute on 2 cores
def test_a_run_killed_with_sigkill_leaves_no_lock_that_blocks(tmp_path):
    args = ["--config.stage=teacher", "--config.checkpoint_every_steps=1"]
    process = cli(tmp_path, *args, wait=False, step_seconds=1.0)
    latest = tmp_path / "teacher" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if list(latest.glob(f"*/{CHECKSUMS}")):  # step 1 saved and checksummed
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == process.pid  # left behind

    rerun = cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        f"warning: taking over a stale workdir lock left by host {socket.gethostname()}, "
        f"pid {process.pid}, started "
    ) in rerun.stderr
    assert "that process is dead (killed?)" in rerun.stderr
    assert re.search(r"\[teacher\] resumed from step [12] ", rerun.stderr), rerun.stderr[-3000:]
    verified = verify_command(tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_no_intact_checkpoint_is_reported(tmp_path):
    completed = cli(tmp_path, "--config.stage=teacher")
    assert completed.returncode == 0, completed.stderr[-3000:]
    for kind in ("latest", "best"):  # the only step, 2, under both
        for path in (tmp_path / "teacher" / kind / "2" / "state").rglob("*"):
            if path.is_file() and path.stat().st_size > 0:
                path.write_bytes(b"garbage")
    completed = cli(tmp_path, "--config.stage=teacher", "--config.teacher.optimizer.epochs=2")
    assert completed.returncode == 1
    assert f"error: no intact checkpoint in {tmp_path / 'teacher'}" in completed.stderr
    assert "rerun to start this stage from scratch" in completed.stderr


@pytest.mark.slow  # about 1.5 minutes on 2 cores
def test_resume_after_sigkill_equals_an_uninterrupted_run(teacher_workdir, tmp_path):
    """Kill a run mid-epoch, restart it: the final parameters are bit-identical."""
    teacher = f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}"
    common = [
        "--config.stage=distill",
        "--config.method=sastc",
        teacher,
        "--config.student.optimizer.epochs=2",
        "--config.max_steps_per_epoch=0",
        "--config.checkpoint_every_steps=2",
        "--config.time_steps=4",
    ]
    # 48 examples / batch 8 = 6 steps per epoch, 12 in all; checkpoints every 2 steps.
    reference = cli(tmp_path / "reference", *common, num_examples=48)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = cli(killed_dir, *common, num_examples=48, wait=False, step_seconds=0.1)
    deadline = time.time() + 300
    latest = killed_dir / "student" / "latest"

    def finished_steps() -> list[int]:  # saves whose checksums were written
        return [int(p.parent.name) for p in latest.glob(f"*/{CHECKSUMS}")]

    while time.time() < deadline and process.poll() is None:
        if any(2 <= step < 6 for step in finished_steps()):  # mid-epoch 1
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # A newer save may have been cut off by the kill: the resume skips it.
    killed_at = max(finished_steps())
    assert killed_at < 12

    resumed = cli(killed_dir, *common, num_examples=48)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {killed_at}" in resumed.stderr
    step_a, expected = latest_state(tmp_path / "reference" / "student")
    step_b, got = latest_state(killed_dir / "student")
    assert step_a == step_b == 12
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(teacher_workdir, tmp_path):
    common = [
        "--config.stage=distill",
        "--config.method=kd",
        f"--config.teacher.checkpoint={teacher_workdir / 'teacher' / 'final'}",
        "--config.student.optimizer.epochs=3",
        "--config.max_steps_per_epoch=0",
        "--config.checkpoint_every_steps=1000",
        "--config.log_every_steps=1",
    ]
    process = cli(tmp_path, *common, num_examples=48, wait=False, step_seconds=0.1)
    metrics_file = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
        if sum('"split": "train"' in line for line in lines) >= 2:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-3000:]
    match = re.search(r"stopped: SIGTERM at step (\d+): checkpoint saved", output)
    assert match, output[-3000:]
    stopped_at = int(match.group(1))
    assert 2 <= stopped_at < 18
    assert latest_state(tmp_path / "student")[0] == stopped_at

    resumed = cli(tmp_path, *common, num_examples=48)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    assert latest_state(tmp_path / "student")[0] == 18


# ------------------------------------------------- checkpoint corruption and recovery

# 32 examples / batch 8 = 4 steps an epoch, checkpoints every 2: one epoch leaves
# latest/2, latest/4 and best/4; a second epoch continues to step 8.
RECOVERY = [
    "--config.stage=distill",
    "--config.method=ce",
    "--config.max_steps_per_epoch=0",
    "--config.checkpoint_every_steps=2",
]
RECOVERY_EXAMPLES = 32


def recovery_cli(workdir, epochs, **kwargs):
    return cli(
        workdir,
        *RECOVERY,
        f"--config.student.optimizer.epochs={epochs}",
        num_examples=RECOVERY_EXAMPLES,
        **kwargs,
    )


def verify_command(workdir) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sastc_jax.checkpoints", "verify", f"--workdir={workdir}"]
    return subprocess.run(
        command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300
    )


def assert_same_state(dir_a, dir_b) -> None:
    step_a, state_a = latest_state(dir_a)
    step_b, state_b = latest_state(dir_b)
    assert step_a == step_b
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A healthy one-epoch run: latest/2, latest/4, best/4."""
    workdir = tmp_path_factory.mktemp("one_epoch")
    completed = recovery_cli(workdir, epochs=1)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A one-epoch run whose save of step 4 fails with ENOSPC: (workdir, its output)."""
    workdir = tmp_path_factory.mktemp("full_disk")
    completed = recovery_cli(workdir, epochs=1, faults={"MOCK_ENOSPC_AT_STEP": "4"})
    return workdir, completed


@pytest.fixture(scope="module")
def from_step_2(full_disk):
    """The reference: the full-disk run (an intact step 2, nothing after it) rerun for a
    second epoch without the fault: an uninterrupted run restarted from step 2."""
    workdir, _ = full_disk
    completed = recovery_cli(workdir, epochs=2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"resumed from step 2 in {workdir / 'student' / 'latest' / '2'}" in completed.stderr
    return workdir


def test_a_full_disk_stops_the_run_and_keeps_the_verified_checkpoints(full_disk, one_epoch):
    workdir, completed = full_disk
    assert completed.returncode == 1
    latest = workdir / "student" / "latest"
    assert f"error: cannot save the checkpoint at {latest / '4'} (step 4)" in completed.stderr
    assert "No space left on device" in completed.stderr
    assert "the last verified one is step 2" in completed.stderr
    verified = verify_command(workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"intact   {latest / '2'}" in verified.stdout
    assert "1 checkpoint(s): 1 intact, 0 corrupt" in verified.stdout
    # up to the failure, the run is the healthy one
    shutil.copytree(one_epoch, workdir.parent / "one_epoch_at_2")
    shutil.rmtree(workdir.parent / "one_epoch_at_2" / "student" / "latest" / "4")
    assert_same_state(workdir / "student", workdir.parent / "one_epoch_at_2" / "student")


def test_corrupt_newest_checkpoints_fall_back_bit_for_bit(one_epoch, from_step_2, tmp_path):
    """Bit rot in latest/4, a lost file in best/4: verify names both; the rerun moves them
    aside, resumes from step 2 and ends exactly where the run restarted from step 2 ends."""
    workdir = tmp_path / "run"
    shutil.copytree(one_epoch, workdir)
    student = workdir / "student"
    faults.flip_byte(faults.array_files(student / "latest" / "4")[0])
    (student / "best" / "4" / "metadata" / "metadata").unlink()
    verified = verify_command(workdir)
    assert verified.returncode == 1
    assert f"CORRUPT  {student / 'latest' / '4'}: state/ocdbt.process_0/d/" in verified.stdout
    assert "does not match its SHA-256" in verified.stdout
    assert f"CORRUPT  {student / 'best' / '4'}: metadata/metadata is missing" in verified.stdout

    completed = recovery_cli(workdir, epochs=2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for kind, reason in [("latest", "does not match its SHA-256"), ("best", "is missing")]:
        corrupt = re.escape(f"checkpoint {student / kind / '4'} (step 4) is corrupt: ")
        moved = re.escape(f"Moved it to {student / 'corrupt' / (kind + '-4')};")
        assert re.search(f"{corrupt}.*{reason}.*{moved}", completed.stderr), completed.stderr
    assert sorted(p.name for p in (student / "corrupt").iterdir()) == ["best-4", "latest-4"]
    assert f"resumed from step 2 in {student / 'latest' / '2'}" in completed.stderr
    assert_same_state(student, from_step_2 / "student")
    assert verify_command(workdir).returncode == 0


@pytest.mark.slow
def test_sigkill_before_the_checksums_falls_back_bit_for_bit(from_step_2, tmp_path):
    """Killed after orbax committed step 4 but before its checksums were written: the
    rerun treats step 4 as interrupted and continues from step 2."""
    latest = tmp_path / "student" / "latest"
    process = recovery_cli(tmp_path, epochs=1, wait=False, faults={"MOCK_CHECKSUM_SECONDS": "3"})
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (latest / "4").is_dir() and not (latest / "4" / "checksums.json").exists():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (latest / "2" / "checksums.json").exists()

    completed = recovery_cli(tmp_path, epochs=2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (
        f"checkpoint {latest / '4'} (step 4) is corrupt: checksums.json is missing"
        in completed.stderr
    )
    assert f"resumed from step 2 in {latest / '2'}" in completed.stderr
    assert_same_state(tmp_path / "student", from_step_2 / "student")
