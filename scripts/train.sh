#!/usr/bin/env bash
# `make train`: trains CONFIG on the GPU if there is one (longer), else on the CPU, and prints the
# validation and test perplexity. Running it again resumes the run (or just reports a finished one).
# Usage: scripts/train.sh BUILD_DIR CONFIG [extra seqmix train arguments...]
set -euo pipefail
build=${1:-build}
config=${2:-configs/quickstart.yaml}
shift 2 || true
extra=()
if [ "$config" = configs/quickstart.yaml ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # a GPU goes further in the same few minutes
  extra+=(--set train.steps=3000 --set train.batch_size=64 --set train.eval_every=500 --set train.ckpt_every=1000
          --set train.eval_max_tokens=0 --set run.name=quickstart-gpu)
fi
exec "$build/seqmix" train "$config" --resume auto "${extra[@]}" "$@"
