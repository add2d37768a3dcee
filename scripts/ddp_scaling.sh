#!/usr/bin/env bash
# On the 2-GPU machine: GPT-2-124M data-parallel throughput on 1 and 2 GPUs (seqmix and PyTorch DDP in
# the same call), the per-phase step profile (SEQMIX_STEP_PROFILE), NCCL channel counts, and ZeRO-1 vs
# plain data parallel with and without gradient clipping. Builds only the seqmix binary.
#   scripts/ddp_scaling.sh            (needs .deps and data_cache/brown-word carried)
# Environment: STEPS (60), CHANNELS ("4 8 16"), MARGINS ("8 16 32"; empty skips), SOLO ("0 1"; empty skips), NOBASE=1
# (no plain 2-GPU run), NOPROF=1 (no profiled runs), NOTORCH=1 (no PyTorch DDP), SKIP_ZERO=1 (no ZeRO-1 part),
# EXTRA="..." (more bash run lines, e.g. 'run x $B train ...', evaluated before the ZeRO-1 part).
set -uo pipefail
OUT=${OUT:-/tmp/seqmix_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
configure_gpu_build > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cmake --build build-gpu -j 32 --target seqmix >> "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
B=build-gpu/seqmix

G=(--set data.source=brown --set data.tokenizer=word --set data.vocab_size=0 --set train.steps=${STEPS:-60} --set train.log_every=10
   --set train.eval_every=0 --set train.ckpt_every=0 --set train.warmup=5)
tps() { grep -oE '[0-9.]+[KM]? tok/s' "$1" | tail -1; }
# every run capped (a stuck NCCL setting must not eat the call: NCCL_P2P_USE_CUDA_MEMCPY=1 hung at the first
# collective on the lent H200 pair), and a rank that stops answering ends the run within 60 s
run() { local name=$1; shift; timeout ${RUN_TIMEOUT:-240} "$@" --set run.name=$name --set train.dist_timeout=60 > "$OUT/$name.log" 2>&1; echo "$name: $(tps "$OUT/$name.log") $(grep -o 'step profile.*' "$OUT/$name.log" | tail -1)"; }
run tp1 $B train configs/gpt2-124m.yaml "${G[@]}" --device cuda
[ -z "${NOBASE:-}" ] && run tp2 $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2
for ch in ${CHANNELS-4 8 16}; do NCCL_MAX_NCHANNELS=$ch run tp2_ch$ch $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2; done
# GEMMs leaving SMs to NCCL while buckets are reduced (train.comm_sm_margin), NCCL held to as many channels
for m in ${MARGINS-8 16 32}; do
  NCCL_MAX_NCHANNELS=$m SEQMIX_STEP_PROFILE=1 run tp2_m$m $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2 --set train.comm_sm_margin=$m
done
# gradients reduced in bf16 (train.reduce_dtype: half the bytes), alone and with the best-guess margin
[ -z "${NOPROF:-}" ] && SEQMIX_STEP_PROFILE=1 run tp2_bf16 $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2 --set train.reduce_dtype=bf16
[ -z "${NOPROF:-}" ] && NCCL_MAX_NCHANNELS=16 SEQMIX_STEP_PROFILE=1 run tp2_bf16_m16 $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2 --set train.reduce_dtype=bf16 --set train.comm_sm_margin=16
# each GPU alone (the two GPUs of one machine need not be equally fast; data parallel waits for the slower)
for i in ${SOLO-0 1}; do CUDA_VISIBLE_DEVICES=$i SEQMIX_STEP_PROFILE=1 run solo$i $B train configs/gpt2-124m.yaml "${G[@]}" --device cuda; done
[ -z "${NOPROF:-}" ] && SEQMIX_STEP_PROFILE=1 run tp1_prof $B train configs/gpt2-124m.yaml "${G[@]}" --device cuda
[ -z "${NOPROF:-}" ] && SEQMIX_STEP_PROFILE=1 run tp2_prof $B train configs/gpt2-124m.yaml "${G[@]}" --gpus 2
[ -z "${NOTORCH:-}" ] && timeout 200 python3 bench/torch_gpt2.py --no-compile --steps 30 --vocab 14114 2>&1 | tail -1
[ -z "${NOTORCH:-}" ] && timeout 200 torchrun --standalone --nproc_per_node 2 bench/torch_gpt2.py --no-compile --steps 30 --vocab 14114 2>&1 | grep -v Warning | tail -1

[ -n "${EXTRA:-}" ] && eval "$EXTRA"
[ -n "${SKIP_ZERO:-}" ] && exit 0
# ZeRO-1 vs plain data parallel on 2 GPUs, 200 steps, with the default clipping and without
Q=(--set model.dropout=0 --set train.steps=200 --set train.eval_every=0 --set train.ckpt_every=0 --set train.log_every=10)
for clip in 1.0 0; do
  $B train configs/quickstart.yaml "${Q[@]}" --set train.grad_clip=$clip --set run.name=dp2_c$clip --gpus 2 > "$OUT/dp2_c$clip.log" 2>&1
  $B train configs/quickstart.yaml "${Q[@]}" --set train.grad_clip=$clip --set run.name=z2_c$clip --gpus 2 --set train.zero1=true > "$OUT/z2_c$clip.log" 2>&1
done
python3 - <<'PY'
import json
def losses(name):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"runs/{name}/metrics.jsonl")) if "lr" in r}
for clip in ["1.0", "0"]:
    a, b = losses(f"dp2_c{clip}"), losses(f"z2_c{clip}")
    common = sorted(set(a) & set(b))
    d = max(abs(a[s] - b[s]) for s in common) if common else float("nan")
    same = sum(a[s] == b[s] for s in common)
    print(f"grad_clip {clip}: ZeRO-1 vs plain, {len(common)} logged steps, {same} bitwise equal, max |loss diff| {d:.3g}")
PY
