"""The workdir lock: a second holder is refused with the first one named, a killed
holder's lock is taken over with a warning, a clean exit leaves nothing stale; and
``main.run`` stops on a held workdir before writing anything."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from processes import REPO, environment

from sastc_jax import configuration, main, runlock


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with runlock.RunLock(tmp_path, command="python -m sastc_jax.main --workdir=X") as first:
        assert first.warning is None
        record = json.loads((tmp_path / runlock.LOCK_NAME).read_text())
        with pytest.raises(runlock.WorkdirLockedError) as refused:
            runlock.RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert f"{tmp_path} is in use by another run" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message
    assert f"started {record['started']}" in message
    assert "command: python -m sastc_jax.main --workdir=X" in message
    # Released cleanly: the record is emptied, the next holder gets no warning.
    assert (tmp_path / runlock.LOCK_NAME).read_text() == ""
    with runlock.RunLock(tmp_path) as again:
        assert again.warning is None


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sastc_jax import runlock; "
            f"runlock.RunLock({str(tmp_path)!r}, command='the killed run').acquire(); "
            "print('locked', flush=True); time.sleep(600)",
        ],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runlock.WorkdirLockedError, match=f"pid {holder.pid}, started"):
            runlock.RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with runlock.RunLock(tmp_path) as lock:  # the kernel released the dead run's flock
        assert lock.warning.startswith("warning: taking over a stale workdir lock left by ")
        assert f"pid {holder.pid}" in lock.warning and "command: the killed run" in lock.warning
        assert "that process is dead (killed?)" in lock.warning
        assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_record_without_a_flock_is_stale(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": started, "command": "c"}
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(record))
    with runlock.RunLock(tmp_path) as lock:
        assert "that process is dead" in lock.warning
    record["host"] = "elsewhere"
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(record))
    with runlock.RunLock(tmp_path) as lock:
        assert "host elsewhere" in lock.warning and "recorded on another host" in lock.warning


def test_a_disabled_lock_touches_nothing(tmp_path):
    with runlock.RunLock(tmp_path / "run", enabled=False) as lock:
        assert lock.warning is None
    assert not (tmp_path / "run").exists()


def test_run_stops_on_a_locked_workdir_before_writing_anything(tmp_path):
    with (
        runlock.RunLock(tmp_path, command="the first run"),
        pytest.raises(runlock.WorkdirLockedError) as refused,
    ):
        main.run(configuration.base_config(), tmp_path)
    assert "is in use by another run" in str(refused.value)
    assert "command: the first run" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlock.LOCK_NAME]
