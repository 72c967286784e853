"""Run output: a metrics JSONL in the workdir, TensorBoard scalars, progress bars and
summaries.

Only process 0 writes or prints; other processes get silent stand-ins so the
training loop needs no ``if process_index == 0`` of its own.

TensorBoard: every train / validation / test record of ``metrics.jsonl`` is also written
as scalars ``<stage>/<split>/<name>`` (``accuracy_per_t`` as ``accuracy_t1``, ...) to
``workdir/tensorboard/`` through tensorboardX (a dependency of the package), whose writer
thread does the file I/O: the loop only hands it host values it already has.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import tqdm


class _SilentProgress:
    """Stand-in for a tqdm bar on processes that do not print."""

    def update(self, n: int = 1) -> None:
        del n

    def set_postfix(self, *args, **kwargs) -> None:
        del args, kwargs

    def close(self) -> None:
        pass


TENSORBOARD_DIR = "tensorboard"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# The records of a stage's steps: a resume drops those after the step it restored.
STEP_SPLITS = ("train", "validation", "test")
SCALAR_SPLITS = ("train", "validation", "test")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of a metrics record: ``{'<stage>/<split>/<name>': value}``
    for its numbers (``step`` and ``epoch`` are the x axis, not scalars)."""
    prefix = f"{record.get('stage', '')}/{record['split']}"
    found = {}
    for name, value in record.items():
        if name in ("stage", "split", "step", "epoch", "count"):
            continue
        if isinstance(value, list):
            for t, entry in enumerate(value, start=1):
                found[f"{prefix}/{name.removesuffix('_per_t')}_t{t}"] = float(entry)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[f"{prefix}/{name}"] = float(value)
    return found


def tensorboard_writer(directory: Path):
    """A tensorboardX ``SummaryWriter`` on ``directory``; None when tensorboardX is absent."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    # The writer's thread flushes every flush_secs; close() flushes the rest.
    return SummaryWriter(logdir=str(directory), flush_secs=30)


class MetricsLogger:
    """Appends one JSON object per line to ``workdir/metrics.jsonl`` and prints.

    ``tensorboard=True`` also writes the train / validation / test records as scalars to
    ``workdir/tensorboard/`` (one info line, and no event files, when tensorboardX is not
    installed). ``enabled=False`` (processes other than 0) makes every method a no-op.
    Call :meth:`close` at the end of the run.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        enabled: bool = True,
        progress_bars: bool = True,
        tensorboard: bool = False,
    ):
        self.enabled = enabled
        self.progress_bars = progress_bars and enabled
        self.path = Path(workdir) / METRICS
        self.tensorboard = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self.tensorboard = tensorboard_writer(self.path.parent / TENSORBOARD_DIR)
                if self.tensorboard is None:
                    self.info(
                        "tensorboardX is not installed: no TensorBoard event files "
                        "(pip install tensorboardX; config.tensorboard=False hides "
                        "this line)"
                    )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, default=float) + "\n")
        if self.tensorboard is not None and record.get("split") in SCALAR_SPLITS:
            for tag, value in scalars(record).items():
                self.tensorboard.add_scalar(tag, value, global_step=record["step"])
        if record.get("split") in ("test", "summary"):
            self.info(format_record(record))

    def drop_after(self, stage: str, step: int) -> int:
        """Remove from the file the step records (:data:`STEP_SPLITS`) of ``stage`` after
        ``step``: a run resumed from ``step`` logs them again. The file is rewritten
        whole and renamed over the old one. Returns how many were removed."""
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not _replayed(line, stage, step)]
        if len(kept) == len(lines):
            return 0
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, self.path)
        return len(lines) - len(kept)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (metrics.jsonl is closed per write)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def progress(self, *, total: int, initial: int, desc: str):
        if not self.progress_bars:
            return _SilentProgress()
        return tqdm.tqdm(
            total=total,
            initial=initial,
            desc=desc,
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
        )


