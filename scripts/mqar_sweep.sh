#!/usr/bin/env bash
# MQAR in the Zoology setting (2 layers, d_model 128, vocab 8192, seq 256): trains configs/mqar/<mixer>.yaml
# for 16, 32 and 64 key-value pairs and prints one markdown table of held-out test accuracy (%):
# rows mixers, columns KV pairs. Each run's accuracy is its final eval on the task's test split (examples
# held out by index, docs/DATA.md), read from the run's metrics.jsonl (test_acc); the same number comes from
#   BUILD_DIR/seqmix eval RUN_DIR --split test
#   scripts/mqar_sweep.sh BUILD_DIR [MIXER ...]        (default: attention gla deltanet gated_deltanet rwkv7)
# Environment (all optional):
#   MQAR_STEPS=N          training steps per run (default 10000 = 6.4 epochs of the 100,000 training examples;
#                         measured on the H100 at batch 64: attention 5.4M tok/s (~3 ms/step), gla, deltanet and
#                         gated_deltanet 3.8-4.1M, rwkv7 0.43-0.53M; 1500 steps left every mixer but deltanet and
#                         gla at 16 pairs undertrained, docs/PERF.md)
#   MQAR_STEPS_<MIXER>=N  per-mixer override, e.g. MQAR_STEPS_rwkv7=150
#   MQAR_KV="16 32 64"    KV-pair settings (columns)
#   MQAR_BATCH=64         sequences per step
#   MQAR_EVAL=1000        held-out examples per split (val and test)
#   MQAR_DEVICE=cuda|cpu  default cuda when nvidia-smi sees a GPU, else cpu
#   MQAR_SET="--set k=v"  more `seqmix train` arguments
#   MQAR_TIMEOUT=900      seconds per run before it is stopped
#   MQAR_JOBS=1           runs at once on the same device (train tok/s is then per run). Leave it at 1 on a GPU:
#                         on the H100, 8 at once ran at 450-500K tok/s each (attention, gla) against 5.4M alone,
#                         the processes time-slice the GPU (no MPS), so the sweep took longer in all
# Logs and run directories go to $OUT/mqar_sweep (OUT defaults to /tmp/seqmix_out).
set -uo pipefail
build=${1:?usage: scripts/mqar_sweep.sh BUILD_DIR [MIXER ...]}
shift
mixers=("$@")
[ ${#mixers[@]} -gt 0 ] || mixers=(attention gla deltanet gated_deltanet rwkv7)
[ -x "$build/seqmix" ] || { echo "no seqmix binary in $build: build it first (cmake --build $build --target seqmix)" >&2; exit 1; }
for m in "${mixers[@]}"; do
  [ -f "configs/mqar/$m.yaml" ] || { echo "no configs/mqar/$m.yaml (run from the repository root)" >&2; exit 1; }
done
# The libraries the program needs on the lent GPU machine (as scripts/gpu_check.sh does); harmless if present.
source "$(dirname "$0")/gpu_env.sh"
if [ -z "${MQAR_DEVICE:-}" ]; then
  if nvidia-smi -L > /dev/null 2>&1; then MQAR_DEVICE=cuda; else MQAR_DEVICE=cpu; fi
fi
read -r -a kvs <<< "${MQAR_KV:-16 32 64}"
batch=${MQAR_BATCH:-64}
eval_examples=${MQAR_EVAL:-1000}
out=${OUT:-/tmp/seqmix_out}/mqar_sweep
mkdir -p "$out"
declare -A acc
t_all=$(date +%s.%N)
jobs=${MQAR_JOBS:-1}
# One run; its result line goes to $out/<name>.result so that runs may go side by side.
run_one() {
  local m=$1 k=$2 steps=$3 name="$1-kv$2"
  local warmup=$(( steps / 10 )) t0 rc wall last test_acc loss a tps
  rm -rf "${out:?}/$name" "$out/$name.result"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  timeout "${MQAR_TIMEOUT:-900}" "$build/seqmix" train "configs/mqar/$m.yaml" --device "$MQAR_DEVICE" \
    --set run.out_dir="$out" --set run.name="$name" --set data.task.num_kv_pairs="$k" \
    --set data.task.eval_examples="$eval_examples" --set train.steps="$steps" --set train.warmup="$warmup" \
    --set train.batch_size="$batch" --set train.eval_every=0 --set train.ckpt_every=0 --set train.log_every=50 \
    ${MQAR_SET:-} > "$out/$name.log" 2>&1
  rc=$?
  wall=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.1f", a - b}')  # no bc on the GPU machine
  last=$(tail -1 "$out/$name/metrics.jsonl" 2>/dev/null)
  test_acc=$(grep -oE '"test_acc": [0-9.eE+-]+' <<< "$last" | awk '{print $2}')
  loss=$(grep -oE '"loss": [0-9.eE+-]+' <<< "$last" | awk '{printf "%.4f", $2}')
  if [ $rc -eq 0 ] && [ -n "$test_acc" ]; then
    a=$(awk -v a="$test_acc" 'BEGIN{printf "%.1f", 100 * a}')
  else
    a=fail
    if [ $rc -eq 124 ]; then echo "  $name: stopped after ${MQAR_TIMEOUT:-900} s (MQAR_TIMEOUT); log $out/$name.log"
    else echo "  $name: exit $rc: $(grep -m1 -iE 'error|what' "$out/$name.log" | cut -c1-160)"; fi
  fi
  tps=$(grep -oE '[0-9.]+[KM]? tok/s' "$out/$name.log" | tail -1 | cut -d' ' -f1)
  echo "$a" > "$out/$name.result"
  printf "%-16s %5s %6s %10s %9s %10s %8.1f\n" "$m" "$k" "$steps" "${loss:-?}" "$a" "${tps:-?}" "$wall"
}
printf "%-16s %5s %6s %10s %9s %10s %8s\n" mixer kv steps train_loss "test_acc%" train_tok/s wall_s
for m in "${mixers[@]}"; do
  steps_var="MQAR_STEPS_$m"
  steps=${!steps_var:-${MQAR_STEPS:-10000}}
  for k in "${kvs[@]}"; do
    if [ "$jobs" -le 1 ]; then run_one "$m" "$k" "$steps"; continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    run_one "$m" "$k" "$steps" &
  done
done
wait
for m in "${mixers[@]}"; do
  for k in "${kvs[@]}"; do acc[$m,$k]=$(cat "$out/$m-kv$k.result" 2>/dev/null || echo fail); done
done
total=$(awk -v a="$(date +%s.%N)" -v b="$t_all" 'BEGIN{printf "%.0f", a - b}')
echo
echo "MQAR test accuracy (%), Zoology setting: 2 layers, d_model 128, vocab 8192, seq 256; $MQAR_DEVICE, batch $batch," \
  "${MQAR_STEPS:-10000} steps (unless overridden per mixer), $eval_examples held-out test examples${MQAR_SET:+, with $MQAR_SET}; $jobs run(s) at once, ${total%.*} s in all"
echo
header="| mixer |"
rule="|---|"
for k in "${kvs[@]}"; do header+=" $k KV |"; rule+="---|"; done
echo "$header"
echo "$rule"
for m in "${mixers[@]}"; do
  row="| $m |"
  for k in "${kvs[@]}"; do row+=" ${acc[$m,$k]} |"; done
  echo "$row"
done
