#!/usr/bin/env bash
# One multi-process JAX job on this machine, for development and CI: P processes talk over
# loopback (127.0.0.1) through jax.distributed, each with D simulated CPU devices, so the
# code path is the one of a TPU pod or a GPU cluster (one process per host).
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] \
#       [-- COMMAND [ARGS...]]
#
#   -n  processes (default 2)          -d  CPU devices per process (default 2)
#   -p  coordinator port (default: a free one)
#   -l  log directory (default: a new temporary directory)
#   COMMAND defaults to `python -m sastc_jax.main` ($PYTHON, default python3).
#
# Example: 2 processes x 2 devices = 4 devices, global batch 64 -> 16 per device:
#   launch/local_multiprocess.sh -n 2 -d 2 -- python -m sastc_jax.main \
#       --config=configs/quickstart.py --workdir=/tmp/sastc_mp
#
# Process i runs COMMAND --coordinator_address=127.0.0.1:PORT --num_processes=P
# --process_id=i with JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=D (cross-process CPU collectives: gloo).
# Process 0's output goes to the terminal and LOG_DIR/process_0.log, process i's to
# LOG_DIR/process_i.log. When a process fails, the others are stopped (SIGTERM, then SIGKILL
# after $STOP_GRACE seconds, default 10) and the script exits with its status; otherwise 0.
# Needs bash >= 5.1 (wait -n -p).
set -euo pipefail

if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "local_multiprocess.sh needs bash >= 5.1 (this is $BASH_VERSION)" >&2
  exit 2
fi

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

processes=2
devices=2
port=""
log_dir=""
python="${PYTHON:-python3}"
while getopts "n:d:p:l:h" option; do
  case "$option" in
    n) processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
if (($# > 0)); then
  command=("$@")
else
  command=("$python" -m sastc_jax.main)
fi
for value in "$processes" "$devices"; do
  if ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
    echo "-n and -d take positive integers, got '$value'" >&2
    exit 2
  fi
done
if [[ -z $port ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
if [[ -z $log_dir ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/sastc_multiprocess.XXXXXX")"
fi
mkdir -p "$log_dir"

declare -A running=()  # pid -> process index
stop_all() {
  ((${#running[@]} > 0)) || return 0
  kill -TERM "${!running[@]}" 2>/dev/null || true
  # jax.distributed processes catch SIGTERM (preemption) and may sit in a collective: KILL
  # whatever is left after the grace period.
  (sleep "${STOP_GRACE:-10}" && kill -KILL "${!running[@]}" 2>/dev/null) &
  local killer=$!
  wait "${!running[@]}" 2>/dev/null || true
  kill "$killer" 2>/dev/null || true
}
trap 'echo "interrupted: stopping the processes" >&2; stop_all; exit 130' INT TERM

xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
echo "$processes process(es) x $devices CPU device(s), coordinator 127.0.0.1:$port," \
  "logs in $log_dir" >&2
for ((i = 0; i < processes; i++)); do
  flags=(--coordinator_address="127.0.0.1:$port" --num_processes="$processes" --process_id="$i")
  run=(env JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" PYTHONUNBUFFERED=1 "${command[@]}" "${flags[@]}")
  if ((i == 0)); then
    "${run[@]}" > >(tee "$log_dir/process_0.log") 2>&1 &
  else
    "${run[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  running[$!]=$i
done

while ((${#running[@]} > 0)); do
  finished=""
  status=0
  wait -n -p finished "${!running[@]}" || status=$?
  if [[ -z $finished ]]; then
    ((status == 127)) || continue  # interrupted wait: wait again
    echo "lost track of the processes; stopping them" >&2
    stop_all
    exit 1
  fi
  index="${running[$finished]}"
  unset "running[$finished]"
  if ((status != 0)); then
    echo "process $index exited with status $status (log: $log_dir/process_$index.log);" \
      "stopping the others" >&2
    stop_all
    exit "$status"
  fi
done
wait  # for tee to copy process 0's last lines
echo "all $processes processes finished; logs in $log_dir" >&2
