#!/usr/bin/env bash
# Where the fused delta-rule kernels wait (Nsight Compute): the warp-state breakdown of each kernel of one
# forward+backward at B=4 T=4096 H=16 D=128 bf16, and the source lines with the most stall samples.
# On the lent GPU machine: OUT=... bash scripts/delta_stalls.sh [kernel regex]   (needs -lineinfo: the default build)
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
[ -x build-gpu/seqmix_bench ] || build_gpu seqmix_bench || exit 1
regex=${1:-fwd_prep|fwd_state|fwd_out|bwd_prep|bwd_state|bwd_wy|bwd_out}
rep="$OUT/delta_stalls"
timeout 300 ncu --section WarpStateStats --section SourceCounters --section LaunchStats --section Occupancy \
  -k "regex:^($regex)\$" -c 7 -f -o "$rep" \
  ./build-gpu/seqmix_bench delta --kinds plain --no-check --no-long --no-ops --iters 1 --warmup 0 > "$OUT/stalls_run.log" 2>&1
ncu -i "$rep.ncu-rep" --page details --print-details all > "$OUT/stalls_details.txt" 2>&1
# per-line stall samples (CUDA source view), one csv per kernel
for k in $(echo "$regex" | tr '|' ' '); do
  ncu -i "$rep.ncu-rep" -k "regex:^$k\$" --page source --csv --print-source cuda > "$OUT/src_$k.csv" 2>&1 || true
done
grep -E "^  [a-z_]+<|Stall|Warp Cycles Per Issued|Active Warps|Achieved Occupancy|Duration" "$OUT/stalls_details.txt" | head -150
