"""Faults injected into checkpoints for the recovery tests: damaged files, a disk that
fills up while a step is written, a crash between orbax's commit and the checksums."""

import errno
import time
from pathlib import Path

import orbax.checkpoint as ocp

from sastc_jax.checkpoints import integrity


def flip_byte(path: Path) -> None:
    """Invert the middle byte of a file (bit rot)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Keep the first third of a file (an interrupted copy)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def array_files(step_dir: Path) -> list[Path]:
    """The array data files of a saved step (``<item>/ocdbt.process_*/d/*``), largest first."""
    files = [
        p
        for p in step_dir.rglob("*")
        if p.is_file() and p.parent.name == "d" and p.parent.parent.name.startswith("ocdbt.")
    ]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def fill_disk_at_step(step: int) -> None:
    """Make orbax's write of checkpoint ``step`` fail with ENOSPC halfway: the JSON item
    is cut short while the arrays are being written beside it."""
    save = ocp.handlers.JsonCheckpointHandler._save_fn

    async def save_or_fill(self, item, directory):
        if directory.parent.name.split(".")[0] != str(step):
            return await save(self, item, directory)
        (directory / "metadata").write_text('{"step": ')
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))

    ocp.handlers.JsonCheckpointHandler._save_fn = save_or_fill


def delay_checksums(seconds: float) -> None:
    """Wait ``seconds`` between orbax's commit of a step and the checksums of its files
    (a window in which to kill the process)."""
    write = integrity.write_checksums

    def slow_write(step_dir):
        time.sleep(seconds)
        write(step_dir)

    integrity.write_checksums = slow_write
