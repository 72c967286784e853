#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: one process per TPU host, all running the same
# `python -m sastc_jax.main` (gcloud ... ssh --worker=all) through jax.distributed, which
# detects the slice itself.
#
#   launch/tpu_pod.sh TPU_NAME [sastc_jax.main flags...]
#
# Example (a v4-32 slice = 4 hosts x 4 chips; global batch 128 -> 8 per chip):
#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 BUCKET=my-bucket RUN=cifar10_t2 \
#     launch/tpu_pod.sh sastc-v4-32 --config=configs/cifar10_t2.py \
#     --config.student.optimizer.batch_size=128 --config.dtype=bfloat16
#
# Settings (environment):
#   ZONE              TPU zone (required), e.g. us-central2-b
#   ACCELERATOR_TYPE  slice type used when the TPU VM is created (default v4-32)
#   RUNTIME_VERSION   TPU VM image (default tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite,
#                     v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
#   PROJECT           gcloud project (default: gcloud's configured one)
#   SPOT=1            create the slice as a Spot VM (preemptible; rerun this script to resume)
#   BUCKET            GCS bucket (required) holding the runs and the data; every worker mounts
#                     it with Cloud Storage FUSE at /mnt/BUCKET (orbax needs one directory
#                     that all hosts share)
#   RUN               run name (default: sastc); the workdir is /mnt/BUCKET/runs/RUN
#   DATA_DIR          TFDS data_dir (default /mnt/BUCKET/tensorflow_datasets)
#   PYTHON_VERSION    Python for the workers' virtual environment (default 3.11)
#
# The slice is created if it does not exist (and reused otherwise); this checkout is copied
# to ~/sastc_jax on every worker and installed with jax[tpu] into ~/sastc_venv. Rerunning
# the script with the same RUN resumes from the last checkpoint.
set -euo pipefail

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit $(($# < 1 ? 2 : 0))
fi
name="$1"
shift
: "${ZONE:?set ZONE, e.g. ZONE=us-central2-b}"
: "${BUCKET:?set BUCKET to a GCS bucket name (without gs://)}"
accelerator="${ACCELERATOR_TYPE:-v4-32}"
version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
run="${RUN:-sastc}"
mount="/mnt/$BUCKET"
workdir="$mount/runs/$run"
data_dir="${DATA_DIR:-$mount/tensorflow_datasets}"
python_version="${PYTHON_VERSION:-3.11}"
command -v gcloud >/dev/null || {
  echo "gcloud not found: install the Google Cloud CLI and run 'gcloud auth login'" >&2
  exit 1
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  where+=(--project="$PROJECT")
fi

# 1. Create the slice, or reuse it.
if "${gcloud_tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "Reusing TPU VM $name in $ZONE."
else
  create=(--accelerator-type="$accelerator" --version="$version")
  if [[ ${SPOT:-0} == 1 ]]; then
    create+=(--spot)
  fi
  echo "Creating TPU VM $name ($accelerator, $version) in $ZONE."
  "${gcloud_tpu[@]}" create "$name" "${where[@]}" "${create[@]}"
fi

# 2. Copy this checkout to every worker and install it (with Python >= 3.11 and jax[tpu]);
#    mount the bucket at the same path on every worker.
repo="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
archive="$scratch/sastc_jax.tgz"
tar -czf "$archive" -C "$repo" --exclude=.venv --exclude=.git --exclude='*.egg-info' .
"${gcloud_tpu[@]}" scp "$archive" "$name:sastc_jax.tgz" "${where[@]}" --worker=all
setup="$(
  cat <<EOF
set -euo pipefail
rm -rf ~/sastc_jax && mkdir -p ~/sastc_jax && tar -xzf ~/sastc_jax.tgz -C ~/sastc_jax
if ! command -v gcsfuse >/dev/null || ! command -v python$python_version >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq
  sudo apt-get install -y -qq gcsfuse python$python_version python$python_version-venv
fi
if ! mountpoint -q $mount; then
  sudo mkdir -p $mount && sudo chown "\$USER" $mount
  gcsfuse --implicit-dirs $BUCKET $mount
fi
[ -x ~/sastc_venv/bin/python ] || python$python_version -m venv ~/sastc_venv
~/sastc_venv/bin/pip install -q -U pip
~/sastc_venv/bin/pip install -q -e ~/sastc_jax 'jax[tpu]'
EOF
)"
"${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$setup"

# 3. The same command on every worker; process 0 prints progress and writes the metrics.
args=(-m sastc_jax.main --distributed=on --workdir="$workdir"
  --config.dataset.data_dir="$data_dir" "$@")
printf -v args_quoted '%q ' "${args[@]}"
printf -v log '%q' "$run.log"
remote="set -o pipefail; cd ~/sastc_jax && mkdir -p ~/sastc_logs &&
  ~/sastc_venv/bin/python $args_quoted 2>&1 | tee ~/sastc_logs/$log"
cat <<EOF
Workdir (shared by all workers): gs://$BUCKET/runs/$run, mounted at $workdir:
  metrics.jsonl, summary.json, config.json (process 0), checkpoints in teacher/ and student/.
Per-worker logs: ~/sastc_logs/$run.log on each worker, e.g.
  ${gcloud_tpu[*]} ssh $name ${where[*]} --worker=1 --command='tail -f ~/sastc_logs/$run.log'
EOF
"${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote"
echo "Done: results in gs://$BUCKET/runs/$run. Delete the slice when finished:"
echo "  ${gcloud_tpu[*]} delete $name ${where[*]}"
