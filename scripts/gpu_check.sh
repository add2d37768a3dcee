#!/usr/bin/env bash
# One call on the lent GPU machine: build, run the `gpu` tests, run the benchmarks beside their
# PyTorch peers, and print a short table last. Logs go to $OUT (the device tool brings them back).
#   scripts/gpu_check.sh [build] [tests] [bench] [step] [brown] [lrtc] [delta] [prof] [mqar] [extra...]
#                                                                   (default: build tests bench)
# Needs the Debian packages the machine lacks in .deps/debs (see ../shared/gpu/README.md).
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
stages=${*:-build tests bench}
has() { [[ " $stages " == *" $1 "* ]]; }
summary=()
note() { summary+=("$1"); echo "$1" >> "$OUT/summary.txt"; }  # also on disk: a call cut off at its limit keeps it

source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

if has build; then
  t0=$(date +%s)
  configure_gpu_build > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  # only what runs here (the CPU test suites run in CI): BUILD_ALL=1 builds everything
  targets="--target seqmix seqmix_bench test_gpu"
  [ -n "${BUILD_ALL:-}" ] && targets=""
  # shellcheck disable=SC2086
  if ! cmake --build build-gpu -j 16 $targets >> "$OUT/build.log" 2>&1; then
    grep -E "error|Error" -A3 "$OUT/build.log" | head -80
    exit 1
  fi
  note "build: ok in $(( $(date +%s) - t0 )) s"
fi

if has tests; then
  (cd build-gpu && timeout 200 ctest -L gpu --output-on-failure -j 4 --timeout 150) > "$OUT/tests.log" 2>&1
  line=$(grep -E "tests passed|tests failed" "$OUT/tests.log" | tail -1)
  note "gpu tests: $line"
  grep -E "^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)\)" "$OUT/tests.log" | head -40 > "$OUT/failed.txt"
  if [ -s "$OUT/failed.txt" ]; then
    echo "== failed gpu tests =="; cat "$OUT/failed.txt"
    # the first failures' details
    grep -E "Failure|Expected|actual|Which is|error:|rel err|C\+\+ exception" "$OUT/tests.log" | head -60
  fi
fi

if has bench; then
  {
    echo "== seqmix kernels"; timeout 240 ./build-gpu/seqmix_bench kernels 2>&1
    echo "== torch kernels"; timeout 120 python3 bench/torch_kernels.py 2>&1
    echo "== seqmix gemm"; timeout 120 ./build-gpu/seqmix_bench gemm 2>&1
    echo "== torch gemm"; timeout 120 python3 bench/torch_gemm.py 2>&1
    echo "== seqmix attention"; timeout 180 ./build-gpu/seqmix_bench attention 2>&1
    echo "== torch attention"; timeout 180 python3 bench/torch_attention.py 2>&1
  } > "$OUT/bench.log" 2>&1
  note "bench: see bench.log"
fi

if has step; then
  {
    echo "== seqmix step"; timeout 300 ./build-gpu/seqmix_bench step --config configs/gpt2-124m.yaml --batch 16 --seq 1024 2>&1
    echo "== torch step"; timeout 300 python3 bench/torch_gpt2.py --batch 16 --seq 1024 2>&1
  } > "$OUT/step.log" 2>&1
  note "step: see step.log"
fi

# Brown transformer (needs data_cache/brown-word carried): trains for at most BROWN_MINUTES.
if has brown; then
  timeout $(( ${BROWN_MINUTES:-7} * 60 )) ./build-gpu/seqmix train configs/brown-transformer.yaml --device cuda \
    ${BROWN_SET:-} > "$OUT/brown.log" 2>&1
  note "brown: exit $? ; $(grep -E 'perplexity' "$OUT/brown.log" | tail -3 | tr '\n' ' ')"
fi

# Linear recurrence: the GPU tests with the FFMA kernels forced (tensor cores are the default, run by `tests`),
# racecheck on two Dk=128 per-channel cases, tensor cores vs FFMA at B=4 T=4096, the long-context table.
if has lrtc; then
  {
    echo "== gpu tests, SEQMIX_LR_TC=0 (the FFMA kernels; tensor cores are the default)"
    SEQMIX_LR_TC=0 ./build-gpu/tests/test_gpu --gtest_filter='*LinearRecurrence*' 2>&1 | tail -4
    echo "== racecheck"
    timeout 100 compute-sanitizer --tool racecheck ./build-gpu/tests/test_gpu \
      --gtest_filter='Bf16/LinearRecurrenceGpuVsCpu.*/2:Bf16/LinearRecurrenceGpuVsCpu.*/7' 2>&1 | tail -6
    echo "== bench"; timeout 300 ./build-gpu/seqmix_bench recurrence ${LRTC_FFMA---compare-ffma} 2>&1
    if [ -n "${LRTC_FUSED:-}" ]; then
      echo "== bench, the fused state pass (SEQMIX_LR_FUSED_STATE=1; measured slower in session 4, opt-in)"
      SEQMIX_LR_FUSED_STATE=1 timeout 150 ./build-gpu/seqmix_bench recurrence --no-check 2>&1 | grep -vE '^\{'
    fi
    [ -z "${NO_PEER:-}" ] && { echo "== torch peer"; timeout 150 python3 bench/torch_recurrence.py --no-long 2>&1 | grep -vE '^\{'; }
    if [ -z "${NO_ATTN:-}" ]; then
      echo "== attention at the same shapes (per-token time at T = 4096 and 65536)"
      timeout 200 ./build-gpu/seqmix_bench attention --T 4096,65536 --tokens 65536 --H 16 --D 128 2>&1 | tail -8
    fi
  } > "$OUT/lrtc.log" 2>&1
  note "lrtc: $(grep -E 'PASSED|FAILED|hazards' "$OUT/lrtc.log" | head -3 | tr '\n' ' ')"
