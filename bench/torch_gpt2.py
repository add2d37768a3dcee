"""PyTorch peer of `seqmix_bench step`: the same GPT-2-124M-shaped model (learned positions, LayerNorm,
tanh-GELU MLP, tied embeddings, no linear biases, causal SDPA attention), bf16 autocast over f32 master
weights, fused AdamW, global-norm clipping. Times eager and torch.compile; prints tokens/s, MFU, peak memory.

    python3 bench/torch_gpt2.py [--batch 16] [--seq 1024] [--steps 20] [--no-compile]
    torchrun --nproc_per_node 2 bench/torch_gpt2.py --no-compile     # DistributedDataParallel, per-GPU batch
"""
import os
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, seq, d=768, layers=12, heads=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def flops_per_token(vocab, seq, d=768, layers=12):
    # forward matmul FLOPs per token (2 per multiply-add), causal attention at half the context
    per_layer = 2 * d * (3 * d + d) + 2 * d * 8 * d + 4 * d * seq / 2
    return layers * per_layer + 2 * d * vocab


def run(compile_model, args):
    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl")
    model = GPT(args.vocab, args.seq).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = model
    if world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    if compile_model:
        step_model = torch.compile(step_model)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for s in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if s >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    tokens = args.batch * args.seq * world  # all ranks
    flops = 3 * flops_per_token(args.vocab, args.seq) * tokens / world  # per GPU, for MFU
    return {
        "impl": ("torch.compile" if compile_model else "torch eager") + (f" DDP x{world}" if world > 1 else ""),
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": med * 1e3,
        "tok_per_s": tokens / med,
        "tflops": flops / med / 1e12,
        "mfu": flops / med / (args.peak_tflops * 1e12),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": loss.item(),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    results = [run(False, args)]
    if not args.no_compile:
        results.append(run(True, args))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for r in results:
        print(json.dumps(r))
    print(f"{'model step':28s} {'ms/step':>10s} {'tok/s':>12s} {'TFLOP/s':>10s} {'MFU':>8s} {'peak GiB':>12s}")
    for r in results:
        print(f"{r['impl'] + ' ' + str(r['params'] // 1000000) + 'M':28s} {r['ms_per_step']:10.2f} {r['tok_per_s']:12.0f} "
              f"{r['tflops']:10.1f} {100 * r['mfu']:7.1f}% {r['peak_mem_gib']:12.2f}")


if __name__ == "__main__":
    main()
