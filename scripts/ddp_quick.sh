#!/usr/bin/env bash
# On the 2-GPU machine, one short call: GPT-2-124M throughput on 1 GPU and on 2 GPUs (bf16 reduction, one bucket),
# 2 GPUs against 1 GPU with accumulation 2 (quickstart, f32 reduction: the losses must agree to f32 rounding),
# the optimizer / gradient-norm / delta-rule GPU tests, the delta-rule benchmark and one racecheck case.
#   scripts/ddp_quick.sh          (needs .deps and data_cache/brown-word, as scripts/ddp_scaling.sh)
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
build_gpu seqmix test_gpu seqmix_bench || exit 1
B=build-gpu/seqmix
G=(configs/gpt2-124m.yaml --set data.source=brown --set data.tokenizer=word --set data.vocab_size=0 --set train.log_every=10
   --set train.eval_every=0 --set train.ckpt_every=0 --set train.warmup=5 --set train.steps=400 --set train.dist_timeout=60)
r() { local name=$1; shift; timeout 70 $B train "${G[@]}" --set run.name=$name "$@" > "$OUT/$name.log" 2>&1
      echo "$name: $(grep -oE '[0-9.]+[KM]? tok/s' $OUT/$name.log | tail -6 | tr '\n' ' ')"; }
r one --device cuda
r two_bf16 --gpus 2 --set train.reduce_dtype=bf16 --set train.bucket_mb=1000
bash scripts/ddp_equivalence.sh "$B"
echo "gpu tests:"; timeout 90 build-gpu/tests/test_gpu --gtest_filter="*AdamW*:*GradNorm*:*Delta*" 2>&1 | grep -E "PASSED|FAILED|tests ran" | head -12
python3 - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
def tps(n):
    v = [float(x[:-1]) * (1e3 if x.endswith('K') else 1e6) for x in re.findall(r'([0-9.]+[KM]) tok/s', open(f"{out}/{n}.log").read())][-6:]
    return sum(v) / len(v) if v else float('nan')
one = tps("one")
for n in ["one", "two_bf16"]:
    print(f"{n:12s} {tps(n)/1e3:8.1f}K tok/s (mean of the last 6 windows)  {tps(n)/one:.3f}x")
PY
echo "delta bench (H200):"; timeout 60 build-gpu/seqmix_bench delta --no-ops --no-long --iters 10 2>&1 | grep -vE "^\{" | tail -6
echo "racecheck:"; timeout 45 compute-sanitizer --tool racecheck build-gpu/tests/test_gpu --gtest_filter='Bf16/DeltaRuleGpuVsCpu.*/7' 2>&1 | tail -3
