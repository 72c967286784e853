#!/usr/bin/env bash
# Quickstart on a fresh machine: installs sastc-jax into .venv (and Debian's Fashion-MNIST
# files where they are missing and apt is usable), then trains a small ANN teacher and
# distils a spiking student with SASTC on the real Fashion-MNIST data.
#   bash launch/quickstart.sh [WORKDIR] [extra --config.* overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-/tmp/sastc_quickstart}"
shift || true

data_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$data_dir/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST IDX files not found in $data_dir." >&2
    echo "Install them with: sudo apt-get install dataset-fashion-mnist" >&2
    echo "(or pass --config.dataset.data_dir=DIR holding the four *-ubyte.gz files)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -e .
exec .venv/bin/python -m sastc_jax.main --config=configs/quickstart.py --workdir="$workdir" "$@"
