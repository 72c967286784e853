"""Multi-process start-up through JAX's own runtime (``jax.distributed``).

Every host runs the same ``python -m sastc_jax.main`` command; JAX's multi-controller
runtime connects the processes. ``--distributed``:

- ``auto`` (default): initialise only when the run is multi-process: explicit flags
  (``--coordinator_address`` / ``--num_processes`` > 1), ``JAX_COORDINATOR_ADDRESS``, a
  SLURM or Open MPI job with more than one task, or a multi-host TPU slice (JAX's cluster
  detection then fills in what the flags leave unset). Single-process runs never call it.
- ``on``: always initialise (JAX detects the cluster: TPU pod slices, SLURM, Open MPI).
- ``off``: never (one process, whatever the environment says).

Failures raise :class:`DistributedError` with the cause and the fix: inconsistent flags,
a coordinator that is not reachable, and processes that disagree on the process count or
have unequal local device counts. Processes that do not all join within
``--initialization_timeout`` seconds (JAX's runtime would abort them from C++ without a
useful message), or whose first collective does not complete in that time, print the
reason and exit with status 1 (a watchdog: the blocked C++ call cannot be interrupted).

CPU runs (``launch/local_multiprocess.sh``) use gloo for cross-process collectives.
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np


class DistributedError(RuntimeError):
    """Multi-process start-up failed or does not match the requested layout."""


MODES = ("auto", "on", "off")
DEFAULT_TIMEOUT = 300
# JAX's own join deadline is set this much later than ours, so that the watchdog below
# (a clear message, exit status 1) always fires before the runtime aborts the process.
_RUNTIME_GRACE_SECONDS = 30
_PROBE_INTERVAL_SECONDS = 0.5
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips on a Cloud TPU VM
_TPU_METADATA_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
    "worker-network-endpoints"
)


# --------------------------------------------------------------------------- detection


def _has_tpu_chip(pci_glob: str = "/sys/bus/pci/devices/*/vendor") -> bool:
    for path in glob.glob(pci_glob):
        try:
            with open(path) as stream:
                if stream.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _tpu_metadata_workers(timeout: float = 5.0) -> str:
    """The TPU VM's ``worker-network-endpoints`` metadata ('' when it cannot be read)."""
    request = urllib.request.Request(_TPU_METADATA_URL, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return ""


def tpu_worker_count(
    environ: Mapping[str, str] = os.environ,
    *,
    has_tpu: Callable[[], bool] = _has_tpu_chip,
    metadata: Callable[[], str] = _tpu_metadata_workers,
) -> int:
    """Hosts of this TPU slice (times ``MEGASCALE_NUM_SLICES``); 1 off TPU or when unknown.

    GKE announces the workers in ``TPU_PROCESS_ADDRESSES`` / ``TPU_WORKER_HOSTNAMES``; a
    Cloud TPU VM lists them in its ``worker-network-endpoints`` metadata (read only on a
    machine with a TPU chip, and not when ``TPU_SKIP_MDS_QUERY`` is set).
    """
    workers = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
    if not workers and not environ.get("TPU_SKIP_MDS_QUERY") and has_tpu():
        workers = metadata()
    count = len([w for w in (workers or "").split(",") if w.strip()]) or 1
    slices = environ.get("MEGASCALE_NUM_SLICES", "")
    return count * (int(slices) if slices.isdigit() and int(slices) > 0 else 1)


def detected_process_count(environ: Mapping[str, str] = os.environ, **tpu) -> int:
    """Process count announced by SLURM, Open MPI or a multi-host TPU slice (else 1).

    ``tpu`` passes ``has_tpu`` / ``metadata`` through to :func:`tpu_worker_count` (tests).
    """
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return tpu_worker_count(environ, **tpu)


def should_initialize(
    mode: str,
    coordinator_address: str,
    num_processes: int,
    environ: Mapping[str, str] = os.environ,
    **tpu,
) -> bool:
    """Whether to call ``jax.distributed.initialize`` (see the module docstring)."""
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r}; allowed: {', '.join(MODES)}.")
    if mode != "auto":
        return mode == "on"
    return (
        bool(coordinator_address)
        or num_processes > 1
        or bool(environ.get("JAX_COORDINATOR_ADDRESS"))
        or detected_process_count(environ, **tpu) > 1
    )


# --------------------------------------------------------------------------- checks


def check_arguments(
    coordinator_address: str, num_processes: int, process_id: int, timeout_seconds: int
) -> None:
    """Raise :class:`DistributedError` for flags that cannot describe a valid run."""
    if timeout_seconds < 1:
        raise DistributedError(f"--initialization_timeout={timeout_seconds}; use >= 1 second.")
    if num_processes < 0:
        raise DistributedError(f"--num_processes={num_processes}; use >= 1 (or 0 to detect).")
    if coordinator_address:
        _split_address(coordinator_address)
        if num_processes < 1 or process_id < 0:
            raise DistributedError(
                "--coordinator_address needs --num_processes and --process_id as well; got "
                f"num_processes={num_processes}, process_id={process_id}."
            )
    if num_processes and process_id >= num_processes:
        raise DistributedError(
            f"--process_id={process_id} is out of range for "
            f"--num_processes={num_processes} (0..{num_processes - 1})."
        )


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"--coordinator_address={address!r} is not host:port (e.g. 10.0.0.2:8476)."
        )
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, deadline: float) -> None:
    """Block until ``address`` accepts TCP connections; DistributedError at ``deadline``.

    Processes other than 0 call this before joining: an address nobody listens on then
    fails with this message instead of JAX's abort.
    """
    host, port = _split_address(address)
    start = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, remaining))):
                return
        except OSError as error:
            last_error = error
        if time.monotonic() + _PROBE_INTERVAL_SECONDS >= deadline:
            break
        time.sleep(_PROBE_INTERVAL_SECONDS)
    raise DistributedError(
        f"The coordinator {address} did not answer within {time.monotonic() - start:.0f}s "
        f"({type(last_error).__name__}: {last_error}). Start process 0 (it hosts the "
        "coordinator) with the same --coordinator_address, check the host name, the port "
        "and the firewall between the hosts, or raise --initialization_timeout."
    )


