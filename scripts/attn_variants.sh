#!/usr/bin/env bash
# Attention kernel variants in one GPU call: for each (SEQMIX_ATTN_FWD, SEQMIX_ATTN_BWD) pair, run the
# attention GPU tests and `seqmix_bench attention` at T=4096 (B=4, H=16, D=128), then print one summary
# line per variant. The variants live in layers/mixers/attention/flash_attention_variants.cuh.
#   scripts/attn_variants.sh BUILD_DIR [FWD:BWD ...]      (default pairs below; run from the repo root)
# Logs go to $OUT/attn_variants/ (OUT defaults to /tmp/seqmix_out). ATTN_TESTS=0 skips the tests;
# ATTN_ITERS (default 30) and ATTN_BENCH_ARGS (default "--T 4096") tune the benchmark.
set -uo pipefail
build=${1:?usage: scripts/attn_variants.sh BUILD_DIR [FWD:BWD ...]}
shift
pairs=("$@")
# Forward and backward are timed separately by the benchmark, so one pair per index covers both sides;
# the best fwd+bwd is the best fwd plus the best bwd.
if [ ${#pairs[@]} -eq 0 ]; then pairs=(0:0 1:1 2:2 3:3 4:4 5:5 6:6 7:7 8:8 9:9 10:10); fi
OUT=${OUT:-/tmp/seqmix_out}
logs="$OUT/attn_variants"
# The libraries the programs need on the GPU machine (as scripts/gpu_check.sh does); harmless if present.
source "$(dirname "$0")/gpu_env.sh"
mkdir -p "$logs"
iters=${ATTN_ITERS:-30}
bench_args=${ATTN_BENCH_ARGS:---T 4096}

summary=()
for pair in "${pairs[@]}"; do
  fwd=${pair%%:*}
  bwd=${pair##*:}
  tag="fwd${fwd}_bwd${bwd}"
  export SEQMIX_ATTN_FWD=$fwd SEQMIX_ATTN_BWD=$bwd
  if [ "${ATTN_TESTS:-1}" != "0" ]; then
    "./$build/tests/test_gpu" --gtest_filter='*Attention*' > "$logs/$tag.tests.log" 2>&1
    trc=$?
  else
    echo "(tests skipped)" > "$logs/$tag.tests.log"
    trc=0
  fi
  passed=$(grep -E "^\[  PASSED  \] [0-9]+" "$logs/$tag.tests.log" | grep -oE "[0-9]+" | head -1)
  failed=$(grep -E "^\[  FAILED  \] [0-9]+ test" "$logs/$tag.tests.log" | grep -oE "[0-9]+" | head -1)
  tests="pass ${passed:-0} fail ${failed:-0} rc $trc"
  # shellcheck disable=SC2086
  "./$build/seqmix_bench" attention $bench_args --iters "$iters" > "$logs/$tag.bench.log" 2>&1
  brc=$?
  ms() { grep "\"pass\":\"$1\"" "$logs/$tag.bench.log" | grep '"T":4096' | grep -oE '"ms":[0-9.]+' | head -1 | cut -d: -f2; }
  check=$(grep -oE '"ok":(true|false)' "$logs/$tag.bench.log" | head -1 | cut -d: -f2)
  line=$(printf "FWD=%s BWD=%s  tests: %-22s bench check %-5s fwd %7s  bwd %7s  total %7s ms  (bench rc %d)" \
    "$fwd" "$bwd" "$tests" "${check:-?}" "$(ms fwd)" "$(ms bwd)" "$(ms fwd+bwd)" "$brc")
  echo "$line"
  summary+=("$line")
  if [ "${failed:-0}" != "0" ] || [ "$trc" != "0" ]; then
    grep -E "^\[  FAILED  \]|rel err|Expected|Which is" "$logs/$tag.tests.log" | head -12 | sed 's/^/    /'
  fi
done
unset SEQMIX_ATTN_FWD SEQMIX_ATTN_BWD
echo
echo "== attention variants (T=4096, B=4, H=16, D=128; logs in $logs) =="
printf '%s\n' "${summary[@]}"
cat <<'LEGEND'
FWD: 0 default (32-key tiles) | 1 64-key, folded scale, rolled QK k-loop | 2 = 1 + lazy rescale |
     3 32-key + folded scale + masked-warp skip + lazy | 4 = 3 without lazy | 5 = 1 unrolled (spills) |
     6 8 warps x 16 rows, 32-key, lazy | 7 = 6 with 64-key tiles | 8 = 2 with the k-loop unrolled by 2 |
     9, 10 = 2, 8 with the O epilogue through shared memory (16-byte stores)
BWD: 0 default | 1 reg lse/D + folded scale + masked skips | 2 = 1 with 4 warps / 64 keys (2 CTAs/SM) |
     3, 4 = 1, 2 + 16-byte pre/post passes | 5, 6 = 3, 4 + lean ldmatrix addresses | 7, 8 = 5, 6 + rolled
     S/dP k-loop | 9 default main kernel + 16-byte passes | 10 = 5 without per-k-step skips
LEGEND
