#!/usr/bin/env python3
"""PyTorch side of `seqmix bench delta`: a plain PyTorch chunked (WY / UT) delta rule as the side-by-side
peer and GPU oracle, on the same shapes. It checks itself against a token-by-token loop in f64 before
timing, and stops if they disagree (run on the lent H100: docs/PERF.md, "Delta rules").

    python bench/torch_delta.py [--B 4] [--T 4096] [--H 16] [--D 128] [--long 65536] [--iters 20]
                                [--warmup 3] [--no-long] [--compile]

Recurrence (per batch b, head h; state S [Dk, Dv]; q, k L2-normalized per head):
  S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,  o_t = scale * S_t^T q_t
deltanet: a_t = 1; gated_deltanet: a_t = exp(g_t), one log decay per head.

Chunked form (chunk C = 64, f32 with TF32 matmuls, autograd for the backward), G the cumulative log decay
inside a chunk, Gamma_ts = exp(G_t - G_s) for s <= t:
  A = strict_lower(diag(b) K K^T * Gamma), T = (I + A)^-1 (a unit-lower triangular solve),
  W = T diag(b e^G) K, U = T diag(b) V, then over the chunks in order: U' = U - W S,
  O = e^G (Q S) + (Q K^T * Gamma, lower incl.) U',  S <- e^{G_C} S + (e^{G_C - G} K)^T U'.
flash-linear-attention's chunk_delta_rule is used too when it imports (it is not installed on the lent
machine; the issue's figure for it there: deltanet fwd+bwd <= 3.34 ms at B=4 T=4096 H=16 D=128 bf16).
"""
import argparse
import json
import math

import torch

from torch_timing import add_shape_args, median_ms  # bench/torch_timing.py

CHUNK = 64


def l2norm(x, eps=1e-6):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def delta_reference(q, k, v, beta, g, scale):
    """Token by token, in the inputs' dtype (use f64): o [B, T, H, Dv], final state [B, H, Dk, Dv]."""
    B, T, H, Dk = q.shape
    q, k = l2norm(q), l2norm(k)
    S = torch.zeros(B, H, Dk, v.shape[-1], dtype=q.dtype, device=q.device)
    outs = []
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        a = torch.exp(g[:, t])[:, :, None, None] if g is not None else 1.0
        kS = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = a * (S - bt * torch.einsum("bhk,bhv->bhkv", kt, kS)) + bt * torch.einsum("bhk,bhv->bhkv", kt, vt)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, 1), S


