"""Run output: a metrics JSONL in the workdir, progress bars and summaries.

Only process 0 writes or prints; other processes get silent stand-ins so the
training loop needs no ``if process_index == 0`` of its own.
"""

from __future__ import annotations

import json
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


class MetricsLogger:
    """Appends one JSON object per line to ``workdir/metrics.jsonl`` and prints.

    ``enabled=False`` (processes other than 0) makes every method a no-op.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, progress_bars: bool = True):
        self.enabled = enabled
        self.progress_bars = progress_bars and enabled
        self.path = Path(workdir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, default=float) + "\n")
        if record.get("split") in ("test", "summary"):
            self.info(format_record(record))

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


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of ``workdir/metrics.jsonl`` in order."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
