#!/usr/bin/env bash
# `make train`: trains CONFIG on the GPU if there is one, else on the CPU, and prints the validation
# perplexity. Usage: scripts/train.sh BUILD_DIR CONFIG
set -euo pipefail
build=${1:-build}
config=${2:-configs/quickstart.yaml}
if [ ! -x "$build/seqmix" ]; then
  echo "make train: the trainer (seqmix train) is not built yet in this version; 'make test' runs the test suite."
  exit 1
fi
exec "$build/seqmix" train "$config"
