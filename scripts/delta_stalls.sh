#!/usr/bin/env bash
# Where the fused delta-rule kernels wait (Nsight Compute): for each named kernel of one forward+backward at B=4
# T=4096 H=16 D=128 bf16, the warp-state breakdown and the per-instruction stall samples (source page, SASS with
# the CUDA line of each instruction; needs -lineinfo: the default build). Everything goes into $OUT/stalls.tgz.
# On the lent GPU machine: OUT=... bash scripts/delta_stalls.sh [kernel ...]   (default: fwd_prep bwd_wy bwd_out)
# KIND=rwkv7 (or gated) profiles that kind's kernels (default: plain, deltanet), e.g. KIND=rwkv7 ... gen_bwd_val.
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT/stalls"
source "$(dirname "$0")/gpu_env.sh"
[ -x build-gpu/seqmix_bench ] || build_gpu seqmix_bench || exit 1
for k in ${*:-fwd_prep bwd_wy bwd_out}; do
  rep="$OUT/stalls/$k"
  timeout 200 ncu --section WarpStateStats --section SourceCounters -k "regex:$k" -c 1 -f -o "$rep" \
    ./build-gpu/seqmix_bench delta --kinds "${KIND:-plain}" --no-check --no-long --no-ops --iters 1 --warmup 0 > "$rep.run.log" 2>&1
  ncu -i "$rep.ncu-rep" --page details --print-details all > "$rep.details.txt" 2>&1
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "$rep.sass.csv" 2> "$rep.sass.err"
  ncu -i "$rep.ncu-rep" --page source --csv --print-source cuda,sass > "$rep.cuda_sass.csv" 2> "$rep.cuda_sass.err"
  rm -f "$rep.ncu-rep"
  echo "== $k"; grep -E "Warp Cycles Per Issued|Stall (Wait|Long|Short|Barrier|Not Sel|Math|MIO|Dispatch|Branch)" "$rep.details.txt" | head -12
  head -c 400 "$rep.sass.csv"; echo; wc -c "$rep".*
done
tar czf "$OUT/stalls.tgz" -C "$OUT" stalls && rm -rf "$OUT/stalls"
