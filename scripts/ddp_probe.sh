#!/usr/bin/env bash
# On the 2-GPU machine: where does a 2-GPU step lose time against a 1-GPU step? GPT-2-124M (Brown, word level,
# per-GPU batch 16 x 1024, bf16), in one call:
#   1. seqmix_bench step on GPU 0, then the same steps again with peer access to GPU 1 enabled (--peer 1):
#      does mapping the other GPU's memory alone slow the kernels?
#   2. 1 GPU, 2 GPUs (bf16 reduction, one bucket) and 2 GPUs with NCCL_P2P_DISABLE=1, each with the per-kernel
#      trace (SEQMIX_KERNEL_TRACE) over steps 100-300; then the kernels whose time per step changed most.
#   3. Timelines of 3 steps of the 1- and 2-GPU runs: the GPU's idle gaps by step phase (scripts/timeline_gaps.py).
#   4. Untraced throughput, 1 and 2 GPUs, and under each setting of VARIANTS="NCCL_MIN_NCHANNELS=32 ...".
# Stage 1 only with PEER=1, stage 2 only with AGG=1, stage 3 with TL=1, stage 4 with THROUGHPUT=1 or VARIANTS
# (VARIANTS1: 1 GPU, VARIANTS_DEFAULT: 2 GPUs with the default buckets); TESTS=1 first runs the
# gpu tests (ctest -L gpu), EQUIV=1 scripts/ddp_equivalence.sh, TORCH=1 adds PyTorch DDP to stage 4.
#   scripts/ddp_probe.sh          (needs .deps and data_cache/brown-word carried, as scripts/ddp_scaling.sh)
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
build_gpu seqmix seqmix_bench test_gpu || exit 1
echo "trace test: $(timeout 60 build-gpu/tests/test_gpu --gtest_filter='KernelTrace*' 2>&1 | grep -E '^\[  (PASSED|FAILED|SKIPPED) ' | tr '\n' ' ')"
if [ -n "${TESTS:-}" ]; then
  (cd build-gpu && timeout 240 ctest -L gpu -j 8 --timeout 200) > "$OUT/tests.log" 2>&1
  echo "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/tests.log" | tail -1)"
  grep -E "\((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)\)" "$OUT/tests.log" | head -20
fi
B=build-gpu/seqmix
[ -n "${EQUIV:-}" ] && bash scripts/ddp_equivalence.sh "$B"
STEPS=${STEPS:-300}
G=(configs/gpt2-124m.yaml --set data.source=brown --set data.tokenizer=word --set data.vocab_size=0 --set train.log_every=10
   --set train.eval_every=0 --set train.ckpt_every=0 --set train.warmup=5 --set train.steps=$STEPS --set train.dist_timeout=60)
TWO=(--gpus 2 --set train.reduce_dtype=bf16 --set train.bucket_mb=1000)
tps() { grep -oE '[0-9.]+[KM]? tok/s' "$1" | tail -6 | sed 's/ tok\/s//' |
        awk '{v=$1; if (v ~ /K$/) v=v*1e3; else if (v ~ /M$/) v=v*1e6; s+=v; n++} END {if (n) printf "%.1fK", s/n/1e3}'; }
r() { local name=$1; shift; timeout 90 $B train "${G[@]}" --set run.name=$name "$@" > "$OUT/$name.log" 2>&1
      echo "$name: $(tps $OUT/$name.log) tok/s (mean of the last 6 windows); $(grep -oE 'per step: .*' $OUT/$name.log | head -1)"; }

if [ -n "${PEER:-}" ]; then
  echo "== 1. peer access alone (seqmix_bench step, GPU 0)"
  timeout 120 build-gpu/seqmix_bench step --config configs/gpt2-124m.yaml --vocab 14114 --steps 40 --warmup 8 --peer 1 2>&1 | grep -E "peer access|^seqmix"

fi

