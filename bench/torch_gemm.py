#!/usr/bin/env python3
"""PyTorch side of `seqmix bench gemm`: the same measurements, the same JSON lines and table.

    python bench/torch_gemm.py [--sizes 4096,8192] [--iters 50] [--warmup 10] [--no-conv] [--no-gemm]

GEMMs: bf16 C = A @ B and C = A @ B^T (torch.mm with out=, default PyTorch settings).
fft_conv: x [4, 4096, 1024] bf16, k [1024, 4096]: rfft/irfft along time in f32 padded to the same
  7-smooth length seqmix uses (>= T + L - 1), cast back to bf16; backward through autograd.
conv1d: depthwise causal K=4 with F.conv1d(groups=C) on the [B, C, T] layout PyTorch prefers (the
  transpose is done once, outside the timing).
Every timing is the median of --iters runs, each between its own pair of CUDA events, after --warmup.
"""
import argparse
import json

import torch
import torch.nn.functional as F

from torch_timing import median_ms  # bench/torch_timing.py


def fft_size(need):
    n = max(need, 2)
    while True:
        if n % 2 == 0:
            m = n
            for p in (2, 3, 5, 7):
                while m % p == 0:
                    m //= p
            if m == 1:
                return n
        n += 1


def fft_conv(x, k):
    """Causal long convolution y[b,t,c] = sum_{s<=t} k[c,s] x[b,t-s,c] (f32 FFTs, input dtype out)."""
    T, L = x.shape[1], k.shape[1]
    n = fft_size(T + L - 1)
    xf = torch.fft.rfft(x.float(), n=n, dim=1)  # [B, F, C]
    kf = torch.fft.rfft(k.float(), n=n, dim=1)  # [C, F]
    y = torch.fft.irfft(xf * kf.t().unsqueeze(0), n=n, dim=1)[:, :T]
    return y.to(x.dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096,8192")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-conv", action="store_true")
    ap.add_argument("--no-gemm", action="store_true")
    args = ap.parse_args()
    iters = max(args.iters, 20)
    if not torch.cuda.is_available():
        raise SystemExit("torch_gemm.py: no CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(1234)
    rows = []

    def add(op, shape, ms, tflops=0.0, gbps=0.0):
        rec = {"bench": "gemm", "op": op, "shape": shape, "ms": round(ms, 4)}
        if tflops > 0:
            rec["tflops"] = round(tflops, 1)
        if gbps > 0:
            rec["gbps"] = round(gbps, 1)
        rec["impl"] = "torch"
        print(json.dumps(rec, separators=(",", ":")), flush=True)
        rows.append((op, shape, ms, tflops, gbps))

    if not args.no_gemm:
        for s in (int(v) for v in args.sizes.split(",") if v):
            a = torch.randn(s, s, device=dev, dtype=torch.bfloat16)
            b = torch.randn(s, s, device=dev, dtype=torch.bfloat16)
            c = torch.empty(s, s, device=dev, dtype=torch.bfloat16)
            flop = 2.0 * s * s * s
            shape = f"{s}x{s}x{s}"
            for tb in (False, True):
                bb = b.t() if tb else b
                ms = median_ms(lambda: torch.mm(a, bb, out=c), args.warmup, iters)
                add("gemm bf16 " + ("A@B^T" if tb else "A@B"), shape, ms, flop / (ms * 1e-3) / 1e12)

    if not args.no_conv:
        B, T, C, L, K = 4, 4096, 1024, 4096, 4
        shape = "B4 T4096 C1024"
        act = B * T * C * 2.0
        x = torch.randn(B, T, C, device=dev, dtype=torch.bfloat16)
        g = torch.randn(B, T, C, device=dev, dtype=torch.bfloat16)
        k = (torch.randn(C, L, device=dev, dtype=torch.bfloat16) * 0.01)
        with torch.no_grad():
            ms = median_ms(lambda: fft_conv(x, k), args.warmup, iters)
        add("fft_conv fwd bf16 L=4096", shape, ms, 0, 2 * act / (ms * 1e-3) / 1e9)
        xr, kr = x.clone().requires_grad_(), k.clone().requires_grad_()
        y = fft_conv(xr, kr)
        msb = median_ms(lambda: torch.autograd.grad(y, (xr, kr), g, retain_graph=True), args.warmup, iters)
        add("fft_conv bwd bf16 L=4096", shape, msb, 0, 3 * act / (msb * 1e-3) / 1e9)
        msfb = median_ms(lambda: torch.autograd.grad(fft_conv(xr, kr), (xr, kr), g), args.warmup, iters)
        add("fft_conv fwd+bwd bf16", shape, msfb)
        del y

        xc = x.transpose(1, 2).contiguous()  # [B, C, T]
        gc = g.transpose(1, 2).contiguous()
        w = torch.randn(C, 1, K, device=dev, dtype=torch.bfloat16)
        bias = torch.randn(C, device=dev, dtype=torch.bfloat16)
        conv = lambda inp, ww, bb: F.conv1d(inp, ww, bb, padding=K - 1, groups=C)[..., :T]
        with torch.no_grad():
            ms = median_ms(lambda: conv(xc, w, bias), args.warmup, iters)
        add("conv1d fwd bf16 K=4", shape, ms, 0, 2 * act / (ms * 1e-3) / 1e9)
        xcr, wr, br = xc.clone().requires_grad_(), w.clone().requires_grad_(), bias.clone().requires_grad_()
        yc = conv(xcr, wr, br)
        msb = median_ms(lambda: torch.autograd.grad(yc, (xcr, wr, br), gc, retain_graph=True), args.warmup, iters)
        add("conv1d bwd bf16 K=4", shape, msb, 0, 3 * act / (msb * 1e-3) / 1e9)

    print()
    print(f"{'op':<28} {'shape':<26} {'ms':>10} {'TFLOP/s':>10} {'GB/s':>10}")
    for op, shape, ms, tf, gb in rows:
        tfs = f"{tf:.1f}" if tf > 0 else "-"
        gbs = f"{gb:.1f}" if gb > 0 else "-"
        print(f"{op:<28} {shape:<26} {ms:>10.4f} {tfs:>10} {gbs:>10}")


if __name__ == "__main__":
    main()
