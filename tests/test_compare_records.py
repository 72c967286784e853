"""What a comparison keeps of its runs: per-row seeds, the teacher's checksum, the git
commit of each finished record, and a comparison continued from a fresh clone of the
repository alone (nothing retrained, the table rebuilt without student checkpoints)."""

import csv
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_compare import finished_stand_in, load_config, tiny_config
from test_data_static import write_fashion_dir

from sastc_jax import compare, train
from sastc_jax.compare import records


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def init_repo(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    (repo / "README").write_text("repository\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "first")
    return repo


def test_rows_take_their_own_seeds_and_unknown_rows_are_refused(tmp_path):
    config = tiny_config(tmp_path)
    config.compare.seeds = (0, 1)
    config.compare.row_seeds = {"ce": (0, 1, 2, 3)}
    rows, seeds = compare.comparison_settings(config)
    assert {row.name: row.seeds for row in rows} == {"ce": (0, 1, 2, 3), "sastc": (0, 1)}
    assert seeds == [0, 1, 2, 3]
    config.compare.row_seeds = {"kd": (0,)}
    with pytest.raises(ValueError, match=r"row_seeds names \['kd'\], which are not rows"):
        compare.comparison_settings(config)
    config.compare.row_seeds = {"ce": (2, 2)}
    with pytest.raises(ValueError, match=r"config\.compare\.row_seeds\.ce = \[2, 2\]"):
        compare.comparison_settings(config)


def test_teacher_checksum_detects_a_changed_or_missing_checkpoint(tmp_path):
    teacher = tmp_path / "teacher"
    (teacher / "final" / "state").mkdir(parents=True)
    (teacher / "final" / "state" / "weights").write_bytes(b"\x00\x01\x02")
    (teacher / "final" / "metadata").write_text("{}")
    record = records.write_teacher_checksum(teacher)
    assert records.verify_teacher_checksum(teacher) == record["sha256"]
    assert len(record["sha256"]) == 64
    (teacher / "final" / "state" / "weights").write_bytes(b"\x00\x01\x03")
    with pytest.raises(ValueError, match=r"not the teacher the finished runs distilled from"):
        records.verify_teacher_checksum(teacher)
    (teacher / "final" / "state" / "weights").unlink()
    (teacher / "final" / "metadata").unlink()
    (teacher / "final" / "state").rmdir()
    (teacher / "final").rmdir()
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint .*final is missing"):
        records.verify_teacher_checksum(teacher)
    (teacher / records.TEACHER_CHECKSUM).unlink()
    assert records.verify_teacher_checksum(teacher) is None


def test_git_commit_commits_exactly_the_records(tmp_path):
    repo = init_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("results/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore results")
    run_dir = repo / "results" / "runs" / "ce_seed0"
    (run_dir / "student" / "latest").mkdir(parents=True)
    (run_dir / "student" / "latest" / "state").write_bytes(b"checkpoint")
    (run_dir / "summary.json").write_text('{"final_accuracy": 0.5}')
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (repo / "other.txt").write_text("staged, not committed by the recorder\n")
    git(repo, "add", "other.txt")

    assert records.run_record_paths(run_dir) == [
        run_dir / "summary.json",
        run_dir / "metrics.jsonl",
    ]
    assert records.git_commit(records.run_record_paths(run_dir), "compare: ce_seed0 finished")
    committed = git(repo, "show", "--name-only", "--format=%s", "HEAD").split()
    assert committed[:3] == ["compare:", "ce_seed0", "finished"]
    assert sorted(committed[3:]) == [
        "results/runs/ce_seed0/metrics.jsonl",
        "results/runs/ce_seed0/summary.json",
    ]
    assert git(repo, "diff", "--cached", "--name-only").split() == ["other.txt"]
    assert not records.git_commit(records.run_record_paths(run_dir), "unchanged")


@pytest.mark.slow
def test_a_committed_comparison_continues_from_a_fresh_clone(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_fashion_dir(tmp_path / "data", n_train=80, n_test=20)
    config = tiny_config(tmp_path / "data")
    repo = init_repo(tmp_path / "repo")
    (repo / "results").mkdir()
    (repo / "results" / ".gitignore").write_text("/*\n!/.gitignore\n")
    git(repo, "add", "results/.gitignore")
    git(repo, "commit", "-qm", "results folder")

    compare.run(config, repo / "results" / "fashion", on_record=records.git_commit)
    tracked = git(repo, "ls-files", "results/fashion").split()
    assert "results/fashion/teacher/checksum.json" in tracked
    assert any(name.startswith("results/fashion/teacher/final/") for name in tracked)
    for run in ("ce_seed0", "sastc_seed0"):
        for name in ("summary.json", "metrics.jsonl", "analysis.json", "config.json"):
            assert f"results/fashion/runs/{run}/{name}" in tracked
    assert "results/fashion/runs/sastc_seed0/diagnosis.json" in tracked
    assert "results/fashion/runs/ce_seed0/diagnosis.json" not in tracked
    assert not any("/student/" in name or "compilation_cache" in name for name in tracked)
    assert "results/fashion/results.md" in tracked
    for run in ("ce_seed0", "sastc_seed0"):
        summary = json.loads(
            (repo / "results" / "fashion" / "runs" / run / "summary.json").read_text()
        )
        assert summary["cpu_seconds"] > 0 and summary["seconds"] > 0
    assert git(repo, "status", "--porcelain") == ""

    # Another machine: a clone of the repository alone. Nothing is trained again.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    workdir = clone / "results" / "fashion"
    assert not (workdir / "runs" / "ce_seed0" / "student").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a committed finished run was trained again")

    monkeypatch.setattr(train, "train_student", no_training)
    monkeypatch.setattr(train, "train_teacher", no_training)
    runs = compare.run(config, workdir)
    assert [(r["row"], r["analysis"] is not None) for r in runs] == [
        ("ce", True),
        ("sastc", True),
    ]

    # --notrain with one more seed configured: the partial table says what is missing.
    config.compare.seeds = (0, 1)
    compare.run(config, workdir, train_runs=False)
    markdown = (workdir / "results.md").read_text()
    assert "2 run(s) have not finished yet: ce_seed1, sastc_seed1" in markdown
    teacher_sha = json.loads((workdir / "teacher" / "checksum.json").read_text())["sha256"]
    assert f"checkpoint SHA-256 `{teacher_sha}`" in markdown
    assert (workdir / "comparison.png").exists() and (workdir / "attention_sastc.png").exists()


def test_a_resumed_run_counts_every_invocation_and_notrain_shows_the_sweeps_so_far(
    tmp_path, monkeypatch
):
    """The trainer is replaced by a stand-in. The beta sweep's second run is stopped
    (SIGTERM path) in the first invocation: ``--notrain`` then writes a results.md with the
    sweep so far and every table run missing. The rerun finishes it; its summary and the
    CSV hold the time of both invocations."""
    config = tiny_config(tmp_path)
    config.compare.beta_sweep.candidates = (10.0, 100.0)
    calls = []

    def fake_teacher(cfg, workdir, mesh, logger):
        return {"model": cfg.teacher.model, "final_accuracy": 0.9, "seconds": 1.0}

    def fake_student(cfg, run_dir, mesh, logger):
        calls.append(run_dir.name)
        if run_dir.name == "sastc_beta100_seed0" and calls.count(run_dir.name) == 1:
            raise train.Preempted(143)
        return finished_stand_in(cfg, run_dir, 0.8 if cfg.method == "ce" else 0.79)

    monkeypatch.setattr(train, "train_teacher", fake_teacher)
    monkeypatch.setattr(train, "train_student", fake_student)
    workdir = tmp_path / "compare"
    with pytest.raises(train.Preempted):
        compare.run(config, workdir, analyse=False)
    stopped = workdir / "runs" / "sastc_beta100_seed0"
    ledger = [json.loads(line) for line in (stopped / "invocations.jsonl").read_text().splitlines()]
    assert [entry["outcome"] for entry in ledger] == ["stopped"]
    assert ledger[0]["wall_seconds"] >= 0 and ledger[0]["cpu_seconds"] >= 0

    assert compare.run(config, workdir, train_runs=False) == []
    pending = (workdir / "results.md").read_text()
    assert "no table run has finished yet" in pending
    assert "- beta sweep, final validation accuracy per value: 10: 79.00%, 100: not finished" in (
        pending
    )
    assert "2 run(s) have not finished yet: ce_seed0, sastc_seed0" in pending

    compare.run(config, workdir, analyse=False)
    ledger = [json.loads(line) for line in (stopped / "invocations.jsonl").read_text().splitlines()]
    assert [entry["outcome"] for entry in ledger] == ["stopped", "finished"]
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["invocations"] == 2
    assert summary["total_seconds"] == pytest.approx(sum(e["wall_seconds"] for e in ledger))
    assert summary["total_cpu_seconds"] == pytest.approx(sum(e["cpu_seconds"] for e in ledger))
    assert stopped / "invocations.jsonl" in records.run_record_paths(stopped)
    with open(workdir / "results.csv") as handle:
        table = {row["row"]: row for row in csv.DictReader(handle)}
    assert table["ce"]["invocations"] == "1"
    ce_summary = json.loads((workdir / "runs" / "ce_seed0" / "summary.json").read_text())
    assert float(table["ce"]["seconds"]) == pytest.approx(ce_summary["total_seconds"])


PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "results" / "fashion_mnist"


def test_the_published_comparison_rebuilds_from_its_committed_records(tmp_path):
    """The comparison of record, as committed: ``--notrain`` on its tracked files alone
    (no checkpoint but the teacher's, no data) writes the same table, CSV and intervals."""
    repo = PUBLISHED.parents[2]
    archive = subprocess.run(
        ["git", "archive", "HEAD", "--", str(PUBLISHED.relative_to(repo))],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="tar")
    workdir = tmp_path / PUBLISHED.relative_to(repo)
    assert (workdir / "runs" / "sastc_seed0").is_symlink()
    assert not list(workdir.glob("runs/*/student"))
    written = ("results.md", "results.csv", "paired.json", "comparison.png")
    for name in written:
        (workdir / name).unlink()
    config = load_config()
    config.dataset.data_dir = str(tmp_path / "no_data_here")

    compare.run(config, workdir, train_runs=False)
    assert all((workdir / name).exists() for name in written)
    for name in ("results.md", "results.csv", "paired.json", "choices.json"):
        committed = git(repo, "show", f"HEAD:{(PUBLISHED / name).relative_to(repo)}")
        assert (workdir / name).read_text() == committed, name
    assert "have not finished yet" not in (workdir / "results.md").read_text()
