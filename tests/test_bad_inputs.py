"""Bad inputs as a new user meets them, through the real command lines in subprocesses:
each gives a short ``error:`` message naming the field or the file, the documented exit
status (2 usage, 1 refused or failed), and a refused resume leaves the workdir unchanged."""

import gzip
import hashlib
import json
import shutil
import sys
import zlib
from pathlib import Path

import pytest
from processes import environment, run
from test_data_static import write_fashion_dir

from sastc_jax import metrics
from sastc_jax.data import fashion_mnist

TINY = [
    "--config=configs/quickstart.py",
    "--config.teacher.model_kwargs.widths=(4,8,8)",
    "--config.student.model_kwargs.widths=(4,8,8)",
    "--config.teacher.optimizer.batch_size=8",
    "--config.student.optimizer.batch_size=8",
    "--config.teacher.optimizer.epochs=1",
    "--config.student.optimizer.epochs=1",
    "--config.max_steps_per_epoch=2",
    "--config.tensorboard=False",
]
MAX_LINES = 3  # "a few lines": the error and, at most, what to do


def command(module: str, *args: str, timeout: float = 300):
    """``python -m module args`` from the repository root on the CPU; stdout + stderr."""
    return run([sys.executable, "-m", module, *args], environment(), timeout=timeout)


def train(workdir, data_dir, *overrides: str):
    """The training command on the tiny run; ``overrides`` replace the flags of the same
    name (config_flags appends to a tuple field given twice)."""
    names = {override.partition("=")[0] for override in overrides}
    tiny = [flag for flag in TINY if flag.partition("=")[0] not in names]
    return command(
        "sastc_jax.main",
        f"--workdir={workdir}",
        *tiny,
        f"--config.dataset.data_dir={data_dir}",
        *overrides,
    )


def tree_hash(directory: Path) -> str:
    """SHA-256 over every file's relative path and bytes (the lock file's too)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def error_lines(output: str) -> list[str]:
    """The lines from the first ``error:`` on (what the user reads)."""
    lines = output.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert starts, f"no error: line in\n{output[-3000:]}"
    return lines[starts[0] :]


def assert_reported(completed, status: int, *named: str) -> None:
    assert completed.returncode == status, completed.stdout[-3000:]
    assert "Traceback" not in completed.stdout, completed.stdout[-3000:]
    message = error_lines(completed.stdout)
    assert len(message) <= MAX_LINES, message
    for text in named:
        assert text in "\n".join(message), (text, message)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion_dir(directory, n_train=32, n_test=16)
    return directory


# ------------------------------------------------------------------ no run needed


@pytest.mark.parametrize(
    ("override", "status", "named"),
    [
        (
            "--config.dataset.augmentaton=True",
            2,
            ["--config.dataset.augmentaton: the config has no field 'augmentaton'. Did you mean"],
        ),
        ("--config.student.optimizer.learning_rate=-0.1", 1, ["learning_rate"]),
        ("--config.teacher.optimizer.momentum=1.5", 1, ["teacher.optimizer.momentum", "[0, 1)"]),
        ("--config.dataset.validation_fraction=1.0", 1, ["validation_fraction"]),
        ("--config.student.optimizer.schedule=linear", 1, ["schedule", "cosine"]),
        ("--config.student.optimizer.decay_factor=0.0", 1, ["decay_factor", "(0, 1]"]),
        ("--config.teacher.optimizer.warmup_epochs=5.0", 1, ["warmup_epochs"]),
        ("--config.loss.temperature=0.0", 1, ["loss.temperature"]),
        ("--config.loss.beta=-1.0", 1, ["loss.beta"]),
        ("--config.max_steps_per_epoch=-1", 1, ["max_steps_per_epoch"]),
    ],
)
def test_settings_that_cannot_train_are_refused_before_anything_runs(
    override, status, named, fashion_dir, tmp_path
):
    workdir = tmp_path / "run"
    completed = train(workdir, fashion_dir, override)
    assert_reported(completed, status, *named)
    assert not workdir.exists()  # refused before the workdir was touched


def damaged_copy(source: Path, target: Path, damage: str) -> Path:
    """A copy of the Fashion-MNIST directory with its test images file damaged; returns
    that file's path."""
    shutil.copytree(source, target)
    path = target / (fashion_mnist.FILES["test"][0] + ".gz")
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    else:  # flip bytes inside the compressed stream: a CRC or deflate error
        middle = len(blob) // 2
        path.write_bytes(
            blob[:middle] + bytes(b ^ 0xFF for b in blob[middle : middle + 8]) + blob[middle + 8 :]
        )
    return path


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_fashion_mnist_file_is_named(damage, fashion_dir, tmp_path):
    path = damaged_copy(fashion_dir, tmp_path / "data", damage)
    with pytest.raises((EOFError, OSError, zlib.error)):
        gzip.decompress(path.read_bytes())  # the damage is real
    completed = train(tmp_path / "run", tmp_path / "data")
    assert_reported(completed, 1, str(path), "damaged")

    verified = command(
        "sastc_jax.data",
        "verify",
        *TINY,
        f"--config.dataset.data_dir={tmp_path / 'data'}",
        f"--output={tmp_path / 'bad.jsonl'}",
        "--noprogress",
    )
    assert verified.returncode == 1, verified.stdout[-3000:]
    bad = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert [record["path"] for record in bad] == [str(path)]