def format_rate(images_per_second: float) -> str:
    """A throughput for the progress bar: whole numbers from 100 up, else 3 significant
    digits (``0.512``, ``12.3``), so a slow run never shows 0."""
    if images_per_second >= 100:
        return f"{images_per_second:.0f}"
    return f"{images_per_second:.3g}"


def format_record(record: dict[str, Any]) -> str:
    """One line: ``[stage] split step=… accuracy=…``."""
    fields = []
    for name, value in record.items():
        if name in ("stage", "split"):
            continue
        if isinstance(value, float):
            fields.append(f"{name}={value:.4f}")
        elif isinstance(value, list):
            fields.append(f"{name}=[{', '.join(f'{v:.4f}' for v in value)}]")
        elif isinstance(value, dict):
            continue
        else:
            fields.append(f"{name}={value}")
    return f"[{record.get('stage', '')}] {record.get('split', '')}: " + " ".join(fields)


def _replayed(line: str, stage: str, step: int) -> bool:
    """Whether a metrics line is a step record of ``stage`` after ``step``."""
    try:
        record = json.loads(line)
    except ValueError:
        return not line.endswith("\n")  # the last line cut short by a kill
    return (
        record.get("stage") == stage
        and record.get("split") in STEP_SPLITS
        and isinstance(record.get("step"), int)
        and record["step"] > step
    )


def _record_key(record: dict[str, Any]) -> tuple | None:
    """What makes a record unique: its stage, split, step (and evaluated model); None for
    a record without a step (kept as it is)."""
    if record.get("step") is None:
        return None
    return (record.get("stage"), record.get("split"), record["step"], record.get("evaluated"))


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (stage, split, step): a later record supersedes an earlier one of
    the same key (a step replayed after a resume, a stage summarised again), in the
    position of the later one. Records without a step are kept as they are."""
    last = {}
    for index, record in enumerate(records):
        if (key := _record_key(record)) is not None:
            last[key] = index
    return [
        record
        for index, record in enumerate(records)
        if (key := _record_key(record)) is None or last[key] == index
    ]


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl`` in order, each (stage, split, step) once
    (:func:`dedupe`); a last line cut short by a kill is skipped."""
    path = Path(workdir) / METRICS
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                continue
            raise ValueError(
                f"{path}, line {number}, is not a JSON record: {line.strip()[:80]!r}. "
                "Remove or repair that line."
            ) from None
    return dedupe(records)


def merge_summaries(
    existing: list[dict[str, Any]], new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stage summaries of ``existing`` with those of ``new`` replacing the ones of the
    same stage (a stage keeps its place; new stages are appended)."""
    replacing = {summary["stage"]: summary for summary in new}
    merged = [replacing.pop(summary["stage"], summary) for summary in existing]
    return merged + [summary for summary in new if summary["stage"] in replacing]


def write_summaries(workdir: str | Path, summaries: list[dict[str, Any]]) -> list[dict]:
    """Merge ``summaries`` into ``workdir/summary.json`` (:func:`merge_summaries`), so it
    keeps every stage that ever finished; returns what was written. An unreadable file is
    replaced, with a line saying so."""
    path = Path(workdir) / SUMMARY
    existing = []
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
            if not isinstance(existing, list) or not all(
                isinstance(item, dict) and "stage" in item for item in existing
            ):
                raise ValueError("not a list of stage summaries")
        except ValueError as error:
            print(f"{path} is unreadable ({error}): rewritten from this run", file=sys.stderr)
            existing = []
    merged = merge_summaries(existing, summaries)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(merged, indent=2))
    os.replace(temporary, path)
    return merged


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of stage summaries: what, accuracy, best, time."""
    header = f"{'stage':<10} {'model':<18} {'method':<10} {'test acc':>9} {'best':>7} {'time':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.get('stage', ''):<10} {row.get('model', ''):<18} "
            f"{row.get('method', '-'):<10} {100 * row['final_accuracy']:>8.2f}% "
            f"{100 * row['best_accuracy']:>6.2f}% {row['seconds']:>8.1f}s"
        )
    return "\n".join(lines)
