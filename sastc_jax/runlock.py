"""One run per workdir: an exclusive lock that process 0 holds for the life of the run.

The lock is ``fcntl.flock`` on ``WORKDIR/.lock``, kept open until the run ends; the file
also holds a JSON record of the holder (host, pid, start time, command). A second run on
the same workdir fails to take the flock and stops before touching anything, naming the
holder. The kernel releases a flock when its process dies (kill -9 included), so a killed
run never blocks the next one: that run takes the lock, finds the dead run's record still
in the file (a clean exit empties it) and warns that it takes over a stale lock.

flock is advisory and local to one machine's kernel; on a network filesystem without
flock support two hosts could both take it. The record then still names the other host.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir's lock."""


def describe(record: dict[str, Any]) -> str:
    """``host H, pid P, started S, command: C`` of a holder record (missing fields as '?')."""
    return (
        f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
        f"started {record.get('started', '?')}, command: {record.get('command', '?')}"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_record(fd: int) -> dict[str, Any] | None:
    """The JSON record in the lock file; None if empty; ``{}`` if unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def stale_warning(record: dict[str, Any], host: str) -> str:
    """The warning for taking over a lock file whose recorded holder holds no flock."""
    holder = describe(record)
    if record.get("host") == host and isinstance(record.get("pid"), int):
        if not pid_alive(record["pid"]):
            reason = "that process is dead (killed?)"
        else:
            reason = "that pid is alive but holds no lock (a reused pid)"
    elif record.get("host") != host:
        reason = "it was recorded on another host and holds no lock here"
    else:
        reason = "it holds no lock"
    return (
        f"warning: taking over a stale workdir lock left by {holder}: {reason}. "
        "Its checkpoints are verified before any is resumed."
    )


class RunLock:
    """``with RunLock(workdir) as lock:`` holds ``workdir/.lock`` exclusively.

    ``enabled=False`` (processes other than 0) makes it a no-op. Raises
    :class:`WorkdirLockedError` naming the holder when another live run holds the lock;
    ``lock.warning`` is the stale-lock warning (or None) after entering.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, command: str | None = None):
        self.path = Path(workdir) / LOCK_NAME
        self.enabled = enabled
        self.command = command if command is not None else shlex.join(sys.orig_argv)
        self.warning: str | None = None
        self._fd: int | None = None

    def acquire(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = None
            for _ in range(20):  # the holder writes its record just after taking the flock
                record = _read_record(fd)
                if record:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.path.parent} is in use by another run ({describe(record or {})}). "
                "Wait for it to finish, stop it, or choose another --workdir."
            ) from None
        host = socket.gethostname()
        previous = _read_record(fd)
        if previous is not None:
            self.warning = stale_warning(previous, host)
        record = {
            "host": host,
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empty the record (a clean exit leaves nothing stale) and drop the flock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