def delta_chunked(q, k, v, beta, g, scale, C=CHUNK):
    """q, k [B, T, H, Dk], v [B, T, H, Dv], beta [B, T, H], g [B, T, H] or None -> o (v's dtype), S f32."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    N = (T + C - 1) // C
    pad = N * C - T
    work = torch.float64 if q.dtype == torch.float64 else torch.float32

    def blocks(x):  # [B, T, H, D] -> [B, H, N, C, D]
        x = x.to(work)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4)

    Q, K, V = blocks(l2norm(q.to(work))), blocks(l2norm(k.to(work))), blocks(v)
    b = blocks(beta.unsqueeze(-1))  # [B, H, N, C, 1] (padding: beta 0, no update)
    G = blocks(g.unsqueeze(-1)).cumsum(3) if g is not None else torch.zeros_like(b)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (G - G.transpose(-1, -2)).masked_fill(~lower, 0.0)  # G_t - G_s, 0 above the diagonal
    gamma = torch.exp(diff).masked_fill(~lower, 0.0)  # [B, H, N, C, C]
    A = ((b * K) @ K.transpose(-1, -2) * gamma).tril(-1)
    eye = torch.eye(C, dtype=work, device=q.device)
    Tinv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    W = Tinv @ (b * torch.exp(G) * K)
    U = Tinv @ (b * V)
    QK = Q @ K.transpose(-1, -2) * gamma
    Qg = torch.exp(G) * Q
    Kend = torch.exp(G[:, :, :, -1:] - G) * K
    decay_end = torch.exp(G[:, :, :, -1:])  # [B, H, N, 1, 1]
    S = torch.zeros(B, H, Dk, Dv, dtype=work, device=q.device)
    outs = []
    for n in range(N):
        Un = U[:, :, n] - W[:, :, n] @ S
        outs.append(Qg[:, :, n] @ S + QK[:, :, n] @ Un)
        S = decay_end[:, :, n] * S + Kend[:, :, n].transpose(-1, -2) @ Un
    o = torch.stack(outs, 2).permute(0, 2, 3, 1, 4).reshape(B, N * C, H, Dv)[:, :T] * scale
    return o.to(v.dtype), S


def self_check(device):
    torch.manual_seed(7)
    for gated in (False, True):
        for T in (1, 63, 65, 130):
            B, H, D = 2, 2, 16
            q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64, device=device) for _ in range(3))
            beta = torch.sigmoid(torch.randn(B, T, H, dtype=torch.float64, device=device))
            g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, dtype=torch.float64, device=device) + 2) if gated else None
            o1, s1 = delta_reference(q, k, v, beta, g, 0.25)
            o2, s2 = delta_chunked(q, k, v, beta, g, 0.25)
            err = max((o1 - o2).abs().max().item() / o1.abs().max().item(), (s1 - s2).abs().max().item() / s1.abs().max().item())
            if not err < 1e-9:
                raise SystemExit(f"torch_delta: chunked != token loop (gated={gated} T={T}): rel err {err:.3g}")
    print("torch_delta: chunked == token-by-token loop (f64, T = 1, 63, 65, 130, plain and gated)", flush=True)


def make_problem(gated, B, T, H, D, device):
    q = torch.randn(B, T, H, D, device=device).bfloat16()
    k = torch.randn(B, T, H, D, device=device).bfloat16()
    v = torch.randn(B, T, H, D, device=device).bfloat16()
    beta = torch.sigmoid(torch.randn(B, T, H, device=device)).bfloat16()
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=device) + 2.0) if gated else None
    dout = torch.randn(B, T, H, D, device=device).bfloat16()
    dfinal = torch.randn(B, H, D, D, device=device)
    return q, k, v, beta, g, dout, dfinal


def measure(args, fn, impl, gated, B, T):
    D, H = args.D, args.H
    q, k, v, beta, g, dout, dfinal = make_problem(gated, B, T, H, D, "cuda")
    leaves = [x.detach().requires_grad_(True) if x is not None else None for x in (q, k, v, beta, g)]
    scale = 1.0 / math.sqrt(D)

    def fwd():
        fn(*leaves, scale)

    def fwd_bwd():
        o, S = fn(*leaves, scale)
        torch.autograd.backward([o, S], [dout, dfinal.to(S.dtype)])
        for x in leaves:
            if x is not None:
                x.grad = None

    ms = [median_ms(fwd, args.warmup, args.iters), median_ms(fwd_bwd, args.warmup, args.iters)]
    kind = "gated_deltanet" if gated else "deltanet"
    for p, name in enumerate(["fwd", "fwd+bwd"]):
        print(json.dumps({"bench": "delta", "impl": impl, "kind": kind, "pass": name, "B": B, "T": T, "H": H, "D": D,
                          "dtype": "bf16", "ms": round(ms[p], 4), "ns_per_token": round(ms[p] * 1e6 / (B * T), 3)}),
              flush=True)
    return {"impl": impl, "kind": kind, "B": B, "T": T, "ms": ms}


def fla_fn():
    try:
        from fla.ops.delta_rule import chunk_delta_rule  # noqa: PLC0415 (optional peer)
    except Exception:  # not installed, or it fails to import on this machine
        return None

    def run(q, k, v, beta, g, scale):
        if g is not None:
            raise NotImplementedError
        o, s = chunk_delta_rule(l2norm(q), l2norm(k), v, beta, scale=scale, output_final_state=True)
        return o, s
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_delta: no CUDA device")
    self_check("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(1234)
    fn = torch.compile(delta_chunked) if args.compile else delta_chunked
    impl = "torch-chunked" + ("-compiled" if args.compile else "")
    rows = [measure(args, fn, impl, gated, args.B, args.T) for gated in (False, True)]
    fla = fla_fn()
    if fla is not None:
        try:
            rows.append(measure(args, fla, "fla", False, args.B, args.T))
        except Exception as e:  # an API or compiler mismatch on this machine: say so, keep the table
            print(f"torch_delta: flash-linear-attention's chunk_delta_rule failed: {e}", flush=True)
    print(f"\ndelta rule, H={args.H} Dk=Dv={args.D} bf16 inputs (torch-chunked: f32 compute, TF32 matmuls)")
    print(f"{'kind':<16} {'impl':<22} {'B':>4} {'T':>7} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    for r in rows:
        print(f"{r['kind']:<16} {r['impl']:<22} {r['B']:>4} {r['T']:>7} {r['ms'][0]:>10.3f} {r['ms'][1]:>12.3f}")
    print("target (fwd+bwd, flash-linear-attention's chunk_delta_rule on an H100): deltanet <= 3.34 ms")
    if not args.no_long:
        sc = []
        for gated in (False, True):
            sc.append(measure(args, fn, impl, gated, 1, args.T))
            sc.append(measure(args, fn, impl, gated, 1, args.long))
        print("\nlength scaling (B=1): time per token must stay flat")
        print(f"{'kind':<16} {'T':>7} {'fwd+bwd ms':>12} {'f+b ns/token':>14}")
        for r in sc:
            print(f"{r['kind']:<16} {r['T']:>7} {r['ms'][1]:>12.3f} {r['ms'][1] * 1e6 / r['T']:>14.3f}")


if __name__ == "__main__":
    main()
