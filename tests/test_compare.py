"""The comparison command end to end on tiny Fashion-MNIST-shaped files: a stop (SIGTERM
path) and the rerun that resumes it; the rows as variants with the validation sweeps, the
doubling check and the paired differences; the settings' checks and the t-interval."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from test_data_static import write_fashion_dir

from sastc_jax import compare, configuration, parallel, train

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
    config.student.optimizer.epochs = 1
    config.teacher.optimizer.batch_size = 8
    config.student.optimizer.batch_size = 8
    config.max_steps_per_epoch = 3
    config.checkpoint_every_steps = 100
    config.log_every_steps = 1
    config.compare.rows = ("ce", "sastc")
    config.compare.seeds = (0,)
    config.compare.row_seeds = {}
    config.compare.paired = (("sastc", "ce"),)
    config.compare.learning_rate_sweep.candidates = ()
    config.compare.beta_sweep.candidates = ()
    config.compare.doubling.rows = ()
    config.compare.teacher_max_steps_per_epoch = 3
    return config


def logged_train_steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("split") == "train"]


def finished_stand_in(cfg, run_dir: Path, accuracy: float) -> dict:
    """What a stand-in for ``train.train_student`` leaves: one validation record at
    ``accuracy`` in ``metrics.jsonl``, and the summary it returns."""
    record = {"split": "validation", "epoch": 1, "step": 3, "accuracy": accuracy}
    (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return {
        "final_accuracy": accuracy,
        "best_accuracy": accuracy,
        "best_validation_accuracy": accuracy,
        "accuracy_per_t": [accuracy] * cfg.time_steps,
        "seconds": 2.0,
        "images_per_second": 10.0,
    }


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
    assert "| ce | ce | 1 |" in markdown and "| sastc | sastc | 1 |" in markdown
    assert "Teacher" in markdown and "| sastc - ce | 0 |" in markdown
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
    config.compare.rows = ("ce", "distill-everything")
    with pytest.raises(ValueError, match=r"row 'distill-everything' has method"):
        compare.comparison_settings(config)
    config.compare.rows = ("ce", "ce")
    with pytest.raises(ValueError, match=r"config\.compare\.rows .* distinct"):
        compare.comparison_settings(config)
    config.compare.rows = ("ce", "sastc")
    config.compare.seeds = (1, 1)
    with pytest.raises(ValueError, match=r"config\.compare\.seeds"):
        compare.comparison_settings(config)
    config.compare.seeds = (0,)
    config.compare.paired = (("kd", "ce"),)
    with pytest.raises(ValueError, match=r"config\.compare\.paired has \('kd', 'ce'\)"):
        compare.comparison_settings(config)
    config.compare.paired = ()
    config.compare.beta_sweep.row = "ce"
    config.compare.beta_sweep.candidates = (10.0, 100.0)
    with pytest.raises(ValueError, match=r"beta_sweep\.row = 'ce' has no calibration term"):
        compare.comparison_settings(config)
    config.compare.beta_sweep.row = "sastc"
    config.dataset.validation_fraction = 0.0
    with pytest.raises(ValueError, match=r"chooses on the validation split"):
        compare.comparison_settings(config)


def test_variant_overrides_apply_after_the_choices_and_unknown_fields_fail(tmp_path):
    config = tiny_config(tmp_path)
    rows = {row.name: row for row in compare.comparison_rows(load_config())}
    choices = {"learning_rate": 0.03, "beta": 10.0}
    released = compare.student_config(config, tmp_path, rows["sastc_released"], 1, choices)
    assert released.student.optimizer.learning_rate == 0.01 and released.loss.beta == 800.0
    assert (released.method, released.seed) == ("sastc", 1)
    per_step = compare.student_config(config, tmp_path, rows["kd_per_step"], 1, choices)
    assert per_step.loss.kd_target == "per_step" and per_step.method == "kd"
    assert per_step.student.optimizer.learning_rate == 0.03 and per_step.loss.beta == 100.0
    scaled = compare.student_config(config, tmp_path, rows["sastc_scaled"], 1, choices, 2)
    assert scaled.loss.learn_attention_scale and scaled.loss.beta == 10.0
    assert scaled.student.optimizer.epochs == 2 * config.student.optimizer.epochs
    typo = compare.Row("typo", "kd", {"loss": {"kd_targets": "per_step"}})
    with pytest.raises(ValueError, match=r"config\.kd_targets is not a field"):
        compare.student_config(config, tmp_path, typo, 0)


def test_teacher_overrides_change_only_the_teacher(tmp_path):
    config = tiny_config(tmp_path)
    config.dataset.augment = False
    config.compare.teacher_overrides = {"dataset": {"augment": True}}
    teacher = compare.teacher_config(config, tmp_path)
    assert teacher.dataset.augment is True and teacher.stage == "teacher"
    assert teacher.max_steps_per_epoch == config.compare.teacher_max_steps_per_epoch
    assert teacher.teacher.checkpoint == str(tmp_path / "teacher" / "final")
    student = compare.student_config(config, tmp_path, "ce", 0)
    assert student.dataset.augment is False
    config.compare.teacher_overrides = {"dataset": {"augmentation": True}}
    with pytest.raises(ValueError, match=r"teacher_overrides: config\.augmentation is not"):
        compare.teacher_config(config, tmp_path)


def test_t_quantile_matches_the_t_table():
    # Two-sided 95% critical values of Student's t (any statistics table).
    for df, value in ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert compare.t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)
    assert compare.t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)


def test_paired_differences_by_hand():
    rows = [
        {"row": "a", "seed": 0, "final_test_accuracy": 0.90},
        {"row": "a", "seed": 1, "final_test_accuracy": 0.92},
        {"row": "a", "seed": 2, "final_test_accuracy": 0.91},
        {"row": "b", "seed": 0, "final_test_accuracy": 0.89},
        {"row": "b", "seed": 1, "final_test_accuracy": 0.90},
        {"row": "b", "seed": 2, "final_test_accuracy": 0.91},
    ]
    (entry,) = compare.paired_differences(rows, [("a", "b")])
    # differences 0.01, 0.02, 0.00: mean 0.01, sd 0.01, half-width 4.303 * 0.01 / sqrt(3).
    np.testing.assert_allclose(entry["differences"], [0.01, 0.02, 0.0], atol=1e-12)
    assert entry["mean"] == pytest.approx(0.01)
    half = 4.303 * 0.01 / math.sqrt(3)
    assert entry["interval"] == pytest.approx((0.01 - half, 0.01 + half), abs=1e-5)


def load_config():
    spec = importlib.util.spec_from_file_location("fashion_mnist_compare", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def flat(config):
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            out[prefix[:-1]] = value

    walk("", config)
    return out


@pytest.mark.slow  # about 6 minutes on 2 shared cores (14 short runs)
def test_compare_rows_sweeps_doubling_and_paired_differences(tmp_path):
    """One plain row (ce) and one calibrated variant (sastc_scaled: learned attention
    scale), two seeds; a learning-rate sweep on ce and a beta sweep on sastc_scaled (seed
    0, chosen on validation), the doubling check on both rows, the paired table."""
    (tmp_path / "data").mkdir()
    write_fashion_dir(tmp_path / "data", n_train=80, n_test=20)
    config = tiny_config(tmp_path / "data")
    config.compare.rows = ("ce", "sastc_scaled")
    config.compare.seeds = (0, 1)
    config.compare.paired = (("sastc_scaled", "ce"),)
    config.compare.learning_rate_sweep = dict(row="ce", seed=0, candidates=(0.05, 0.1))
    config.compare.beta_sweep = dict(row="sastc_scaled", seed=0, candidates=(10.0, 100.0))
    config.compare.doubling = dict(rows=("ce", "sastc_scaled"), seed=0, factor=2, tolerance=1.0)
    workdir = tmp_path / "compare"
    runs = compare.run(config, workdir)
    runs_dir = workdir / "runs"

    # The choices read the final validation accuracy of the sweep runs, nothing else.
    choices = json.loads((workdir / "choices.json").read_text())
    for kind, tag, row in (("learning_rate", "lr", "ce"), ("beta", "beta", "sastc_scaled")):
        values = list(config.compare[f"{kind}_sweep"].candidates)
        accuracy = {
            v: compare.validation_curve(runs_dir / f"{row}_{tag}{v:g}_seed0")[-1][1] for v in values
        }
        best = max(values, key=lambda v: (accuracy[v], -values.index(v)))
        assert choices[kind] == best
        # The table's seed-0 run is the sweep's chosen run, linked, not trained twice.
        table_run = runs_dir / f"{row}_seed0"
        assert table_run.is_symlink() and table_run.resolve().name == f"{row}_{tag}{best:g}_seed0"
    seed1 = {
        name: json.loads((runs_dir / f"{name}_seed1" / "config.json").read_text())
        for name in ("ce", "sastc_scaled")
    }
    assert seed1["ce"]["student"]["optimizer"]["learning_rate"] == choices["learning_rate"]
    assert seed1["sastc_scaled"]["loss"]["beta"] == choices["beta"]
    assert seed1["sastc_scaled"]["loss"]["learn_attention_scale"] is True
    # Same seed, different rows: only the method and its loss settings differ.
    ce_flat, scaled_flat = flat(seed1["ce"]), flat(seed1["sastc_scaled"])
    differing = {key for key in ce_flat if ce_flat[key] != scaled_flat.get(key)}
    assert differing <= {"method", "loss.beta", "loss.learn_attention_scale"}
    # ... and the same student initialisation and data order.
    mesh = parallel.make_mesh()
    rows_config = {row.name: row for row in compare.comparison_rows(config)}
    chosen = {kind: choices[kind] for kind in ("learning_rate", "beta")}
    stages = {}
    for name, seed in (("ce", 1), ("sastc_scaled", 1), ("ce", 0)):
        cfg = compare.student_config(config, workdir, rows_config[name], seed, chosen)
        assert (
            cfg.to_json_best_effort(indent=2)
            == (runs_dir / f"{name}_seed{seed}" / "config.json").read_text()
        )
        stages[name, seed] = train.distill_stage(cfg, mesh, workdir)
    for got, want in zip(
        jax.tree.leaves(stages["ce", 1].state.params["student"]),
        jax.tree.leaves(stages["sastc_scaled", 1].state.params["student"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(stages["ce", 1].state.params["student"]),
            jax.tree.leaves(stages["ce", 0].state.params["student"]),
            strict=True,
        )
    )
    first = [next(iter(stages[key].train_data.epoch(1))) for key in stages]
    np.testing.assert_array_equal(first[0]["image"], first[1]["image"])
    assert not np.array_equal(first[0]["image"], first[2]["image"])

    # The table: two rows x two seeds; the paired differences from its own numbers.
    with open(workdir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["row"], r["method"], r["seed"]) for r in rows] == [
        ("ce", "ce", "0"),
        ("sastc_scaled", "sastc", "0"),
        ("ce", "ce", "1"),
        ("sastc_scaled", "sastc", "1"),
    ]
    accuracy = {(r["row"], r["seed"]): float(r["final_test_accuracy"]) for r in rows}
    diffs = [accuracy["sastc_scaled", s] - accuracy["ce", s] for s in ("0", "1")]
    (paired,) = json.loads((workdir / "paired.json").read_text())
    np.testing.assert_allclose(paired["differences"], diffs, atol=1e-12)
    half = 12.706 * np.std(diffs, ddof=1) / math.sqrt(2)
    np.testing.assert_allclose(
        paired["interval"], [np.mean(diffs) - half, np.mean(diffs) + half], atol=1e-4
    )
    markdown = (workdir / "results.md").read_text()
    assert "| sastc_scaled | sastc | 2 |" in markdown and "| ce | ce | 2 |" in markdown
    assert "| sastc_scaled - ce | 0, 1 |" in markdown
    assert "learning_rate sweep (ce, seed 0)" in markdown and "beta sweep (sastc_scaled" in markdown
    assert markdown.count("doubling check") == 2
    # The doubling runs trained twice the steps (3 per epoch, 1 epoch -> 2).
    for name in ("ce", "sastc_scaled"):
        assert json.loads((runs_dir / f"{name}_x2_seed0" / "summary.json").read_text())["step"] == 6
    assert [r["summary"]["step"] for r in runs] == [3, 3, 3, 3]
    for png in ("comparison.png", "validation_curves.png", "attention_sastc_scaled.png"):
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["fashion_mnist_compare", "fashion_mnist_compare_gpu"])
def test_compare_configs_load_and_every_row_validates(name, tmp_path):
    path = CONFIG.with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    rows, seeds = compare.comparison_settings(config)
    assert {row.name: len(row.seeds) for row in rows} == {
        "ce": 5,
        "kd": 5,
        "kd_per_step": 5,
        "tdkd": 5,
        "layerwise": 3,
        "spatial": 3,
        "sastc": 3,
        "sastc_scaled": 3,
        "sastc_tdkd": 3,
        "sastc_released": 1,
    }
    assert [row.name for row in rows][-1] == "sastc_released"
    assert len(seeds) >= 3 and config.dataset.validation_fraction > 0
    betas = config.compare.beta_sweep.candidates
    assert len(betas) >= 3 and min(betas) >= 10 and max(betas) <= 800
    assert tuple(config.compare.doubling.rows) == ("ce", "sastc")
    teacher_widths = tuple(config.teacher.model_kwargs.widths)
    assert teacher_widths > tuple(config.student.model_kwargs.widths)
    for row in rows:
        cfg = compare.student_config(config, tmp_path, row, seeds[0], {"learning_rate": 0.05})
        configuration.validate(cfg, device_count=1)
        assert cfg.student.optimizer.epochs == config.student.optimizer.epochs
    released = compare.student_config(config, tmp_path, rows[-1], 0, {"learning_rate": 0.05})
    optim = released.student.optimizer
    assert (optim.learning_rate, optim.momentum, optim.weight_decay, released.loss.beta) == (
        0.01,
        0.9,
        5e-4,
        800.0,
    )
    assert optim.decay_epochs[-1] < optim.epochs


def test_table_without_finished_sweeps_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    config.compare.learning_rate_sweep.candidates = (0.05, 0.1)
    with pytest.raises(ValueError, match=r"run the phase 'sweeps' first"):
        compare.run(config, tmp_path / "compare", phases=("table",))
    assert not (tmp_path / "compare" / "teacher").exists()  # refused before any training
    with pytest.raises(ValueError, match=r"Unknown phases \['tables'\]"):
        compare.run(config, tmp_path / "compare", phases=("tables",))


def test_a_diverged_run_is_reported_and_the_comparison_goes_on(tmp_path, monkeypatch):
    """The trainer is replaced by a stand-in: beta 800 diverges, every other run "finishes"
    with a validation accuracy that falls with beta. The beta sweep never chooses the
    diverged value, the diverged table row is listed in results.md, the others tabulate,
    and a rerun skips the diverged run instead of training it again."""
    config = tiny_config(tmp_path)
    config.compare.rows = ("ce", "sastc", "sastc_released")
    config.compare.beta_sweep.candidates = (10.0, 100.0, 800.0)
    config.compare.paired = (("sastc", "ce"),)
    trained = []

    def fake_teacher(cfg, workdir, mesh, logger):
        return {"model": cfg.teacher.model, "final_accuracy": 0.9, "seconds": 1.0}

    def fake_student(cfg, run_dir, mesh, logger):
        trained.append(run_dir.name)
        if cfg.method != "ce" and cfg.loss.beta == 800.0:
            raise train.NonFiniteLossError("non-finite loss at step 7: calibration=nan")
        return finished_stand_in(
            cfg, run_dir, 0.8 - (cfg.loss.beta / 1e4 if cfg.method != "ce" else 0.0)
        )

    monkeypatch.setattr(train, "train_teacher", fake_teacher)
    monkeypatch.setattr(train, "train_student", fake_student)
    workdir = tmp_path / "compare"
    runs = compare.run(config, workdir, analyse=False)

    choices = json.loads((workdir / "choices.json").read_text())
    assert choices["beta"] == 10.0
    assert choices["sweeps"]["beta"]["diverged"] == ["800"]
    assert set(choices["sweeps"]["beta"]["validation_accuracy"]) == {"10", "100"}
    assert [run["row"] for run in runs] == ["ce", "sastc"]
    record = json.loads((workdir / "runs" / "sastc_released_seed0" / "diverged.json").read_text())
    assert record == {"diverged": True, "error": "non-finite loss at step 7: calibration=nan"}
    results = (workdir / "results.md").read_text()
    assert "## Runs that diverged (left out of the table)" in results
    assert "- sastc_released, seed 0: non-finite loss at step 7" in results
    assert "the value(s) 800 diverged" in results

    trained.clear()
    assert [run["row"] for run in compare.run(config, workdir, analyse=False)] == ["ce", "sastc"]
    assert trained == []  # finished and diverged runs are both skipped on a rerun


def test_the_small_beta_config_continues_the_comparisons_sweep_and_changes_nothing_else(
    tmp_path,
):
    def load(name):
        spec = importlib.util.spec_from_file_location(name, CONFIG.with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()

    comparison, small = load("fashion_mnist_compare"), load("fashion_mnist_compare_small_beta")
    assert max(small.compare.beta_sweep.candidates) < min(comparison.compare.beta_sweep.candidates)
    assert not small.compare.learning_rate_sweep.candidates and not small.compare.doubling.rows
    rows = {row.name: row for row in compare.comparison_settings(small)[0]}
    for beta in small.compare.beta_sweep.candidates:
        chosen = {"learning_rate": small.student.optimizer.learning_rate, "beta": beta}
        ours = compare.student_config(small, tmp_path, rows["sastc"], 0, {"beta": beta})
        theirs = compare.student_config(comparison, tmp_path, rows["sastc"], 0, chosen)
        assert ours.to_json_best_effort() == theirs.to_json_best_effort()


def test_a_doubling_run_is_dashed_in_its_rows_colour_and_every_row_has_its_own():
    from matplotlib.colors import to_hex

    from sastc_jax.compare.report import validation_curves_figure

    rows = [f"row{index}" for index in range(11)]  # more rows than one 10-colour cycle
    curves = {name: [(1, 0.5), (2, 0.6)] for name in [*rows, "row7_x2_seed0"]}
    figure = validation_curves_figure(curves, {"row7_x2_seed0": "row7"})
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert len({to_hex(lines[name].get_color()) for name in rows}) == len(rows)
    assert to_hex(lines["row7_x2_seed0"].get_color()) == to_hex(lines["row7"].get_color())
    assert lines["row7_x2_seed0"].get_linestyle() == "--"
    assert lines["row7"].get_linestyle() == "-"