def check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on the address's port: it must be free here."""
    _, port = _split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DistributedError(
                f"Process 0 cannot serve the coordinator on port {port} ({error}); another "
                "program (or an earlier run) holds it. Pick another port in "
                "--coordinator_address, the same for every process."
            ) from error


@contextlib.contextmanager
def _join_watchdog(seconds: float, message: str) -> Iterator[None]:
    """Print ``message`` and exit(1) if the block is still running after ``seconds``.

    ``jax.distributed.initialize`` blocks in C++ until every process has joined and then
    aborts the process with an unrelated message; it cannot be interrupted from Python.
    """

    def expire() -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives of CPU devices go through gloo (unless another is chosen)."""
    with contextlib.suppress(AttributeError):
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")


def check_layout(num_processes: int) -> None:
    """After joining: every process asked for the runtime's process count, and every
    process has the same number of local devices (each host feeds its own devices with
    an equal share of the global batch)."""
    requested = num_processes or jax.process_count()
    from jax.experimental import multihost_utils

    rows = np.asarray(
        multihost_utils.process_allgather(
            np.asarray([requested, jax.local_device_count()], np.int32)
        )
    ).reshape(jax.process_count(), 2)
    counts, devices = rows.T.tolist()

    def per_process(values: list[int]) -> str:
        return ", ".join(f"process {i}: {n}" for i, n in enumerate(values))

    if len(set(counts)) > 1:
        raise DistributedError(
            f"The processes were started with different --num_processes ({per_process(counts)}); "
            f"the runtime has {jax.process_count()}. Give every process the same value."
        )
    if requested != jax.process_count():
        raise DistributedError(
            f"Asked for {requested} processes but the runtime has {jax.process_count()}; "
            "fix --num_processes (or the job's task count)."
        )
    if len(set(devices)) > 1:
        raise DistributedError(
            "The processes have different numbers of local devices "
            f"({per_process(devices)}); start the same number of devices per process (e.g. "
            "JAX_LOCAL_DEVICE_IDS / CUDA_VISIBLE_DEVICES / --xla_force_host_platform_device_count)."
        )


# --------------------------------------------------------------------------- start-up


def initialize(
    *,
    mode: str = "auto",
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    timeout_seconds: int = DEFAULT_TIMEOUT,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Start the multi-controller runtime when needed; returns whether it did.

    Raises :class:`DistributedError` for inconsistent flags, a coordinator that does not
    accept connections within ``timeout_seconds``, and a process count or local device
    count that differs between processes or from ``num_processes``. When the coordinator
    answers but not every process joins within ``timeout_seconds``, or the first
    collective does not finish in that time, the process prints the reason and exits with
    status 1 (see :func:`_join_watchdog`).
    """
    if not should_initialize(mode, coordinator_address, num_processes, environ):
        return False
    check_arguments(coordinator_address, num_processes, process_id, timeout_seconds)
    if jax.distributed.is_initialized():
        return True
    deadline = time.monotonic() + timeout_seconds
    where = coordinator_address or "the coordinator found by JAX's cluster detection"
    if coordinator_address and process_id == 0:
        check_port_free(coordinator_address)
    elif coordinator_address:
        wait_for_coordinator(coordinator_address, deadline)
    _use_gloo_on_cpu()
    remaining = max(1.0, deadline - time.monotonic())
    expected = num_processes or "all"
    who = f"process {process_id}" if process_id >= 0 else "this process"
    timeout_message = (
        f"Timed out after {timeout_seconds}s waiting for {expected} processes to join "
        f"{where} ({who}). Start every process, each with the same --num_processes and a "
        "distinct --process_id (or the job's task count under SLURM / Open MPI), or raise "
        "--initialization_timeout if the hosts start slowly."
    )
    try:
        with _join_watchdog(remaining, timeout_message):
            jax.distributed.initialize(
                coordinator_address=coordinator_address or None,
                num_processes=num_processes or None,
                process_id=process_id if process_id >= 0 else None,
                initialization_timeout=int(remaining) + _RUNTIME_GRACE_SECONDS,
            )
    except Exception as error:  # JAX raises RuntimeError/ValueError for what it detects
        raise DistributedError(
            f"Could not join {where} as {who} of {num_processes or '?'}: {error}. Check "
            "the flags (or the cluster environment JAX detects: TPU, SLURM, Open MPI)."
        ) from error
    collective_message = (
        f"The processes joined {where} but their first collective (over "
        f"{jax.device_count()} devices) did not finish within {timeout_seconds}s. Check that "
        "the hosts reach each other on all ports (not only the coordinator's): CPU "
        "collectives use gloo, GPUs NCCL (e.g. NCCL_SOCKET_IFNAME)."
    )
    with _join_watchdog(timeout_seconds, collective_message):
        check_layout(num_processes)
    return True
