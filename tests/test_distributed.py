"""Multi-process start-up (sastc_jax.distributed), its errors, and the launch/ scripts.

The errors that need real processes (an unreachable coordinator, processes that never all
join, processes that disagree on the count) run in subprocesses under a timeout, so that a
hang fails the test instead of blocking it. Each takes a few seconds.
"""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from processes import REPO, environment, finish, free_port, run

from sastc_jax import configuration, distributed
from sastc_jax.distributed import DistributedError

LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
NO_TPU = dict(has_tpu=lambda: False)


def start(code: str, *args: str, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=environment(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


JOIN = """
    import sys, time
    from sastc_jax import distributed
    address, count, index, timeout = sys.argv[1], *map(int, sys.argv[2:5])
    start = time.monotonic()
    try:
        distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index, timeout_seconds=timeout)
    except distributed.DistributedError as error:
        print(f"DistributedError after {time.monotonic() - start:.1f}s: {error}")
        sys.exit(3)
    import jax
    print(f"joined {jax.process_count()} {jax.device_count()}")
"""


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "environ,count",
    [
        ({}, 1),
        ({"SLURM_NTASKS": "8"}, 8),
        ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8"}, 4),
        ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),
        ({"SLURM_NTASKS": "x"}, 1),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, 4),
        ({"TPU_PROCESS_ADDRESSES": "a:1,b:1", "TPU_WORKER_HOSTNAMES": "a"}, 2),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1", "MEGASCALE_NUM_SLICES": "2"}, 4),
    ],
)
def test_detected_process_count(environ, count):
    assert distributed.detected_process_count(environ, **NO_TPU) == count


def test_tpu_vm_workers_come_from_the_metadata_only_on_a_tpu_vm():
    def metadata():
        return "10.0.0.1,10.0.0.2"

    assert distributed.tpu_worker_count({}, has_tpu=lambda: True, metadata=metadata) == 2
    skip = {"TPU_SKIP_MDS_QUERY": "1"}
    assert distributed.tpu_worker_count(skip, has_tpu=lambda: True, metadata=metadata) == 1

    def never():
        raise AssertionError("queried the metadata server off TPU")

    assert distributed.tpu_worker_count({}, has_tpu=lambda: False, metadata=never) == 1
    assert distributed.tpu_worker_count({}, has_tpu=lambda: True, metadata=lambda: "") == 1


@pytest.mark.parametrize(
    "mode,address,count,environ,expected",
    [
        ("auto", "", 0, {}, False),  # a plain single-process run never initialises
        ("auto", "", 1, {}, False),
        ("auto", "", 2, {}, True),
        ("auto", "10.0.0.1:1234", 2, {}, True),
        ("auto", "", 0, {"SLURM_NTASKS": "1"}, False),
        ("auto", "", 0, {"SLURM_NTASKS": "2"}, True),
        ("auto", "", 0, {"OMPI_COMM_WORLD_SIZE": "4"}, True),
        ("auto", "", 0, {"TPU_WORKER_HOSTNAMES": "a,b"}, True),
        ("auto", "", 0, {"JAX_COORDINATOR_ADDRESS": "h:1"}, True),
        ("on", "", 0, {}, True),
        ("off", "10.0.0.1:1234", 2, {"SLURM_NTASKS": "2"}, False),
    ],
)
def test_should_initialize(mode, address, count, environ, expected):
    assert distributed.should_initialize(mode, address, count, environ, **NO_TPU) is expected


def test_single_process_run_does_not_initialize():
    assert distributed.initialize(mode="auto", environ={}) is False
    assert distributed.initialize(mode="off", num_processes=2, coordinator_address="h:1") is False
    with pytest.raises(DistributedError, match="allowed: auto, on, off"):
        distributed.should_initialize("sometimes", "", 0, {})


# --------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize(
    "address,count,index,timeout,message",
    [
        ("h:1", 2, 2, 10, r"--process_id=2 is out of range for --num_processes=2 \(0\.\.1\)"),
        ("h:1", 0, 0, 10, "--coordinator_address needs --num_processes and --process_id"),
        ("h:1", 2, -1, 10, "--coordinator_address needs --num_processes and --process_id"),
        ("", 4, 7, 10, "out of range"),
        ("localhost", 2, 0, 10, "is not host:port"),
        ("h:99999", 2, 0, 10, "is not host:port"),
        ("h:1", 2, 0, 0, "--initialization_timeout=0"),
        ("", -2, 0, 10, "--num_processes=-2"),
    ],
)
def test_inconsistent_flags_are_rejected_before_jax(address, count, index, timeout, message):
    with pytest.raises(DistributedError, match=message):
        distributed.initialize(
            mode="on",
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            timeout_seconds=timeout,
        )


def test_probe_of_the_coordinator():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        distributed.wait_for_coordinator(address, time.monotonic() + 5)  # answers: returns
        with pytest.raises(DistributedError, match="Pick another port"):
            distributed.check_port_free(address)  # process 0 could not serve there
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"did not answer within .*Start process 0"):
        distributed.wait_for_coordinator(f"127.0.0.1:{free_port()}", time.monotonic() + 1)
    assert time.monotonic() - start < 10