@pytest.mark.parametrize("module", ["sastc_jax.analyze", "sastc_jax.diagnose", "sastc_jax.plots"])
def test_reading_an_empty_directory_is_one_line(module, tmp_path):
    before = tree_hash(tmp_path)
    completed = command(module, f"--workdir={tmp_path}")
    assert_reported(completed, 1, str(tmp_path))
    assert tree_hash(tmp_path) == before


# ------------------------------------------------------------- one trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir):
    """Teacher and SASTC student, one epoch of 2 steps each."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    completed = train(workdir, fashion_dir)
    assert completed.returncode == 0, completed.stdout[-3000:]
    return workdir


def copy_run(trained: Path, target: Path) -> Path:
    shutil.copytree(trained, target)
    return target


@pytest.mark.slow  # trains the shared run (about a minute on 2 cores)
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("--config.method=kd", "config.method"),
        ("--config.student.model_kwargs.widths=(8,8,8)", "config.student.model_kwargs"),
        ("--config.time_steps=4", "config.time_steps"),
        ("--config.teacher.model_kwargs.widths=(8,8,8)", "config.teacher.model_kwargs"),
        ("--config.neuron.tau=0.25", "config.neuron.tau"),
        ("--config.dataset.name=cifar10 --config.dataset.source=auto", "config.dataset.name"),
    ],
)
def test_a_resume_that_changes_the_checkpoints_meaning_is_refused_and_writes_nothing(
    override, field, trained, fashion_dir, tmp_path
):
    workdir = copy_run(trained, tmp_path / "run")
    before = tree_hash(workdir)
    completed = train(workdir, fashion_dir, *override.split())
    assert_reported(completed, 1, field, str(workdir / "config.json"))
    assert tree_hash(workdir) == before


@pytest.mark.slow
def test_another_teacher_is_refused_for_the_students_checkpoints(trained, fashion_dir, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    other = copy_run(trained / "teacher" / "final", tmp_path / "other_teacher")
    before = tree_hash(workdir)
    completed = train(workdir, fashion_dir, f"--config.teacher.checkpoint={other}")
    assert_reported(completed, 1, "config.teacher.checkpoint")
    assert tree_hash(workdir) == before


@pytest.mark.slow
def test_a_teacher_of_another_width_is_refused_at_load(trained, fashion_dir, tmp_path):
    completed = train(
        tmp_path / "run",
        fashion_dir,
        "--config.stage=distill",
        "--config.teacher.model_kwargs.widths=(4,8,16)",
        f"--config.teacher.checkpoint={trained / 'teacher' / 'final'}",
    )
    assert_reported(completed, 1, str(trained / "teacher" / "final"), "has shape")


@pytest.mark.slow
def test_more_epochs_resume_once_per_step_and_keep_every_summary(trained, fashion_dir, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    completed = train(
        workdir, fashion_dir, "--config.stage=distill", "--config.student.optimizer.epochs=2"
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "student.optimizer.epochs 1 -> 2" in completed.stdout
    history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {
        "stage": ["all", "distill"],
        "student.optimizer.epochs": [1, 2],
    }
    assert history[-1]["resumed"] == ["teacher", "student"]
    summaries = json.loads((workdir / "summary.json").read_text())
    assert [s["stage"] for s in summaries] == ["teacher", "student"]
    assert summaries[1]["step"] == 4
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["stage"], r["split"], r["step"]) for r in lines if r["split"] != "summary"]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
@pytest.mark.parametrize("module", ["sastc_jax.analyze", "sastc_jax.diagnose"])
@pytest.mark.parametrize("damage", ["teacher_only", "corrupt_checkpoint"])
def test_reading_a_run_without_an_intact_student_is_one_line(module, damage, trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    if damage == "teacher_only":
        shutil.rmtree(workdir / "student")
        named = str(workdir / "student")
    else:
        steps = (workdir / "student" / "latest").glob("[0-9]*")
        step = max(steps, key=lambda path: int(path.name))  # what analyze and diagnose read
        victim = max((p for p in step.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
        named = str(step)
    completed = command(module, f"--workdir={workdir}")
    assert_reported(completed, 1, named)


# ------------------------------------------------------------------ unit tests


def test_a_resumed_stage_drops_its_replayed_records(tmp_path):
    logger = metrics.MetricsLogger(tmp_path, progress_bars=False)
    for step in (1, 2, 3, 4):
        logger.write({"stage": "teacher", "split": "train", "step": step, "loss": 1.0})
    for step in (1, 2, 3):
        logger.write({"stage": "student", "split": "train", "step": step, "loss": 1.0})
    logger.write({"stage": "student", "split": "test", "step": 3, "accuracy": 0.5})
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('{"stage": "student", "split": "tr')  # a line cut short by kill -9
    assert logger.drop_after("student", 2) == 3
    kept = [(r["stage"], r["step"]) for r in metrics.read_metrics(tmp_path)]
    teacher = [("teacher", step) for step in (1, 2, 3, 4)]
    assert kept == [*teacher, ("student", 1), ("student", 2)]


def test_read_metrics_keeps_the_last_record_of_each_step(tmp_path):
    logger = metrics.MetricsLogger(tmp_path, progress_bars=False)
    for step, loss in ((1, 5.0), (2, 4.0), (2, 3.0), (3, 2.0)):
        logger.write({"stage": "student", "split": "train", "step": step, "loss": loss})
    logger.write({"stage": "student", "split": "summary", "step": 3, "final_accuracy": 0.1})
    logger.write({"stage": "student", "split": "summary", "step": 3, "final_accuracy": 0.2})
    records = metrics.read_metrics(tmp_path)
    assert [(r["split"], r["step"], r.get("loss")) for r in records[:3]] == [
        ("train", 1, 5.0),
        ("train", 2, 3.0),
        ("train", 3, 2.0),
    ]
    assert [r["final_accuracy"] for r in records if r["split"] == "summary"] == [0.2]


def test_summaries_merge_by_stage(tmp_path):
    teacher = {"stage": "teacher", "final_accuracy": 0.9}
    student = {"stage": "student", "final_accuracy": 0.5}
    assert metrics.write_summaries(tmp_path, [teacher, student]) == [teacher, student]
    rerun = {"stage": "student", "final_accuracy": 0.6}
    assert metrics.write_summaries(tmp_path, [rerun]) == [teacher, rerun]
    assert json.loads((tmp_path / "summary.json").read_text()) == [teacher, rerun]
    (tmp_path / "summary.json").write_text("{not json")
    assert metrics.write_summaries(tmp_path, [rerun]) == [rerun]
