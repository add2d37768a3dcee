#!/usr/bin/env bash
# On a 2-GPU machine (after scripts/gpu_check.sh build): data-parallel equivalence (1 GPU x accum 2 ==
# 2 GPUs == 2 GPUs ZeRO-1), a 2-GPU run stopped and resumed on 1 and on 2 GPUs, a killed rank, and
# GPT-2-124M throughput on 1 and 2 GPUs beside PyTorch DDP. Prints a summary at the end.
#   scripts/ddp_check.sh [BUILD_DIR]          (needs data_cache/brown-word)
set -uo pipefail
B=${1:-build-gpu}/seqmix
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
C=configs/quickstart.yaml
S=(--set model.dropout=0 --set train.steps=200 --set train.eval_every=0 --set train.ckpt_every=0 --set train.log_every=10)
run() { local name=$1; shift; "$B" train "$C" "${S[@]}" --set run.name="$name" "$@" > "$OUT/$name.log" 2>&1; echo "$name: exit $?"; }

run dp1 --device cuda --set train.grad_accum=2
run dp2 --gpus 2
run z2 --gpus 2 --set train.zero1=true
# stop a 2-GPU ZeRO-1 run at step 100, resume on 1 GPU (accum 2) and, from a copy, on 2 GPUs
run rs1 --gpus 2 --set train.zero1=true --set train.stop_at=100
cp -r runs/rs1 runs/rs2
run rs1 --device cuda --set train.grad_accum=2 --resume auto
run rs2 --gpus 2 --resume auto

python3 - "$OUT" <<'PY'
import json, sys
def losses(name):
    out = {}
    for line in open(f"runs/{name}/metrics.jsonl"):
        r = json.loads(line)
        if "lr" in r: out[r["step"]] = r["loss"]
    return out
ref = losses("dp1")
for name in ["dp2", "z2", "rs1", "rs2"]:
    o = losses(name)
    common = sorted(set(ref) & set(o))
    diff = max(abs(ref[s] - o[s]) for s in common)
    print(f"{name:4s} vs dp1 (1 GPU, accum 2): {len(common)} logged steps, max |loss diff| {diff:.3g}; "
          f"step {common[-1]}: {o[common[-1]]:.5f} vs {ref[common[-1]]:.5f}")
PY

# a rank killed mid-run: the launcher must stop the other and name the rank within the timeout
"$B" train "$C" --set run.name=kill --set train.steps=100000 --set train.dist_timeout=30 --gpus 2 > "$OUT/kill.log" 2>&1 &
launcher=$!
sleep 25
victim=$(pgrep -f "seqmix train $C" | grep -v "^$launcher$" | tail -1)
t0=$(date +%s.%N)
kill -9 "$victim"
wait "$launcher"
echo "kill: launcher exit $? after $(python3 -c "import time;print(round(time.time()-$t0,1))") s: $(grep -iE 'rank' "$OUT/kill.log" | tail -2 | tr '\n' ' ')"

# throughput: GPT-2-124M shape, per-GPU batch 16 x 1024, bf16, on Brown (word level)
G=(--set data.source=brown --set data.tokenizer=word --set data.vocab_size=0 --set train.steps=40 --set train.log_every=10
   --set train.eval_every=0 --set train.ckpt_every=0 --set train.warmup=5)
"$B" train configs/gpt2-124m.yaml "${G[@]}" --set run.name=tp1 --device cuda > "$OUT/tp1.log" 2>&1
"$B" train configs/gpt2-124m.yaml "${G[@]}" --set run.name=tp2 --gpus 2 > "$OUT/tp2.log" 2>&1
echo "seqmix 1 GPU: $(grep -oE '[0-9.]+[KM]? tok/s' "$OUT/tp1.log" | tail -1); 2 GPUs: $(grep -oE '[0-9.]+[KM]? tok/s' "$OUT/tp2.log" | tail -1)"
timeout 200 python3 bench/torch_gpt2.py --no-compile --steps 20 --vocab 14114 2>&1 | tail -1
timeout 200 torchrun --standalone --nproc_per_node 2 bench/torch_gpt2.py --no-compile --steps 20 --vocab 14114 2>&1 | tail -1
