#!/usr/bin/env python3
"""PyTorch side of `seqmix bench recurrence`: the same shapes, JSON lines and table, with a plain PyTorch
chunked implementation of the gated linear recurrence as the side-by-side peer.

    python bench/torch_recurrence.py [--B 4] [--T 4096] [--H 16] [--D 128] [--long 65536]
                                     [--kinds gla,hgrn2,retnet,linear_attention,simple_gla] [--iters 20] [--warmup 3]
                                     [--no-long] [--compile]

Recurrence (per batch b, head h; state S [Dk, Dv]): S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,
o_t = scale * S_t^T q_t. gla: per-channel log-decays g [B, T, H, Dk] (hgrn2: the same, from a forget gate f
with lower bound 0.5, keys 1 - f); retnet: RetNet's fixed per-head decays [B, T, H] (no gradient);
simple_gla: a data-dependent one per head [B, T, H];
linear_attention: none.

Peer implementation (chunk C = 64, all in f32 with TF32 matmuls, autograd for the backward):
  G = cumulative log-decay within each chunk; A = tril((q e^G)(k e^-G)^T) (the plain factorization: fine
  for these inputs, whose per-chunk decay stays far from f32 overflow, unlike seqmix's kernel it would
  overflow for strong decays); o = A v + (q e^G) S_n; the chunk states S_n by a Python loop over chunks
  (S_{n+1} = e^{G_last} S_n + (k e^{G_last - G})^T v, batched over B and H).
flash-linear-attention is not installed on the GPU machine; the issue's targets for its chunk kernels
(H100, fwd+bwd at B=4 T=4096 H=16 D=128 bf16) are: gla <= 4.21 ms, retnet <= 2.21 ms,
linear_attention <= 1.84 ms.

Timing: fwd (inputs require grad, as in training) and fwd+bwd (torch.autograd.backward of o and the final
state with random gradients). Median of --iters runs, each between its own pair of CUDA events, after
--warmup runs. FLOPs as in seqmix's bench (the chunked algorithm's products, full C x C blocks):
forward 2 C (Dk + Dv) + 4 Dk Dv per token and head, backward 2 C (3 Dk + 2 Dv) + 8 Dk Dv.
"""
import argparse
import json
import math

import torch

from torch_timing import add_shape_args, median_ms  # bench/torch_timing.py

CHUNK = 64


def fwd_flops(B, T, H, Dk, Dv):
    return B * T * H * (2.0 * CHUNK * (Dk + Dv) + 4.0 * Dk * Dv)


def bwd_flops(B, T, H, Dk, Dv):
    return B * T * H * (2.0 * CHUNK * (3 * Dk + 2 * Dv) + 8.0 * Dk * Dv)


