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
        self.path = Path(workdir) / "metrics.jsonl"
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
