"""What a comparison keeps of its runs once they finish: the small files that make its
results (no student checkpoints), the shared teacher with its checksum, and an optional
git commit of each record as soon as it exists, so a comparison stopped on one machine
continues on another from the repository alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# The files of a finished run that the results are built from (analysis and diagnosis
# need the student checkpoint, so they are written before the record is kept).
RUN_RECORD_FILES = (
    "config.json",
    "summary.json",
    "diverged.json",
    "metrics.jsonl",
    "invocations.jsonl",
    "analysis.json",
    "analysis.md",
    "diagnosis.json",
    "diagnosis.md",
    "attention.png",
)
TEACHER_RECORD_FILES = ("config.json", "summary.json", "metrics.jsonl", "checksum.json")
TEACHER_CHECKSUM = "checksum.json"
COMPARISON_FILES = (
    "config.json",
    "choices.json",
    "results.md",
    "results.csv",
    "paired.json",
    "comparison.png",
    "validation_curves.png",
)

# Called with (paths, message) once a record is complete on disk.
RecordHook = Callable[[Sequence[Path], str], None]


def run_record_paths(run_dir: Path) -> list[Path]:
    """The record files of ``run_dir`` that exist; a run linked to its twin (a symlink) is
    recorded as the link itself."""
    if run_dir.is_symlink():
        return [run_dir]
    return [run_dir / name for name in RUN_RECORD_FILES if (run_dir / name).is_file()]


def checkpoint_digest(directory: Path) -> str:
    """SHA-256 over every file of ``directory`` (relative path and content, sorted)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint directory {directory}.")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_teacher_checksum(teacher_dir: Path) -> dict[str, str]:
    """Record the digest of ``teacher_dir/final`` in ``teacher_dir/checksum.json``."""
    record = {"checkpoint": "final", "sha256": checkpoint_digest(teacher_dir / "final")}
    (teacher_dir / TEACHER_CHECKSUM).write_text(json.dumps(record, indent=2) + "\n")
    return record


def verify_teacher_checksum(teacher_dir: Path) -> str | None:
    """The recorded digest of the teacher, after checking that its files still match it;
    ``None`` for a teacher trained before checksums were recorded."""
    path = teacher_dir / TEACHER_CHECKSUM
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    final = teacher_dir / recorded.get("checkpoint", "final")
    if not final.is_dir():
        raise FileNotFoundError(
            f"The comparison's teacher checkpoint {final} is missing, but {path} records it: "
            "every row distils from that teacher. Restore it (it is committed with the "
            "results) or delete the teacher directory to train a new one, and every run with it."
        )
    actual = checkpoint_digest(final)
    if actual != recorded["sha256"]:
        raise ValueError(
            f"The teacher checkpoint {final} has SHA-256 {actual}, but {path} records "
            f"{recorded['sha256']}: it is not the teacher the finished runs distilled from."
        )
    return actual


def teacher_record_paths(teacher_dir: Path) -> list[Path]:
    """The teacher's record files and its final checkpoint (every file under it)."""
    paths = [teacher_dir / name for name in TEACHER_RECORD_FILES if (teacher_dir / name).is_file()]
    final = teacher_dir / "final"
    if final.is_dir():
        paths += sorted(p for p in final.rglob("*") if p.is_file())
    return paths


def comparison_record_paths(workdir: Path) -> list[Path]:
    """The comparison's own files that exist (config, choices, results, plots)."""
    paths = [workdir / name for name in COMPARISON_FILES if (workdir / name).is_file()]
    return paths + sorted(workdir.glob("attention_*.png"))


def git_commit(paths: Iterable[Path], message: str, *, attempts: int = 10) -> bool:
    """Commit exactly ``paths`` (added with ``-f``: the results folder ignores everything
    else) to the repository that holds them; other staged changes stay staged.

    Returns ``False`` when nothing changed. A busy index (another git command) is retried.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return False
    root = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=paths[0].parent,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    names = [str(p.absolute().relative_to(root.absolute())) for p in paths]
    for attempt in range(attempts):
        added = subprocess.run(["git", "add", "-f", "--", *names], cwd=root, capture_output=True)
        if added.returncode == 0:
            staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *names], cwd=root)
            if staged.returncode == 0:
                return False
            committed = subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", *names],
                cwd=root,
                capture_output=True,
                text=True,
            )
            if committed.returncode == 0:
                return True
            error = committed.stderr
        else:
            error = added.stderr.decode()
        if "index.lock" not in error or attempt == attempts - 1:
            raise RuntimeError(f"git could not commit {names[:3]}...: {error.strip()}")
        time.sleep(2.0)
    return False
