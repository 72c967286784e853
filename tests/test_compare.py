"""The comparison command end to end on tiny Fashion-MNIST-shaped files: two methods, one
seed, three steps per stage; a stop (SIGTERM path) and the rerun that resumes it."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from test_data_static import write_fashion_dir

from sastc_jax import compare, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_compare.py"


def tiny_config(data_dir):
    spec = importlib.util.spec_from_file_location("fashion_mnist_compare", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.dataset.data_dir = str(data_dir)
    config.teacher.model_kwargs.widths = (4, 8, 8)
    config.student.model_kwargs.widths = (4, 8, 8)
    config.teacher.optimizer.epochs = 1
    config.teacher.optimizer.batch_size = 8
    config.student.optimizer.batch_size = 8
    config.max_steps_per_epoch = 3
    config.checkpoint_every_steps = 100
    config.log_every_steps = 1
    config.compare.methods = ("ce", "sastc")
    config.compare.seeds = (0,)
    config.compare.teacher_max_steps_per_epoch = 3
    return config


def logged_train_steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("split") == "train"]


@pytest.mark.slow
def test_compare_trains_resumes_skips_and_tabulates(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_fashion_dir(tmp_path / "data", n_train=80, n_test=20)
    config = tiny_config(tmp_path / "data")
    workdir = tmp_path / "compare"

    # First invocation: the first student run (ce, seed 0) is stopped after step 2
    # (the teacher, trained before it, is not).
    teacher_done = workdir / "teacher" / "summary.json"
    monkeypatch.setattr(
        train.SigtermFlag, "stop_at", lambda self, step: step == 2 and teacher_done.exists()
    )
    with pytest.raises(train.Preempted):
        compare.run(config, workdir)
    monkeypatch.undo()
    ce_dir, sastc_dir = workdir / "runs" / "ce_seed0", workdir / "runs" / "sastc_seed0"
    assert (workdir / "teacher" / "summary.json").exists()
    assert not (ce_dir / "summary.json").exists() and not sastc_dir.exists()
    teacher_written = (workdir / "teacher" / "summary.json").stat().st_mtime_ns

    # Rerun: the teacher is kept, ce resumes at step 3 (not from scratch), sastc trains.
    runs = compare.run(config, workdir)
    assert (workdir / "teacher" / "summary.json").stat().st_mtime_ns == teacher_written
    assert logged_train_steps(ce_dir) == [1, 2, 3]
    assert [(r["method"], r["summary"]["step"]) for r in runs] == [("ce", 3), ("sastc", 3)]

    with open(workdir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["seed"]) for row in rows] == [("ce", "0"), ("sastc", "0")]
    for row, run in zip(rows, runs, strict=True):
        summary = run["summary"]
        assert float(row["final_test_accuracy"]) == summary["final_accuracy"]
        assert float(row["best_validation_test_accuracy"]) == summary["best_accuracy"]
        assert 0.0 <= float(row["best_validation_accuracy"]) <= 1.0
        assert float(row["test_accuracy_t2"]) == summary["final_accuracy"]
        assert float(row["seconds"]) > 0 and float(row["images_per_second"]) > 0
        assert 0.0 <= float(row["firing_rate"]) <= 1.0 and float(row["energy_ratio"]) > 0
    markdown = (workdir / "results.md").read_text()
    assert "| ce | 1 |" in markdown and "| sastc | 1 |" in markdown and "Teacher" in markdown
    assert (workdir / "comparison.png").stat().st_size > 0
    analysis = json.loads((sastc_dir / "analysis.json").read_text())
    assert analysis["attention"] and (sastc_dir / "attention.png").exists()
    assert json.loads((ce_dir / "analysis.json").read_text())["attention"] is None

    # Third invocation: everything finished is skipped (no run directory is touched).
    written = {p: p.stat().st_mtime_ns for p in (ce_dir, sastc_dir) for p in p.glob("*.json")}
    compare.run(config, workdir)
    assert {p: p.stat().st_mtime_ns for p in written} == written

    # Tabulating only (--notrain) covers the finished runs and trains nothing.
    (workdir / "results.csv").unlink()
    tabulated = compare.run(config, workdir, train_runs=False)
    assert [r["method"] for r in tabulated] == ["ce", "sastc"]
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert (workdir / "results.csv").exists()


def test_compare_settings_are_checked(tmp_path):
    config = tiny_config(tmp_path)
    config.compare.methods = ("ce", "distill-everything")
    with pytest.raises(ValueError, match=r"config\.compare\.methods"):
        compare.comparison_settings(config)
    config.compare.methods = ("ce",)
    config.compare.seeds = (1, 1)
    with pytest.raises(ValueError, match=r"config\.compare\.seeds"):
        compare.comparison_settings(config)
