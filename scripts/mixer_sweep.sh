#!/usr/bin/env bash
# Trains each mixer's Brown config (equal parameters and tokens) and prints one table row per mixer:
# parameters, training throughput, exact validation and test perplexity, wall time.
#   scripts/mixer_sweep.sh BUILD_DIR [DEVICE] [MIXER ...]       (default: every configs/<mixer>.yaml)
# Extra `seqmix train` arguments can be given in SWEEP_SET (e.g. "--set train.steps=100").
set -uo pipefail
build=${1:?usage: scripts/mixer_sweep.sh BUILD_DIR [DEVICE] [MIXER ...]}
device=${2:-cuda}
shift 2 2>/dev/null || shift $#
mixers=("$@")
[ ${#mixers[@]} -gt 0 ] || mixers=(brown-transformer linear_attention retnet gla hgrn2 rwkv6 mlstm deltanet gated_deltanet rwkv7 hybrid-gated-deltanet)
out=${OUT:-/tmp}/mixer_sweep
mkdir -p "$out"
printf "%-24s %12s %10s %10s %10s %8s\n" mixer params tok/s val_ppl test_ppl wall_s
for m in "${mixers[@]}"; do
  log="$out/$m.log"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${SWEEP_TIMEOUT:-240}" "$build/seqmix" train "configs/$m.yaml" --device "$device" --set run.name="sweep-$m" \
    --set train.eval_every=0 --set train.ckpt_every=0 ${SWEEP_SET:-} > "$log" 2>&1
  rc=$?
  params=$(grep -oE '[0-9]+ parameters' "$log" | head -1 | cut -d' ' -f1)
  tps=$(grep -oE '[0-9.]+[KM]? tok/s' "$log" | tail -1 | cut -d' ' -f1)
  val=$(grep -oE 'validation perplexity [0-9.]+' "$log" | tail -1 | awk '{print $3}')
  test=$(grep -oE 'test perplexity [0-9.]+' "$log" | tail -1 | awk '{print $3}')
  printf "%-24s %12s %10s %10s %10s %8s%s\n" "$m" "${params:-?}" "${tps:-?}" "${val:-?}" "${test:-?}" "$(( $(date +%s) - t0 ))" \
    "$([ $rc -ne 0 ] && echo "  (exit $rc: $(grep -m1 -E 'error' "$log" | cut -c1-120))")"
done