if [ -n "${AGG:-}" ]; then
echo "== 2. traced runs (steps 100..$STEPS)"
export SEQMIX_KERNEL_TRACE_FROM=100
SEQMIX_KERNEL_TRACE=$OUT/k_one.csv r one --device cuda
SEQMIX_KERNEL_TRACE=$OUT/k_two.csv r two "${TWO[@]}"
SEQMIX_KERNEL_TRACE=$OUT/k_nop2p.csv NCCL_P2P_DISABLE=1 r nop2p "${TWO[@]}"
unset SEQMIX_KERNEL_TRACE_FROM
python3 - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
def load(n):
    try: return {r["name"]: float(r["ms_per_step"]) for r in csv.DictReader(open(f"{out}/k_{n}.csv"))}
    except FileNotFoundError: return {}
one, two, nop = load("one"), load("two"), load("nop2p")
print(f"kernel time per step: 1 GPU {sum(one.values()):.3f} ms, 2 GPUs {sum(two.values()):.3f}, 2 GPUs no P2P {sum(nop.values()):.3f}")
names = sorted(set(one) | set(two), key=lambda n: -abs(two.get(n, 0) - one.get(n, 0)))
print(f"{'ms/step: 1 GPU':>15} {'2 GPUs':>8} {'no P2P':>8} {'2-1':>7}  kernel")
for n in names[:25]:
    a, b, c = one.get(n, 0), two.get(n, 0), nop.get(n, 0)
    print(f"{a:15.3f} {b:8.3f} {c:8.3f} {b - a:+7.3f}  {n[:110]}")
PY
fi

if [ -n "${TL:-}" ]; then
echo "== 3. timelines: 3 steps from step 100 (SEQMIX_KERNEL_TRACE_STEPS=3), GPU idle by step phase"
export SEQMIX_KERNEL_TRACE_FROM=100 SEQMIX_KERNEL_TRACE_STEPS=3
SEQMIX_KERNEL_TRACE=$OUT/t_one.csv r tone --device cuda --set train.steps=104
SEQMIX_KERNEL_TRACE=$OUT/t_two.csv r ttwo "${TWO[@]}" --set train.steps=104
for t in t_one t_two; do python3 scripts/timeline_gaps.py "$OUT/$t.timeline.csv" 3 "${TOP:-12}"; done
# the same 2-GPU timeline under other settings (one line each): TL_VARIANTS="NCCL_MEM_SYNC_DOMAIN=0 ..."
for v in ${TL_VARIANTS:-}; do
  name=tl_${v%%=*}
  (export "$v"; SEQMIX_KERNEL_TRACE=$OUT/$name.csv r "$name" "${TWO[@]}" --set train.steps=104 > /dev/null)
  echo -n "$v: "; python3 scripts/timeline_gaps.py "$OUT/$name.timeline.csv" 3 0
done
unset SEQMIX_KERNEL_TRACE_FROM SEQMIX_KERNEL_TRACE_STEPS
fi

if [ -n "${VARIANTS:-}${THROUGHPUT:-}" ]; then
echo "== 4. untraced throughput: 1 GPU, 2 GPUs, and 2 GPUs under each NCCL setting in VARIANTS"
r base1 --device cuda
r base2 "${TWO[@]}"
for v in ${VARIANTS:-}; do (export "$v"; r "v2_${v//=/_}" "${TWO[@]}"); done        # 2 GPUs, bf16, one bucket
for v in ${VARIANTS1:-}; do (export "$v"; r "v1_${v//=/_}" --device cuda); done       # 1 GPU
for v in ${VARIANTS_DEFAULT:-}; do (export "$v"; r "vd_${v//=/_}" --gpus 2); done     # 2 GPUs, default buckets
if [ -n "${TORCH:-}" ]; then  # the peer, same model and batch: PyTorch eager DDP
  echo "torch 1 GPU: $(timeout 120 python3 bench/torch_gpt2.py --no-compile --steps 30 --vocab 14114 2>&1 | tail -1)"
  echo "torch 2 GPUs: $(timeout 150 torchrun --standalone --nproc_per_node 2 bench/torch_gpt2.py --no-compile --steps 30 --vocab 14114 2>&1 | grep -v Warning | tail -1)"
fi
fi