def chunked_recurrence(q, k, v, g, scale, C=CHUNK):
    """q, k [B, T, H, Dk], v [B, T, H, Dv], g [B, T, H, Dk] / [B, T, H] / None -> o [B, T, H, Dv] (v's dtype),
    final state [B, H, Dk, Dv] f32."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    N = (T + C - 1) // C
    pad = N * C - T

    def blocks(x):  # [B, T, H, D] -> [B, H, N, C, D] f32
        x = x.float()
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    if g is None:
        G = torch.zeros(B, H, N, C, 1, device=q.device)
    else:
        gg = g if g.dim() == 4 else g.unsqueeze(-1)
        G = blocks(gg).cumsum(dim=3)  # [B, H, N, C, Dk or 1]
    G_last = G[:, :, :, -1:, :]
    qe = qb * torch.exp(G) * scale
    ke = kb * torch.exp(-G)
    kl = kb * torch.exp(G_last - G)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = (qe @ ke.transpose(-1, -2)).masked_fill(~mask, 0.0)
    o = A @ vb  # [B, H, N, C, Dv]
    U = kl.transpose(-1, -2) @ vb  # [B, H, N, Dk, Dv]
    a = torch.exp(G_last).squeeze(3).unsqueeze(-1)  # [B, H, N, Dk or 1, 1]
    S = torch.zeros(B, H, Dk, Dv, device=q.device)
    states = []
    for n in range(N):
        states.append(S)
        S = a[:, :, n] * S + U[:, :, n]
    Sn = torch.stack(states, dim=2)  # [B, H, N, Dk, Dv]
    o = o + qe @ Sn
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, Dv)[:, :T]
    return o.to(v.dtype), S


def make_problem(kind, B, T, H, D, device):
    q = (torch.randn(B, T, H, D, device=device) / math.sqrt(D)).bfloat16()
    k = torch.randn(B, T, H, D, device=device).bfloat16()
    v = torch.randn(B, T, H, D, device=device).bfloat16()
    if kind == "gla":
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, D, device=device) + 2.0)
    elif kind == "hgrn2":  # forget gate f with lower bound 0.5, keys 1 - f (as seqmix's bench)
        f = 0.5 + 0.5 * torch.sigmoid(torch.randn(B, T, H, D, device=device))
        g = torch.log(f)
        k = (1.0 - f).bfloat16()
    elif kind == "retnet":  # RetNet's fixed decays 1 - 2^(-5-h): constants, no gradient (see measure)
        h = torch.arange(H, device=device, dtype=torch.float64)
        g = torch.log1p(-torch.exp2(-5.0 - h)).float().view(1, 1, H).expand(B, T, H).contiguous()
    elif kind == "simple_gla":  # a data-dependent per-head decay, with its gradient
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=device) + 2.0)
    elif kind == "linear_attention":
        g = None
    else:
        raise ValueError(f"unknown kind {kind} (gla, hgrn2, retnet, simple_gla, linear_attention)")
    dout = torch.randn(B, T, H, D, device=device).bfloat16()
    dfinal = torch.randn(B, H, D, D, device=device)
    return q, k, v, g, dout, dfinal


def measure(args, fn, kind, B, T):
    D, H = args.D, args.H
    q, k, v, g, dout, dfinal = make_problem(kind, B, T, H, D, "cuda")
    leaves = [x.detach().requires_grad_(True) if x is not None else None for x in (q, k, v)]
    leaves.append(None if g is None else g if kind == "retnet" else g.detach().requires_grad_(True))
    scale = 1.0 / math.sqrt(D)

    def fwd():
        fn(*leaves, scale)

    def fwd_bwd():
        o, S = fn(*leaves, scale)
        torch.autograd.backward([o, S], [dout, dfinal])
        for x in leaves:
            if x is not None and x.requires_grad:
                x.grad = None

    ms = [median_ms(fwd, args.warmup, args.iters), median_ms(fwd_bwd, args.warmup, args.iters)]
    ff = fwd_flops(B, T, H, D, D)
    flops = [ff, ff + bwd_flops(B, T, H, D, D)]
    tf = [f / (m * 1e-3) / 1e12 for f, m in zip(flops, ms)]
    for p, name in enumerate(["fwd", "fwd+bwd"]):
        print(json.dumps({"bench": "recurrence", "impl": args.impl, "kind": kind, "pass": name, "B": B, "T": T, "H": H,
                          "Dk": D, "Dv": D, "dtype": "bf16", "ms": round(ms[p], 4), "tflops": round(tf[p], 2),
                          "ns_per_token": round(ms[p] * 1e6 / (B * T), 3)}), flush=True)
    return {"kind": kind, "B": B, "T": T, "ms": ms, "tflops": tf}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--kinds", default="gla,hgrn2,retnet,linear_attention,simple_gla")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_recurrence: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(1234)
    fn = torch.compile(chunked_recurrence) if args.compile else chunked_recurrence
    args.impl = "torch-chunked" + ("-compiled" if args.compile else "")
    kinds = [k for k in args.kinds.split(",") if k]
    rows = [measure(args, fn, kind, args.B, args.T) for kind in kinds]
    print(f"\ngated linear recurrence, H={args.H} Dk=Dv={args.D} bf16 inputs, impl={args.impl} "
          f"(f32 compute, TF32 matmuls)")
    print(f"{'kind':<17} {'B':>4} {'T':>7} {'fwd ms':>10} {'TFLOP/s':>9} {'fwd+bwd ms':>12} {'TFLOP/s':>9}")
    for r in rows:
        print(f"{r['kind']:<17} {r['B']:>4} {r['T']:>7} {r['ms'][0]:>10.3f} {r['tflops'][0]:>9.2f} "
              f"{r['ms'][1]:>12.3f} {r['tflops'][1]:>9.2f}")
    print("targets (fwd+bwd, flash-linear-attention on an H100): gla <= 4.21 ms, retnet <= 2.21 ms, "
          "linear_attention <= 1.84 ms")
    if not args.no_long:
        sc = []
        for kind in kinds:
            sc.append(measure(args, fn, kind, 1, args.T))
            sc.append(measure(args, fn, kind, 1, args.long))
        print("\nlength scaling (B=1): time per token must stay flat")
        print(f"{'kind':<17} {'T':>7} {'fwd ms':>12} {'fwd ns/token':>14} {'fwd+bwd ms':>12} {'f+b ns/token':>14}")
        for r in sc:
            print(f"{r['kind']:<17} {r['T']:>7} {r['ms'][0]:>12.3f} {r['ms'][0] * 1e6 / r['T']:>14.3f} "
                  f"{r['ms'][1]:>12.3f} {r['ms'][1] * 1e6 / r['T']:>14.3f}")


if __name__ == "__main__":
    main()
