#!/usr/bin/env bash
# On the 2-GPU machine, after a build: 2 GPUs against 1 GPU with accumulation 2 (quickstart config, f32 reduction,
# 100 steps); the logged losses must agree to f32 rounding. Prints the largest difference.
#   scripts/ddp_equivalence.sh [SEQMIX_BINARY]      (default build-gpu/seqmix; logs in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
B=${1:-build-gpu/seqmix}
Q=(configs/quickstart.yaml --set model.dropout=0 --set train.steps=100 --set train.eval_every=0 --set train.ckpt_every=0 --set train.log_every=10 --set train.dist_timeout=60)
timeout 60 $B train "${Q[@]}" --set run.name=q1 --device cuda --set train.grad_accum=2 > "$OUT/q1.log" 2>&1
timeout 60 $B train "${Q[@]}" --set run.name=q2 --gpus 2 > "$OUT/q2.log" 2>&1
python3 - <<'PY'
import json
def losses(n): return {r["step"]: r["loss"] for r in map(json.loads, open(f"runs/{n}/metrics.jsonl")) if "lr" in r}
a, b = losses("q1"), losses("q2"); c = sorted(set(a) & set(b))
print(f"2 GPUs vs 1 GPU with accumulation 2 (quickstart, f32 reduction): {len(c)} logged steps, max |loss diff| {max(abs(a[s]-b[s]) for s in c):.3g}")
PY