fi

# Fused delta-rule kernel: its GPU tests, the benchmark (kernel vs op composition, length scaling), the peer.
if has delta; then
  {
    echo "== gpu tests"; ./build-gpu/tests/test_gpu --gtest_filter='*Delta*' 2>&1 | tail -25
    echo "== racecheck"
    timeout 120 compute-sanitizer --tool racecheck ./build-gpu/tests/test_gpu \
      --gtest_filter='Bf16/DeltaRuleGpuVsCpu.*/2:Bf16/DeltaRuleGpuVsCpu.*/7:F32/DeltaRuleGpuVsCpu.*/1' 2>&1 | tail -6
    echo "== racecheck, the generalized rule's kernels"
    timeout 120 compute-sanitizer --tool racecheck ./build-gpu/tests/test_gpu \
      --gtest_filter='Bf16/GeneralizedDeltaGpuVsCpu.*/5:F32/GeneralizedDeltaGpuVsCpu.*/2' 2>&1 | tail -4
    echo "== synccheck"
    timeout 60 compute-sanitizer --tool synccheck ./build-gpu/tests/test_gpu \
      --gtest_filter='Bf16/DeltaRuleGpuVsCpu.*/7' 2>&1 | tail -3
    echo "== bench"; timeout 300 ./build-gpu/seqmix_bench delta 2>&1
    echo "== bench, rwkv7 on the recurrent kernel (SEQMIX_GDR_CHUNKED=0)"
    SEQMIX_GDR_CHUNKED=0 timeout 120 ./build-gpu/seqmix_bench delta --kinds rwkv7 --no-check --no-long --no-ops 2>&1 | grep -vE '^\{'
    [ -z "${NO_PEER:-}${NO_DELTA_PEER:-}" ] && { echo "== torch peer"; timeout 150 python3 bench/torch_delta.py 2>&1 | grep -v '^{'; }
  } > "$OUT/delta.log" 2>&1
  note "delta: $(grep -E 'PASSED|FAILED|hazards|SYNCCHECK|ERROR SUMMARY' "$OUT/delta.log" | head -5 | tr '\n' ' ')"
fi

# Per-kernel times (Nsight Compute) of one recurrence / delta-rule forward+backward at B=4 T=4096 H=16 D=128.
if has prof; then
  metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_shared_mem${EXTRA_METRICS:+,$EXTRA_METRICS}
  {
    for k in ${PROF_KINDS:-linear_attention gla}; do
      echo "== ncu recurrence $k"
      timeout 90 ncu --metrics "$metrics" -k 'regex:chunk|scan|dg_' --print-summary per-kernel \
        ./build-gpu/seqmix_bench recurrence --kinds "$k" --no-check --no-long --iters 10 --warmup 0 2>&1 | grep -vE '^\{|^==PROF==|^$'
    done
    if [ -z "${NO_PROF_DELTA:-}" ]; then
      echo "== ncu delta plain"
      timeout 150 ncu --metrics "$metrics" -k 'regex:prep|_state|_out|_wy' --print-summary per-kernel \
        ./build-gpu/seqmix_bench delta --kinds plain --no-check --no-long --no-ops --iters 10 --warmup 0 2>&1 | grep -vE '^\{|^==PROF==|^$'
      if [ -z "${NO_PROF_GDR:-}" ]; then
        echo "== ncu delta rwkv7 (the generalized rule's chunked kernels)"
        timeout 150 ncu --metrics "$metrics" -k 'regex:gen_|_state' --print-summary per-kernel \
          ./build-gpu/seqmix_bench delta --kinds rwkv7 --no-check --no-long --no-ops --iters 10 --warmup 0 2>&1 | grep -vE '^\{|^==PROF==|^$'
      fi
    fi
  } > "$OUT/prof.log" 2>&1
  note "prof: see prof.log"
fi

# MQAR table of issue #6 (scripts/mqar_sweep.sh; MQAR_STEPS etc. pass through).
if has mqar; then
  # shellcheck disable=SC2086
  timeout "${MQAR_BUDGET:-900}" scripts/mqar_sweep.sh build-gpu ${MQAR_MIXERS:-} > "$OUT/mqar.log" 2>&1
  # one archive: the device tool brings back only a few files
  tar czf "$OUT/mqar_runs.tgz" -C "$OUT" mqar_sweep && rm -rf "$OUT/mqar_sweep"
  note "mqar: see mqar.log"
fi

for extra in $stages; do
  case "$extra" in build|tests|bench|step|brown|lrtc|delta|prof|mqar) ;; *) bash -c "$extra" > "$OUT/extra_$(echo "$extra" | tr -c 'a-zA-Z0-9' '_' | cut -c1-30).log" 2>&1 ;; esac
done

echo
echo "================ summary ================"
cat "$OUT/device.txt"
for s in "${summary[@]}"; do echo "$s"; done
if has bench; then grep -vE '^\{' "$OUT/bench.log" | grep -E '^(==|[A-Za-z_ ]+.*(GB/s|TFLOP|ms|us))' | head -90; fi
if has step; then grep -vE '^\{' "$OUT/step.log" | grep -E 'seqmix|torch|model step' ; fi
if has lrtc; then grep -E '^(==|kind|[a-z_]+ +(seqmix|torch))' "$OUT/lrtc.log" | head -60; fi
if has delta; then grep -vE '^\{' "$OUT/delta.log" | tail -20; fi
if has mqar; then tail -9 "$OUT/mqar.log"; fi
