"""Child processes for the tests: a CPU-only environment that imports this checkout, and
waits that kill the child's whole process group on timeout instead of hanging the suite."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on at the moment (for a coordinator)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child on the CPU: ``JAX_PLATFORMS=cpu``, this checkout first on
    ``PYTHONPATH``, no inherited ``XLA_FLAGS``; then ``extra``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a child started with ``start_new_session=True``;
    kills its process group and fails the test on timeout."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"hung for {timeout}s:\n{(out + (err or ''))[-3000:]}")
    return process.returncode, out + (err or "")


def run(
    command: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root in its own process group, stderr merged
    into stdout; kill the whole group and fail on timeout."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    status, output = finish(process, timeout)
    return subprocess.CompletedProcess(command, status, output, "")