def test_global_batch_not_divisible_by_the_device_count():
    config = configuration.base_config()
    config.student.optimizer.batch_size = 66
    configuration.validate(config, device_count=2)
    with pytest.raises(ValueError, match=r"student.optimizer.batch_size = 66 does not divide"):
        configuration.validate(config, device_count=4)


# --------------------------------------------------------------------------- real processes


def test_unreachable_coordinator_fails_fast_with_a_clear_message(tmp_path):
    """The command line, as process 1 of 2, with nobody serving the coordinator."""
    port = free_port()
    completed = run(
        [
            sys.executable,
            "-m",
            "sastc_jax.main",
            "--config=configs/quickstart.py",
            f"--workdir={tmp_path}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            "--process_id=1",
            "--initialization_timeout=2",
        ],
        environment(),
        timeout=120,
    )
    status, output = completed.returncode, completed.stdout
    assert status == 1, output[-3000:]
    assert f"error: The coordinator 127.0.0.1:{port} did not answer within 2s" in output
    assert "Check failure" not in output  # no abort from JAX's runtime


def test_processes_that_never_all_join_time_out_with_a_clear_message():
    """Process 0 of 2 alone: JAX would abort it; the watchdog explains and exits 1."""
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    status, output = finish(start_join(address, 2, 0, timeout=3), timeout=120)
    assert status == 1, output[-3000:]
    assert "error: Timed out after 3s waiting for 2 processes to join" in output
    assert "same --num_processes" in output
    assert time.monotonic() - start < 60


def start_join(address: str, count: int, index: int, timeout: int) -> subprocess.Popen:
    return start(JOIN, address, str(count), str(index), str(timeout))


def test_processes_disagreeing_on_the_count_all_fail():
    address = f"127.0.0.1:{free_port()}"
    first = start_join(address, 2, 0, timeout=30)
    second = start_join(address, 3, 1, timeout=30)
    for process in (first, second):
        status, output = finish(process, timeout=120)
        assert status == 3, output[-3000:]
        assert "different --num_processes (process 0: 2, process 1: 3)" in output


# --------------------------------------------------------------------------- launch/ scripts


def test_launch_scripts_parse_and_pass_shellcheck():
    assert {p.name for p in SCRIPTS} >= {
        "tpu_pod.sh",
        "slurm_gpu.sbatch",
        "local_multiprocess.sh",
    }
    for script in SCRIPTS:
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{script.name}: {checked.stderr}"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    linted = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120
    )
    assert linted.returncode == 0, linted.stdout[-4000:]


def test_tpu_script_explains_its_settings():
    shown = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0
    for setting in ("ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "BUCKET", "--worker=all"):
        assert setting in shown.stdout
    missing = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "name"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("ZONE", "BUCKET")},
    )
    assert missing.returncode != 0 and "set ZONE" in missing.stderr


def launch(*args: str, timeout: float = 120) -> tuple[int, str]:
    completed = run(
        ["bash", str(LAUNCH / "local_multiprocess.sh"), *args],
        environment(PYTHON=sys.executable, STOP_GRACE="3"),
        timeout,
    )
    return completed.returncode, completed.stdout


COLLECTIVE = """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from sastc_jax import distributed
    flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
    assert distributed.initialize(coordinator_address=flags["coordinator_address"],
                                  num_processes=int(flags["num_processes"]),
                                  process_id=int(flags["process_id"]), timeout_seconds=60)
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    index = jax.process_index()
    local = np.arange(2, dtype=np.float32) + 2 * index  # process p holds rows 2p, 2p+1
    rows = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("batch")),
                                                  local)
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(rows)
    print(f"process {index} of {jax.process_count()}: {jax.local_device_count()} local, "
          f"{jax.device_count()} global devices, sum {float(total)}", flush=True)
"""


def test_local_launcher_runs_a_real_two_process_collective(tmp_path):
    status, output = launch(
        "-n",
        "2",
        "-d",
        "2",
        "-l",
        str(tmp_path),
        "--",
        sys.executable,
        "-c",
        textwrap.dedent(COLLECTIVE),
    )
    assert status == 0, output[-3000:]
    assert "process 0 of 2: 2 local, 4 global devices, sum 6.0" in output
    second = (tmp_path / "process_1.log").read_text()
    assert "process 1 of 2: 2 local, 4 global devices, sum 6.0" in second


def test_local_launcher_stops_the_others_when_one_fails(tmp_path):
    failing = "import sys, time; time.sleep(60 if '--process_id=0' in sys.argv else 0); exit(7)"
    start = time.monotonic()
    status, output = launch(
        "-n", "3", "-d", "1", "-l", str(tmp_path), "--", sys.executable, "-c", failing
    )
    assert status == 7
    assert "exited with status 7" in output and "stopping the others" in output
    assert time.monotonic() - start < 40  # process 0 (sleeping 60 s) was stopped
    status, output = launch("-n", "0")
    assert status == 2 and "positive integers" in output
