"""Multi-process start-up through JAX's own runtime (``jax.distributed``).

``--distributed=auto`` (default) initialises only when the run is multi-process:
explicit flags (coordinator address / process count / id), or a SLURM or Open MPI
job with more than one task, which JAX's cluster detection then reads. TPU pod
slices are started with ``--distributed=on`` (see ``launch/tpu_pod.sh``), where
JAX detects the slice itself. Single-process runs never call it.
"""

from __future__ import annotations

import os

import jax
from absl import flags


class DistributedError(RuntimeError):
    """Multi-process start-up failed or does not match the requested layout."""


MODES = ("auto", "on", "off")


def define_flags() -> None:
    """Register the ``--distributed`` and coordinator flags (absl)."""
    flags.DEFINE_enum(
        "distributed",
        "auto",
        list(MODES),
        "Call jax.distributed.initialize(): auto = when multi-process.",
    )
    flags.DEFINE_string(
        "coordinator_address",
        "",
        "host:port of process 0 (plain clusters; empty = JAX's detection).",
    )
    flags.DEFINE_integer("num_processes", 0, "Number of processes (0 = JAX's detection).")
    flags.DEFINE_integer("process_id", -1, "This process's index (-1 = JAX's detection).")
    flags.DEFINE_integer(
        "initialization_timeout", 300, "Seconds to wait for all processes to join the coordinator."
    )


def detected_process_count(environ=os.environ) -> int:
    """Task count announced by SLURM or Open MPI (1 when neither is present)."""
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 1


def should_initialize(
    mode: str, coordinator_address: str, num_processes: int, environ=os.environ
) -> bool:
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r}; allowed: {', '.join(MODES)}.")
    if mode != "auto":
        return mode == "on"
    return bool(coordinator_address) or num_processes > 1 or detected_process_count(environ) > 1


def initialize(
    *,
    mode: str = "auto",
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    timeout_seconds: int = 300,
) -> bool:
    """Start the multi-controller runtime when needed; returns whether it did.

    Raises :class:`DistributedError` for inconsistent flags, a coordinator that
    does not answer within ``timeout_seconds``, or a process count that differs
    from ``num_processes``.
    """
    if not should_initialize(mode, coordinator_address, num_processes):
        return False
    explicit = dict(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
    )
    if coordinator_address and (num_processes < 1 or process_id < 0):
        raise DistributedError(
            "--coordinator_address needs --num_processes and --process_id as well; got "
            f"num_processes={num_processes}, process_id={process_id}."
        )
    if num_processes and process_id >= num_processes:
        raise DistributedError(
            f"--process_id={process_id} is out of range for "
            f"--num_processes={num_processes} (0..{num_processes - 1})."
        )
    try:
        jax.distributed.initialize(initialization_timeout=timeout_seconds, **explicit)
    except Exception as error:  # JAX raises RuntimeError/XlaRuntimeError/ValueError here
        where = coordinator_address or "the coordinator found by JAX's cluster detection"
        raise DistributedError(
            f"Could not join {where} as process {process_id} of {num_processes or '?'} within "
            f"{timeout_seconds}s: {error}. Check that process 0 is running, that the address "
            "is reachable from this host, and that every process got the same "
            "--num_processes."
        ) from error
    if num_processes and jax.process_count() != num_processes:
        raise DistributedError(
            f"Asked for {num_processes} processes but the runtime has {jax.process_count()}."
        )
    return True


def initialize_from_flags(flag_values) -> bool:
    return initialize(
        mode=flag_values.distributed,
        coordinator_address=flag_values.coordinator_address,
        num_processes=flag_values.num_processes,
        process_id=flag_values.process_id,
        timeout_seconds=flag_values.initialization_timeout,
    )
